"""Outputs kept for months and read by another release: a KEY.json of a schema this release does
not know is refused by every reader, naming the shard and sample and which release to use; a
dataset whose samples two releases wrote does not verify (it would be trained and scored as one);
a run folder made under other package versions is not resumed into one result of both."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmark.benchmark_run import BenchmarkRun
from benchmark.track import load_track
from benchmark.training import CHECKPOINTS_DIR, train
from benchmark.training.state_files import load_state, save_state
from builders.build import MANIFEST, summarize
from builders.dataset_card import CARD, CHECKSUMS, card_bytes
from builders.recipe import load_recipe
from builders.shard_builder import ShardBuilder, stats_path, tar_path
from builders.shard_table import parquet_bytes, table_metadata
from builders.verify import verify_dataset
from implicit_concept.content_hashes import sha256_file
from implicit_concept.files import FolderClaimError
from implicit_concept.provenance import environment
from implicit_concept.sample import OLDEST_SCHEMA, SCHEMA_VERSION, Box, Instance, SampleMeta
from implicit_concept.shard_reader import ShardError, iter_samples
from implicit_concept.shard_writer import TarShardWriter
from tests.test_training import setup, uninterrupted  # noqa: F401 (fixtures: a micro base and a finished run)
from tests.test_verify import SHARD, read_tar, reseal, write_tar


def _record(**changes) -> dict:
    meta = SampleMeta(key="k0", caption="a scene", width=64, height=64, split="train", subset="icd-qrcode",
                      source={"kind": "test", "id": "0"}, instances=[Instance("qrcode", Box(1, 2, 30, 40))],
                      seed=[0], recipe="test", recipe_sha256="0", version="0.9.0")
    return {**meta.to_json(), **changes}


@pytest.mark.parametrize("schema, complaint", [
    (SCHEMA_VERSION + 1, "written by a newer implicit-concept .*upgrade implicit-concept"),
    (OLDEST_SCHEMA - 1, "written by an older implicit-concept .*rebuild the dataset"),
])
def test_a_key_json_of_a_schema_this_release_does_not_know_is_refused(schema, complaint):
    """A newer schema may mean other things by the same fields; schema 1's boxes cover the drawn
    layer, not what shows: read as this release's, either becomes wrong labels without a word."""
    with pytest.raises(ValueError, match=rf"schema: {schema}, {complaint}"):
        SampleMeta.from_json(_record(schema=schema))


@pytest.mark.parametrize("schema", range(OLDEST_SCHEMA, SCHEMA_VERSION + 1))
def test_the_schemas_this_release_knows_are_read(schema):
    assert SampleMeta.from_json(_record(schema=schema)).schema == schema


def test_a_shard_of_a_newer_schema_is_refused_naming_the_shard_and_sample(tmp_path):
    shard = tmp_path / "00000.tar"
    with TarShardWriter(shard) as writer:
        writer.write("k0", {"jpg": b"", "json": json.dumps(_record(schema=SCHEMA_VERSION + 1)).encode()})
        writer.close()
    with pytest.raises(ShardError, match=rf"{shard}: sample k0: KEY.json is not an ICD sample record .*schema: {SCHEMA_VERSION + 1}, written by a newer"):
        next(iter_samples(shard))


def _reseal_whole(out: Path) -> None:
    """Every record the build writes made again from the tars as they are (tables with the build's
    metadata, stats, manifest, checksums and card): only the samples' own fields can tell."""
    reseal(out)
    record = json.loads((out / "recipe.json").read_text())
    recipe = load_recipe("icd-debug")
    units = ShardBuilder(recipe).plan()
    metadata = table_metadata(recipe, record["environment"])
    for unit in units:
        table = tar_path(out, unit).with_suffix(".parquet")
        table.write_bytes(parquet_bytes(pq.read_table(table), metadata))
        stats = json.loads(stats_path(out, unit).read_text())
        stats["parquet_sha256"] = sha256_file(table)
        stats_path(out, unit).write_text(json.dumps(stats))
    manifest = pq.read_table(out / MANIFEST)
    (out / MANIFEST).write_bytes(parquet_bytes(manifest, metadata))
    stats = [json.loads(stats_path(out, u).read_text()) for u in units]
    (out / CARD).write_bytes(card_bytes(recipe, units, stats, summarize(manifest), record["environment"]))


def _retag(out: Path, **changes) -> None:
    samples = read_tar(out / SHARD)
    for _, members in samples:
        members["json"] = json.dumps({**json.loads(members["json"]), **changes}, sort_keys=True, ensure_ascii=False).encode()
    write_tar(out / SHARD, samples)
    _reseal_whole(out)


@pytest.fixture()
def dataset(debug_dataset, tmp_path) -> Path:
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    return out


def test_resealing_alone_leaves_a_dataset_that_verifies(dataset):
    """The helper below changes nothing by itself: what the next tests find is the samples' fields."""
    _retag(dataset)
    assert verify_dataset(dataset).ok, verify_dataset(dataset).problems


@pytest.mark.parametrize("changes, complaint", [
    ({"version": "0.0.9"}, r"written by implicit-concept 0.0.9 \(schema 3\), recipe.json credits the build to "),
    ({"schema": OLDEST_SCHEMA}, rf"written by implicit-concept .* \(schema {OLDEST_SCHEMA}\)|in schema {OLDEST_SCHEMA}"),
])
def test_a_shard_another_release_wrote_makes_the_dataset_fail_verify(dataset, changes, complaint):
    """A shard of another release's build of the same recipe copied in, every record resealed: the
    benchmark (which trains only on data that verifies) would mix two releases' pixels and boxes."""
    _retag(dataset, **changes)
    problems = verify_dataset(dataset).problems
    assert any("samples of two releases in one dataset" in p and re.search(complaint, p) for p in problems), problems
    assert not any(CARD in p or CHECKSUMS in p for p in problems), problems


def test_a_run_folder_made_under_other_package_versions_is_refused_naming_them(tmp_path):
    """Torch or the toolkit upgraded between a kill and its resume (or before a method is added):
    the rows not rerun are kept beside new ones under one environment, so one result of two."""
    run = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path)
    run.check_start()
    run.claim()
    assert json.loads((run.root / "run.json").read_text())["environment"]["packages"] == environment()["packages"]
    run.check_start()  # the same versions resume
    then = environment()
    then["packages"].update({"torch": "1.13.1", "implicit-concept": "0.0.9"})
    (run.root / "run.json").write_text(json.dumps({**run.record(), "environment": then}))
    with pytest.raises(FolderClaimError, match=r"r: made under other package versions \(implicit-concept 0.0.9 then, \S+ now; "
                                               r"torch 1.13.1 then, \S+ now\).*pip install implicit-concept==0.0.9 torch==1.13.1"):
        run.check_start()


def test_a_run_folder_whose_run_json_predates_its_environment_is_judged_by_its_results(tmp_path):
    """An earlier release's run.json records no environment; the results.json it wrote does."""
    from tests.test_results_page import fake_run

    run = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path)
    fake_run(run.root)
    (run.root / "run.json").write_text(json.dumps(run.record()))
    results = json.loads((run.root / "results.json").read_text())
    results["environment"] = {"python": "3", "packages": {**environment()["packages"], "diffusers": "0.30.0"}}
    (run.root / "results.json").write_text(json.dumps(results))
    with pytest.raises(FolderClaimError, match=r"made under other package versions \(diffusers 0.30.0 then, \S+ now\)"):
        run.check_start()
    results["environment"] = environment()
    (run.root / "results.json").write_text(json.dumps(results))
    run.check_start()


@pytest.mark.parametrize("recorded, said", [("0.0.9", "0.0.9"), (None, r"\(not recorded\)")])
def test_a_checkpoint_written_by_another_release_of_the_toolkit_is_refused(setup, uninterrupted, tmp_path, recorded, said):
    """The toolkit's own code decides a step's numbers (data path, captions, loss weights): a fine-tune
    killed, the toolkit upgraded, then resumed would end with neither release's weights. A checkpoint
    of a release that did not record its own version is one of another release, as far as anyone knows."""
    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    state = load_state(checkpoint / "train_state")
    packages = {k: v for k, v in state["packages"].items() if k != "implicit-concept"}
    save_state(checkpoint / "train_state", {**state, "packages": {**packages, **({"implicit-concept": recorded} if recorded else {})}})
    with pytest.raises(ValueError, match=rf"train_state.json: .*written under implicit-concept {said}, here implicit-concept \S+:"):
        train(base, shards, tmp_path / "resumed", config, progress=False)


def test_the_leaderboard_notes_a_run_that_records_no_package_versions(tmp_path):
    """A results.json of a release that wrote no environment beside one that did: their versions are
    said not compared, not silently taken as equal."""
    from benchmark.leaderboard import leaderboard
    from tests.test_results_page import fake_run

    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    for run, env in ((a, environment()), (b, None)):
        results = {k: v for k, v in json.loads((run / "results.json").read_text()).items() if k != "environment"}
        (run / "results.json").write_text(json.dumps({**results, **({"environment": env} if env else {})}))
    assert f"package versions not compared: not recorded in {b} (a results.json from an older version)" in leaderboard([a, b]).notes


def test_images_drawn_under_other_package_versions_are_drawn_anew_not_kept(tmp_path, monkeypatch):
    """score-pipeline (or a method's sampling, or the base's cached generations) killed, torch
    upgraded, rerun: the images already drawn were kept beside new ones and scored as one model's."""
    from benchmark import generation
    from benchmark.generation import GenerationSettings, generate_images
    from benchmark.prompts import Prompt
    from tests.test_benchmark_io import _fake_generate

    prompts = [Prompt(i, f"p{i}", 10 + i) for i in range(4)]
    settings = GenerationSettings(chunk_size=2)

    def draw() -> int:
        calls: list = []
        generate_images(_fake_generate(calls), prompts, tmp_path / "img", settings=settings, progress=False, source={"unet": "a"})
        return sum(len(c) for c in calls)

    assert (draw(), draw()) == (4, 0)
    record = json.loads((tmp_path / "img" / "source.json").read_text())
    assert record["packages"]["torch"] == environment()["packages"]["torch"]
    upgraded = {**record["packages"], "torch": "9.9.9"}
    monkeypatch.setattr(generation, "package_versions", lambda names: upgraded)
    assert draw() == 4
    # A record of a release that wrote no versions is drawing's own, but stale: drawn anew.
    (tmp_path / "img" / "source.json").write_text(json.dumps({k: v for k, v in record.items() if k != "packages"}))
    assert draw() == 4
