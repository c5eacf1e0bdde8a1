"""A build records what its source held when it started (file names, sizes and times; tar names
and sizes) and refuses to resume over a source that has changed since, saying so; verify notes it."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from builders.build import build_dataset
from builders.recipe import parse_recipe
from builders.verify import verify_dataset
from implicit_concept.files import FolderClaimError
from tests.test_sources import jpeg, write_tar


def _folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 40), (30 * i, 60, 90)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"a picture number {i}")
    return root


def _recipe(source: dict) -> dict:
    return {"name": "fp", "seed": 1, "image_size": 32, "shard_size": 2, "source": {**source, "test_fraction": 0.0},
            "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5}]}


def _interrupted(out: Path) -> None:
    """What a killed build leaves: some shards finished, the others not."""
    for stats in sorted(out.rglob("*_stats.json"))[1:]:
        stats.unlink()


@pytest.mark.parametrize("change", ["added", "removed", "rewritten", "recaptioned", "recaptioned at the same size"])
def test_a_resume_over_a_changed_folder_is_refused(tmp_path, change):
    """Whatever changed, and a caption edited in place keeps its size: the modification time tells."""
    src = _folder(tmp_path / "src")
    recipe = parse_recipe(_recipe({"kind": "folder", "path": str(src)}))
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    record = json.loads((out / "recipe.json").read_text())
    assert record["source_fingerprint"]["files"] == 12 and len(record["source_fingerprint"]["sha256"]) == 64
    _interrupted(out)
    if change == "added":
        _folder(tmp_path / "extra", 1)
        for f in (tmp_path / "extra").iterdir():
            f.rename(src / f"new-{f.name}")
    elif change == "removed":
        (src / "2.png").unlink()
    elif change == "rewritten":
        Image.new("RGB", (40, 40), (1, 2, 3)).save(src / "3.png")
        os.utime(src / "3.png", ns=(1, 1))
    elif change == "recaptioned":
        (src / "4.txt").write_text("another caption altogether")
    else:
        size = (src / "4.txt").stat().st_size
        (src / "4.txt").write_text("a picture NUMBER 4")
        os.utime(src / "4.txt", ns=(1, 1))
        assert (src / "4.txt").stat().st_size == size
    with pytest.raises(FolderClaimError, match=r"out: its source changed since this build started \(12 files, \d+ bytes, listing \w+ then, \d+ files"):
        build_dataset(recipe, out, progress=False)


def test_a_resume_over_the_same_folder_goes_on_and_verify_notes_a_later_change(tmp_path):
    src = _folder(tmp_path / "src")
    recipe = parse_recipe(_recipe({"kind": "folder", "path": str(src)}))
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    _interrupted(out)
    report = build_dataset(recipe, out, progress=False)
    assert report.built == 2 and report.samples == 6
    assert verify_dataset(out).ok and not verify_dataset(out).notes
    (src / "0.txt").write_text("changed after the build")
    checked = verify_dataset(out)
    assert checked.ok and any("the source has changed since this build started" in n for n in checked.notes)


def test_a_resume_over_a_tar_of_another_size_is_refused(tmp_path):
    write_tar(tmp_path / "00000.tar", [(f"{i}.jpg", jpeg()) for i in range(1)] + [("0.txt", b"a picture")])
    recipe = parse_recipe(_recipe({"kind": "webdataset", "urls": str(tmp_path / "00000.tar")}))
    build_dataset(recipe, tmp_path / "out", progress=False)
    write_tar(tmp_path / "00000.tar", [(f"{i}.{ext}", data) for i in range(12) for ext, data in (("jpg", jpeg()), ("txt", b"a picture"))])
    with pytest.raises(FolderClaimError, match="its source changed since this build started"):
        build_dataset(recipe, tmp_path / "out", progress=False)


def test_a_resume_over_a_tar_appended_to_within_its_last_record_is_refused(tmp_path):
    """``tar -r`` (here tarfile's append) writes a member into the zeros that pad a tar's last
    record: the tar keeps its size, and only its modification time says it changed."""
    write_tar(tmp_path / "00000.tar", [("0.jpg", jpeg()), ("0.txt", b"a picture")])
    recipe = parse_recipe(_recipe({"kind": "webdataset", "urls": str(tmp_path / "00000.tar")}))
    build_dataset(recipe, tmp_path / "out", progress=False)
    size = (tmp_path / "00000.tar").stat().st_size
    with tarfile.open(tmp_path / "00000.tar", "a") as tf:
        info = tarfile.TarInfo("1.txt")
        info.size = 9
        tf.addfile(info, io.BytesIO(b"a caption"))
    assert (tmp_path / "00000.tar").stat().st_size == size
    with pytest.raises(FolderClaimError, match="its source changed since this build started"):
        build_dataset(recipe, tmp_path / "out", progress=False)
