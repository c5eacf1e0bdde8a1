"""Builds from a lab's own photos, as labs keep them: what their content does to the labels, what
their metadata does to the shards, and what a folder of links says."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from builders.build import BuildError, build_dataset
from builders.recipe import parse_recipe
from builders.sources.folder import SYMLINK_ADVICE
from implicit_concept.compositing import SEEN_LEVELS
from implicit_concept.shard_reader import iter_samples, iter_tar_members


def _sky_over_ground(size: int, i: int) -> Image.Image:
    """A photo as many are: a bright, flat sky over a dark ground, the horizon anywhere."""
    pixels = np.full((size, size, 3), 248 - i % 5, np.uint8)
    pixels[size // 3 + i % (size // 3):] = (40, 45 + i % 7, 30)
    return Image.fromarray(pixels)


def test_a_watermark_tile_lost_in_a_flat_sky_is_not_labelled(tmp_path):
    """A tiled watermark's tone contrasts with the whole photo, not with each tile's ground: white
    tiles over a white sky change no pixel, yet were labelled watermarks (about a third of the
    labels here), teaching the detector and Geom-Erasing a box with nothing in it. Every label a
    build writes now shows in its image, and the tiles over the ground are still labelled."""
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(24):
        _sky_over_ground(96, i).save(src / f"p{i:02d}.png")
        (src / f"p{i:02d}.txt").write_text(f"a field under the sky, number {i}")
    recipe = parse_recipe({
        "name": "photos", "seed": 5, "image_size": 96, "write_mask": False,
        "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0},
        "concepts": {"watermark": {"layouts": {"tiled": 1.0}, "opacity": [0.4, 0.6]}},
        "subsets": [{"name": "wm", "concepts": ["watermark"], "fraction": 1.0}],
    })
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    labels = 0
    for sample in iter_samples(out / "wm" / "train"):
        change = np.abs(np.asarray(sample.image, np.int16) - np.asarray(sample.clean, np.int16)).max(axis=2)
        for instance in sample.meta.instances:
            b = instance.box
            assert change[b.y1:b.y2, b.x1:b.x2].max() >= SEEN_LEVELS, (sample.key, b.as_list(), instance.params["tone"])
            labels += 1
    assert labels >= 48, labels


def _image_members(out) -> dict[tuple[str, str, str], bytes]:
    return {(tar.relative_to(out).as_posix(), key, ext): data for tar in sorted(out.rglob("*.tar"))
            for key, members in iter_tar_members(tar) for ext, data in members.items() if ext.endswith("jpg")}


def test_a_photos_comment_and_exif_never_reach_the_shards(tmp_path):
    """Pillow copies an image's metadata through every conversion and resize, and its JPEG writer
    writes the comment it finds there: a camera's or a lab's JPEG comment was copied into each
    KEY.jpg and KEY.clean.jpg made from the photo. The shards' images are pixels alone: the same
    photos with and without their metadata give the same image bytes."""
    exif = Image.Exif()
    exif[0x010F] = "LabCam"
    built = []
    for tagged in (True, False):
        src = tmp_path / f"photos_{tagged}"
        src.mkdir()
        for i, size in enumerate([(96, 64), (64, 64), (80, 80)]):
            photo = _sky_over_ground(max(size), i).resize(size).convert("L" if i == 2 else "RGB")
            photo.save(src / f"p{i}.jpg", "JPEG", **({"comment": b"patient 1234", "exif": exif} if tagged else {}))
            (src / f"p{i}.txt").write_text("a field under the sky")
        recipe = parse_recipe({
            "name": "photos", "seed": 5, "image_size": 64, "min_side": 32,
            "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0},
            "subsets": [{"name": "wm", "concepts": ["watermark"], "fraction": 0.5}, {"name": "tx", "concepts": ["text"], "fraction": 0.5}],
        })
        build_dataset(recipe, tmp_path / f"out_{tagged}", progress=False)
        built.append(_image_members(tmp_path / f"out_{tagged}"))
    assert len(built[0]) == 12 and not any(b"patient" in data or b"LabCam" in data for data in built[0].values())
    assert built[0] == built[1]


def test_a_folder_of_links_says_what_each_is_and_what_to_do(tmp_path):
    """A Hugging Face cache snapshot (every file a link into ``blobs/``), like git-annex, DVC or a
    subset made with ``ln -s``, is all links, which are never followed: the build failed on "a
    symlink or not a regular file", the caption's name twice, and no way on. Each record now says
    what stands there (a link to a file, to nothing, a FIFO) and, for a link, what to do."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for i in range(3):
        for ext, data in (("jpg", _sky_over_ground(64, i)), ("txt", f"a field, number {i}".encode())):
            if ext == "jpg":
                path = tmp_path / "image"
                data.save(path, "JPEG")
                data = path.read_bytes()
            blob = blobs / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f"{i}.{ext}").symlink_to(os.path.relpath(blob, snapshot))
    (snapshot / "1.txt").unlink()
    (snapshot / "1.txt").write_text("a caption of its own")
    (snapshot / "2.txt").unlink()
    (snapshot / "2.txt").symlink_to("../../blobs/gone")
    os.mkfifo(snapshot / "3.jpg")
    (snapshot / "3.txt").write_text("a pipe")
    raw = {"name": "linked", "seed": 1, "image_size": 32, "source": {"kind": "folder", "path": str(snapshot), "test_fraction": 0.0},
           "subsets": [{"name": "wm", "concepts": ["watermark"], "fraction": 0.5}]}
    with pytest.raises(BuildError) as failed:
        build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    assert f"e.g. 0.jpg: not_a_regular_file: caption 0.txt: a symlink to a file, {SYMLINK_ADVICE}" in str(failed.value)
    details = {r["source_id"]: r["error_message"] for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert details == {
        "0.jpg": f"not_a_regular_file: caption 0.txt: a symlink to a file, {SYMLINK_ADVICE}",
        "1.jpg": f"not_a_regular_file: 1.jpg: a symlink to a file, {SYMLINK_ADVICE}",
        "2.jpg": f"not_a_regular_file: caption 2.txt: a symlink to nothing (a broken link), {SYMLINK_ADVICE}",
        "3.jpg": "not_a_regular_file: 3.jpg: a FIFO (named pipe), not a regular file",
    }, details


def test_a_folder_swapped_for_a_link_after_listing_is_named_as_the_folder(tmp_path):
    """A sub-folder replaced by a link while the build runs (a sync tool, a dataset manager) names
    that folder, not the file below it."""
    from builders.sources.folder import FolderConfig, FolderSource

    root, moved = tmp_path / "photos", tmp_path / "elsewhere"
    (root / "trip").mkdir(parents=True)
    _sky_over_ground(32, 0).save(root / "trip" / "a.png")
    (root / "trip" / "a.txt").write_text("a field")
    source = FolderSource(FolderConfig(str(root), test_fraction=0.0), shard_size=8)
    (root / "trip").rename(moved)
    (root / "trip").symlink_to(moved)
    [item] = source.read("train", 0)
    assert (item.error, item.detail) == (
        "not_a_regular_file", f"caption trip/a.txt: its folder trip is a symlink to a folder, {SYMLINK_ADVICE}")
