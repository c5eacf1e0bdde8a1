"""What made an output is recorded in it, and a resume that would mix two makings is refused:
local tars read by absolute path and recorded by name, the package versions a build started under, parquet schema metadata,
the recipe a benchmark run's data came from, and pipeline hashes that do not depend on a cache's path."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmark.benchmark_run import BenchmarkRun
from benchmark.models.pipeline_identity import pipeline_sha256
from benchmark.models.pipelines import strip_load_paths
from benchmark.track import load_track
from builders.build import _recipe_change, build_dataset
from builders.recipe import RecipeError, load_recipe, parse_recipe, source_from_spec
from builders.shard_table import METADATA_KEYS, table_bytes
from builders.verify import verify_dataset
from implicit_concept.content_hashes import folder_sha256
from implicit_concept.files import FolderClaimError
from implicit_concept.provenance import version
from manifests import RECIPES_DIR
from tests.test_sources import jpeg, write_tar

TARS = "tars/{00000..00001}.tar"


def _tars(folder: Path, shout: bool = False) -> Path:
    """Two tars of three samples; ``shout``: the same names and sizes, other captions."""
    (folder / "tars").mkdir(parents=True)
    for t in range(2):
        members = []
        for i in range(3):
            caption = f"a picture number {t}{i}"
            members += [(f"{t}{i}.jpg", jpeg((40 * i, 90, 30 * t))), (f"{t}{i}.txt", (caption.upper() if shout else caption).encode())]
        write_tar(folder / "tars" / f"{t:05d}.tar", members)
    return folder


def _raw(source: dict) -> dict:
    return {"name": "prov", "seed": 3, "image_size": 32, "shard_size": 2, "source": source,
            "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5}]}


def _interrupted(out: Path) -> None:
    """What a killed build leaves: one shard finished, the others not."""
    for stats in sorted(out.rglob("*_stats.json"))[1:]:
        stats.unlink()


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith("_stats.json") and not p.name.startswith(".")}


# 1. Local tars are read by absolute path, however they were typed, and recorded by name.

def test_relative_and_absolute_tars_are_one_recipe_with_one_set_of_bytes(tmp_path, monkeypatch):
    a = _tars(tmp_path / "cA")
    monkeypatch.chdir(a)
    relative, absolute = source_from_spec(TARS, 0.3), source_from_spec(f"{a}/{TARS}", 0.3)
    assert relative == absolute and relative["urls"] == f"{a.resolve()}/{TARS}"
    assert source_from_spec("pipe:cat tars/00000.tar")["urls"] == "pipe:cat tars/00000.tar"  # a command stays as typed
    build_dataset(parse_recipe(_raw(relative)), tmp_path / "rel", progress=False)
    build_dataset(parse_recipe(_raw(absolute)), tmp_path / "abs", progress=False)
    assert _files(tmp_path / "rel") == _files(tmp_path / "abs")
    # A recipe file's relative urls too (read from the current folder, as its hint says when one is missing).
    recipe_file = tmp_path / "prov.toml"
    recipe_file.write_text('name = "prov"\nseed = 3\nimage_size = 32\n[source]\nkind = "webdataset"\n'
                           f'urls = "{TARS}"\n[[subsets]]\nname = "q"\nconcepts = ["qrcode"]\nfraction = 0.5\n')
    assert load_recipe(recipe_file).source["urls"] == f"{a.resolve()}/{TARS}"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match=r"first 'tars/00000.tar' \(a relative path in a recipe is read from the current folder"):
        load_recipe(recipe_file)


def test_a_resume_from_another_folder_with_same_named_tars_is_refused(tmp_path, monkeypatch):
    a, b = _tars(tmp_path / "cA"), _tars(tmp_path / "cB", shout=True)
    assert [p.stat().st_size for p in sorted(a.rglob("*.tar"))] == [p.stat().st_size for p in sorted(b.rglob("*.tar"))]
    out = tmp_path / "out"
    monkeypatch.chdir(a)
    build_dataset(parse_recipe(_raw(source_from_spec(TARS, 0.3))), out, progress=False)
    _interrupted(out)
    monkeypatch.chdir(b)
    # One recipe (the same tar names), bytes the same wherever the tars lie: the fingerprint (names,
    # sizes, times) tells these same-named, same-sized tars from the ones the build started from.
    with pytest.raises(FolderClaimError, match=r"its source changed since this build started \(2 tars, \d+ bytes, listing \w+ then, "
                                               r"2 tars, \d+ bytes, listing \w+ now; or another one was given\)"):
        build_dataset(parse_recipe(_raw(source_from_spec(TARS, 0.3))), out, progress=False)


# 3. A resume under other package versions.

def _edit_record(out: Path, **packages: str) -> None:
    record = json.loads((out / "recipe.json").read_text())
    record["environment"]["packages"].update(packages)
    (out / "recipe.json").write_text(json.dumps(record))


def test_a_resume_under_other_package_versions_is_refused_naming_them(tmp_path):
    _tars(tmp_path)
    recipe = parse_recipe(_raw(source_from_spec(f"{tmp_path}/{TARS}", 0.3)))
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    _interrupted(out)
    _edit_record(out, pillow="1.0.0", numpy="0.1.0")
    now = json.loads((tmp_path / "out" / "recipe.json").read_text())  # as edited
    with pytest.raises(FolderClaimError, match=r"started under other package versions \(numpy 0\.1\.0 then, \S+ now; "
                                               r"pillow 1\.0\.0 then, \S+ now\).*pip install numpy==0\.1\.0 pillow==1\.0\.0"):
        build_dataset(recipe, out, progress=False)
    assert json.loads((out / "recipe.json").read_text()) == now  # nothing credited to this process's versions


def test_a_finished_build_rerun_under_other_versions_keeps_the_versions_that_made_it(tmp_path):
    _tars(tmp_path)
    recipe = parse_recipe(_raw(source_from_spec(f"{tmp_path}/{TARS}", 0.3)))
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    _edit_record(out, pillow="1.0.0")
    assert build_dataset(recipe, out, progress=False).built == 0
    assert json.loads((out / "recipe.json").read_text())["environment"]["packages"]["pillow"] == "1.0.0"
    assert "pillow 1.0.0" in (out / "README.md").read_text()
    assert verify_dataset(out).ok


# 4. Parquet metadata; a benchmark run's recipe.

def test_every_parquet_records_the_recipe_seed_and_version_and_old_shards_are_kept(tmp_path):
    _tars(tmp_path)
    recipe = parse_recipe(_raw(source_from_spec(f"{tmp_path}/{TARS}", 0.3)))
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    expected = dict(zip(METADATA_KEYS, (b"prov", recipe.sha256.encode(), b"3", version().encode())))
    parquets = sorted(out.rglob("*.parquet"))
    assert len(parquets) == 5 and out / "manifest.parquet" in parquets
    for path in parquets:
        metadata = pq.read_schema(path).metadata
        assert {k: metadata.get(k) for k in METADATA_KEYS} == expected, path
    build_dataset(recipe, tmp_path / "again", progress=False)
    assert _files(out) == _files(tmp_path / "again")  # no timestamp: the same build, the same bytes
    # A shard finished before the metadata existed: kept as it is, and the build still verifies.
    old = parquets[-1]
    stats = old.with_name(old.stem + "_stats.json")
    plain = table_bytes(pq.read_table(old).to_pylist())
    old.write_bytes(plain)
    record = json.loads(stats.read_text())
    stats.write_text(json.dumps({**record, "parquet_sha256": __import__("hashlib").sha256(plain).hexdigest()}))
    assert build_dataset(recipe, out, progress=False).built == 0
    assert old.read_bytes() == plain and verify_dataset(out).ok


def test_a_run_records_its_recipe_and_refuses_an_edited_recipe_file(tmp_path):
    run = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path)
    record = run.record()
    assert record["recipe_sha256"] == load_recipe("icd-debug").sha256 and record["recipe"]["name"] == "icd-debug"
    recipe_file = tmp_path / "mine.toml"
    shutil.copy(RECIPES_DIR / "icd-debug.toml", recipe_file)
    first = BenchmarkRun(track=load_track("debug", {"recipe": str(recipe_file)}), name="r", runs_root=tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps(first.record()))
    first.check_start()
    recipe_file.write_text(recipe_file.read_text().replace("seed = 20231010", "seed = 1"))
    edited = BenchmarkRun(track=load_track("debug", {"recipe": str(recipe_file)}), name="r", runs_root=tmp_path)
    # the track names the recipe by its content too (a path-named recipe: benchmark.track.Track.identity)
    with pytest.raises(ValueError, match=r"run.json differs in recipe\.seed, recipe_sha256, track\.recipe, track_sha256\)"):
        edited.check_start()
    # A run folder from before the recipe was recorded is refused, naming the fields it lacks.
    old = {k: v for k, v in first.record().items() if k not in ("recipe", "recipe_sha256")}
    (tmp_path / "r" / "run.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"run.json differs in recipe, recipe_sha256\)"):
        first.check_start()


# 5. A changed field inside [[subsets]] is named.

def test_a_changed_subset_field_is_named_by_its_path():
    now = load_recipe("icd-debug").to_dict()
    then = json.loads(json.dumps(now, sort_keys=True))
    assert now["subsets"][3]["fraction"] == 0.75
    then["subsets"][3]["fraction"] = 0.7
    message = _recipe_change(then, now)
    assert message == "subsets[3].fraction: 0.7 then, 0.75 now", message
    assert "subsets[3].fraction" in message and "[{" not in message


# 2. A pipeline's hash does not depend on where it was loaded from.

def _pipeline(folder: Path, loaded_from: str | None) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    config = {"_class_name": "UNet2DConditionModel", "sample_size": 8}
    if loaded_from is not None:
        config["_name_or_path"] = loaded_from
    (folder / "unet" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    return folder


def test_the_same_pipeline_in_two_caches_hashes_the_same(tmp_path):
    one = _pipeline(tmp_path / "a", "/cache-a/bases/base-1/init/unet")
    two = _pipeline(tmp_path / "b", "/elsewhere/bases/base-1/init/unet")
    assert pipeline_sha256(one) == pipeline_sha256(two)
    plain = _pipeline(tmp_path / "c", None)  # no path: hashed as before, so existing cache keys hold
    assert pipeline_sha256(plain) == folder_sha256(plain, only=["model_index.json", "unet"])
    (two / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"other weights")
    assert pipeline_sha256(one) != pipeline_sha256(two)
    # The base's saved configs lose the path; its hash stays.
    before = pipeline_sha256(one)
    strip_load_paths(one)
    assert "_name_or_path" not in (one / "unet" / "config.json").read_text()
    assert pipeline_sha256(one) == before == pipeline_sha256(plain)
