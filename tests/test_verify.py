"""verify catches tampering, even by someone who re-seals every checksum, stats file and table
after the change; it reports every problem and never crashes, opens nothing outside the plan, and
a resumed build or a benchmark does not trust data that no longer verifies."""
from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest

from builders.build import build_dataset
from builders.dataset_card import CHECKSUMS, checksum_lines
from builders.recipe import load_recipe
from builders.shard_builder import ShardBuilder, stats_path, tar_path
from builders.shard_table import sample_row, table_bytes
from builders.verify import DatasetVerifyError, require_verified, verify_dataset
from implicit_concept.content_hashes import sha256_file
from implicit_concept.sample import Instance, SampleMeta
from implicit_concept.shard_writer import TarShardWriter

SHARD = "icd-qrcode/train/00000.tar"


@pytest.fixture()
def dataset(debug_dataset, tmp_path) -> Path:
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    return out


def read_tar(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(path) as tf:
        for info in tf:
            key, ext = info.name.split(".", 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tf.extractfile(info).read()
    return samples


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with TarShardWriter(path) as writer:
        for key, members in samples:
            writer.write(key, members)
        writer.close()


def edit_json(path: Path, change) -> None:
    """Rewrite the first contaminated sample's KEY.json with ``change(record)``."""
    samples = read_tar(path)
    key, members = next((k, m) for k, m in samples if json.loads(m["json"])["instances"])
    record = json.loads(members["json"])
    change(record)
    members["json"] = json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")
    write_tar(path, samples)


def reseal(out: Path) -> None:
    """What a careful tamperer does after a change: every stats file, table, the manifest and the
    checksum list recomputed from the tars that are there, so that none of them disagrees."""
    recipe = load_recipe("icd-debug")
    units = [u for u in ShardBuilder(recipe).plan() if tar_path(out, u).exists()]
    rows, stats = [], []
    for unit in units:
        with mock.patch.object(SampleMeta, "check", lambda self: None):  # the tamperer's tool reads what it wrote
            samples = [(SampleMeta.from_json(json.loads(m["json"])), m["jpg"]) for _, m in read_tar(tar_path(out, unit))]
        metas = [meta for meta, _ in samples]
        table = [sample_row(meta, unit, jpg) for meta, jpg in samples]
        tar_path(out, unit).with_suffix(".parquet").write_bytes(table_bytes(table))
        rows += table
        record = json.loads(stats_path(out, unit).read_text())
        record.update(
            sha256=sha256_file(tar_path(out, unit)),
            successes=len(metas),
            contaminated=sum(m.contaminated for m in metas),
            instances=dict(sorted(Counter(i.concept for m in metas for i in m.instances).items())),
        )
        record["count"] = record["successes"] + record["failed"]
        stats_path(out, unit).write_text(json.dumps(record))
        stats.append(record)
    (out / "manifest.parquet").write_bytes(table_bytes(rows))
    (out / CHECKSUMS).write_text("\n".join(checksum_lines(units, stats)) + "\n")


def delete_shard_with_its_records(out: Path) -> None:
    for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
        (out / "icd-qrcode/test" / name).unlink()
    reseal(out)


def extra_unlisted_tar(out: Path) -> None:
    shutil.copy(out / SHARD, out / "icd-qrcode/train/00002.tar")


def extra_file_in_a_shard_folder(out: Path) -> None:
    (out / "icd-qrcode/train/notes.txt").write_text("planted")


def _set_member(out: Path, ext: str, data: bytes) -> None:
    """The first sample of the shard gets member ``ext`` with ``data``, and the dataset is resealed."""
    samples = read_tar(out / SHARD)
    samples[0][1][ext] = data
    write_tar(out / SHARD, samples)
    reseal(out)


def extra_member_in_a_shard(out: Path) -> None:
    _set_member(out, "pyd", b"\x80\x04planted")


def box_norm_inconsistent(out: Path) -> None:
    edit_json(out / SHARD, lambda r: r["instances"][0].update(box_norm=[0.0, 0.0, 1.0, 1.0]))
    reseal(out)


def area_frac_inconsistent(out: Path) -> None:
    edit_json(out / SHARD, lambda r: r["instances"][0].update(area_frac=0.5))
    reseal(out)


def concept_of_another_subset(out: Path) -> None:
    edit_json(out / SHARD, lambda r: r["instances"][0].update(concept="text"))
    reseal(out)


def shard_of_another_subset(out: Path) -> None:
    shutil.copy(out / "icd-text/train/00000.tar", out / SHARD)
    reseal(out)


def seed_changed(out: Path) -> None:
    edit_json(out / SHARD, lambda r: r.update(seed=[1, 2, 3, 4, 5]))
    reseal(out)


def caption_txt_differs_from_json(out: Path) -> None:
    _set_member(out, "txt", b"a caption the json does not hold")


def box_outside_the_image(out: Path) -> None:
    """A box past the right edge, written in the writer's canonical form (its derived fields agree)."""
    def widen(record):
        record["instances"][0]["box"] = [0, 0, record["width"] + 5, record["height"]]
        record["instances"][0] = Instance.from_json(record["instances"][0]).to_json(record["width"], record["height"])

    edit_json(out / SHARD, widen)
    reseal(out)


def shard_is_a_symlink(out: Path) -> None:
    outside = out.parent / "elsewhere.tar"
    shutil.move(out / SHARD, outside)
    (out / SHARD).symlink_to(outside)


def shard_cut_at_a_member_boundary(out: Path) -> None:
    """A copy stopped at a block boundary: tarfile reads it as a shorter, whole tar; resealed."""
    with tarfile.open(out / SHARD) as tf:
        cut = [info.offset for info in tf][10]  # the header of the third sample's first member
    (out / SHARD).write_bytes((out / SHARD).read_bytes()[:cut])
    reseal(out)


def tars_joined_with_cat(out: Path) -> None:
    (out / SHARD).write_bytes((out / SHARD).read_bytes() + (out / "icd-qrcode/train/00001.tar").read_bytes())
    reseal(out)


def shard_gzipped_in_place(out: Path) -> None:
    """A whole tar compressed under its own name (a lab saving space): readers decode it; verify
    checks the plain tars a build writes, and names what it found."""
    (out / SHARD).write_bytes(gzip.compress((out / SHARD).read_bytes(), mtime=0))


def shard_of_gzipped_garbage(out: Path) -> None:
    (out / SHARD).write_bytes(gzip.compress(bytes(range(256)) * 8, mtime=0))


def garbage_manifest_without_recipe(out: Path) -> None:
    (out / "manifest.parquet").write_bytes(b"PAR1 not a table PAR1")
    (out / "recipe.json").unlink()


def blank_line_in_the_listing(out: Path) -> None:
    listing = out / CHECKSUMS
    listing.write_text(listing.read_text() + "\n")


def stats_without_sha256(out: Path) -> None:
    path = out / "icd-qrcode/train/00000_stats.json"
    record = json.loads(path.read_text())
    del record["sha256"]
    path.write_text(json.dumps(record))


TAMPERING = {
    delete_shard_with_its_records: "icd-qrcode/test/00000.tar: missing",
    extra_unlisted_tar: "icd-qrcode/train/00002.tar: unexpected file",
    extra_file_in_a_shard_folder: "icd-qrcode/train/notes.txt: unexpected file",
    extra_member_in_a_shard: "unexpected member",
    box_norm_inconsistent: "instances[0].box_norm",
    area_frac_inconsistent: "instances[0].area_frac",
    concept_of_another_subset: "concept 'text' does not belong to subset icd-qrcode",
    shard_of_another_subset: "json says subset 'icd-text'",
    seed_changed: "json seed [1, 2, 3, 4, 5]",
    caption_txt_differs_from_json: "txt differs from json caption",
    box_outside_the_image: "box [0, 0, 69, 64] outside the image",
    shard_is_a_symlink: f"{SHARD}: a symlink",
    shard_cut_at_a_member_boundary: f"{SHARD}: truncated tar: no end-of-archive block after sample 000000001",
    tars_joined_with_cat: f"{SHARD}: data at byte",
    shard_gzipped_in_place: f"{SHARD}: unreadable or truncated tar (a gzip-compressed tar, where a plain tar is read (gunzip it))",
    shard_of_gzipped_garbage: f"{SHARD}: unreadable or truncated tar (gzip data that does not hold a readable tar",
    garbage_manifest_without_recipe: "manifest.parquet: unreadable parquet",
    blank_line_in_the_listing: "checksums.sha256:13: not a '<sha256>",
    stats_without_sha256: "00000_stats.json: has no sha256",
}


@pytest.mark.parametrize("tamper", list(TAMPERING), ids=[t.__name__ for t in TAMPERING])
def test_verify_catches_tampering(dataset, tamper):
    assert verify_dataset(dataset).ok
    tamper(dataset)
    report = verify_dataset(dataset)
    assert not report.ok
    assert any(TAMPERING[tamper] in p for p in report.problems), report.problems


def test_garbage_manifest_and_missing_recipe_are_both_reported(dataset):
    garbage_manifest_without_recipe(dataset)
    problems = verify_dataset(dataset).problems
    assert any("recipe.json: missing" in p for p in problems) and any("manifest.parquet" in p for p in problems)


def test_a_dotdot_line_in_the_listing_opens_nothing_outside(dataset, monkeypatch):
    outside = dataset.parent / "outside.tar"
    outside.write_bytes(b"not part of the dataset")
    listing = dataset / CHECKSUMS
    listing.write_text(listing.read_text() + f"{sha256_file(outside)}  ../outside.tar\n")
    hashed: list[Path] = []
    import builders.verify as verify_module

    monkeypatch.setattr(verify_module, "sha256_file", lambda p: hashed.append(Path(p)) or sha256_file(p))
    report = verify_dataset(dataset)
    assert hashed and all(dataset.resolve() in Path(p).resolve().parents for p in hashed), hashed
    assert any("'../outside.tar', not a shard of this build's plan" in p for p in report.problems), report.problems


def test_verify_never_crashes_on_garbage_records(dataset):
    (dataset / "icd-text/test/00000_stats.json").write_text("[1, 2")
    (dataset / "icd-text/train/00001_stats.json").write_text("[" * 100000 + "]" * 100000)
    (dataset / "icd-mixed/test/00000.parquet").write_bytes(b"garbage")
    (dataset / "icd-mixed/train/00000.tar").write_bytes(b"\0" * 700)
    (dataset / "recipe.json").write_text(json.dumps({"recipe": {"name": "../x"}, "recipe_sha256": "0"}))
    report = verify_dataset(dataset)
    assert not report.ok and len(report.problems) >= 5


def test_a_resumed_build_rebuilds_a_shard_whose_bytes_changed(dataset):
    tar = dataset / SHARD
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    report = build_dataset(load_recipe("icd-debug"), dataset, progress=False)
    assert report.built == 1
    assert verify_dataset(dataset).ok
    assert (dataset / CHECKSUMS).read_text() == (Path(__file__).parents[1] / "manifests/icd-debug.sha256").read_text()


def test_require_verified_lists_the_first_problems(dataset):
    extra_unlisted_tar(dataset)
    with pytest.raises(DatasetVerifyError, match=r"does not verify \(1 problems.*\n  .*00002.tar: unexpected file"):
        require_verified(dataset)


def test_the_benchmark_refuses_data_that_does_not_verify(dataset, monkeypatch):
    from benchmark import stages

    class Run:
        class track:
            recipe = "icd-debug"
            prompts = "icd-tiny-eval"
            detector_backgrounds = detector_calibration = 0

        source = None
        data_root = dataset.parent
        workers = 1
        progress = False

    assert stages.dataset(Run()) == dataset
    extra_unlisted_tar(dataset)
    with pytest.raises(DatasetVerifyError, match="00002.tar: unexpected file"):
        stages.dataset(Run())


def test_a_track_that_takes_prompts_from_an_empty_test_split_is_refused_before_training(tmp_path):
    """A source of few items may put none in its test split: the benchmark says so once the data is
    built, naming the split, instead of failing hours later when it samples its first prompt."""
    from benchmark import stages
    from benchmark.perf.paper_data import procedural_folder
    from builders.sources.folder import file_split

    folder = procedural_folder(tmp_path / "source", 2, seed=0)

    class Run:
        class track:
            recipe = "icd-debug"
            prompts = "test-split"
            detector_backgrounds = detector_calibration = 0

            @staticmethod
            def groups():
                return [("icd-mixed", ("qrcode", "watermark", "text"))]

        source = str(folder)
        data_root = tmp_path / "data"
        workers = 1
        progress = False

    out = stages.dataset(Run())
    assert any((out / "icd-mixed" / "test").rglob("*.tar"))
    test_images = [image for image in folder.glob("*.jpg") if file_split(image.name, 0.1) == "test"]
    for image in test_images:
        image.write_bytes(b"not an image")  # every test item skipped: a shard is written, with no sample
    Run.data_root = tmp_path / "data-skipped"
    with pytest.raises(ValueError, match=r"icd-mixed/test: the test split is empty.*test_fraction \(0.1\)"):
        stages.dataset(Run())
    assert any((Run.data_root / "icd-debug" / "icd-mixed" / "test").rglob("*.tar")), "the case a check for shards misses"
    for image in test_images:
        image.unlink()
        image.with_suffix(".txt").unlink()
    Run.data_root = tmp_path / "data-without-test"
    with pytest.raises(ValueError, match=r"icd-mixed/test: the test split is empty"):
        stages.dataset(Run())


def test_an_empty_test_split_names_what_sizes_it_for_each_kind_of_source(tmp_path):
    """A procedural source's test split is a count, a folder's or a tar's a fraction of its items:
    the refusal names the field the user would change."""
    from benchmark.stages import _require_test_split

    with pytest.raises(ValueError, match=r"\[source\] test \(0\) sets its size") as procedural:
        _require_test_split(tmp_path, {"kind": "procedural", "train": 8, "test": 0})
    assert "test_fraction" not in str(procedural.value)
    with pytest.raises(ValueError, match=r"test_fraction \(0.05\) of its items"):
        _require_test_split(tmp_path, {"kind": "folder", "path": "x", "test_fraction": 0.05})
    with pytest.raises(ValueError, match=r"test_fraction \(0.1\) of its items"):
        _require_test_split(tmp_path, {"kind": "webdataset", "urls": "x.tar"})
