"""Tests that kill hand mutants of the hostile-sources-5 and hostile-plugins-4 code the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: every link or FIFO beside a
key's image is recorded, not only the first; a key without an image names its JSON and a metadata
table as what they are; an integer a double holds is kept exactly however many digits it has; a path through ``..`` is
not a hidden folder; an extended sequential JPEG (SOF1), a grey one written with
sampling factors, and one with bytes after its end marker are truncated where cut and closed.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.resizer import prepare_image
from builders.sources import FolderConfig, FolderSource
from builders.sources.source_json import read_source_json
from implicit_concept.sample_error import SampleError
from implicit_concept.shard_reader import is_hidden
from tests.test_sources import jpeg, read_all


def _folder_items(folder: Path) -> dict[str, object]:
    return {i.source_id: i for i in read_all(FolderSource(FolderConfig(str(folder), test_fraction=0.0), shard_size=100), "train")}


def test_every_link_or_fifo_beside_a_keys_image_is_a_record_of_its_own(tmp_path: Path):
    """A key of one file and two things that are not files: each of them is counted as refused,
    not only the first, and the file is the sample."""
    (tmp_path / "a.png").write_bytes(jpeg())
    (tmp_path / "a.txt").write_text("a field")
    os.symlink("a.png", tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "a.jpeg")
    items = _folder_items(tmp_path)
    assert {k: i.error for k, i in items.items()} == {"a.png": None, "a.jpg": "not_a_regular_file", "a.jpeg": "not_a_regular_file"}
    assert items["a.jpeg"].detail == "a.jpeg: a FIFO (named pipe), not a regular file"


def test_a_key_without_an_image_names_no_json_or_metadata_table_as_an_image_not_read(tmp_path: Path):
    """A key of a caption and its JSON alone says its image is missing; its ``.json`` is the key's
    metadata, not an image in a format not read, and nor is Hugging Face's ``metadata.csv``."""
    (tmp_path / "ok.jpg").write_bytes(jpeg())
    (tmp_path / "lost.txt").write_text("a field")
    (tmp_path / "lost.json").write_text('{"url": "a"}')
    (tmp_path / "metadata.csv").write_text("file_name,text\nok.jpg,a field\n")
    items = _folder_items(tmp_path)
    assert items["lost.json"].error == "no_image" and items["metadata.csv"].error == "no_image"
    assert "is not read as an image" not in items["lost.json"].detail, items["lost.json"].detail
    assert "is not read as an image" not in items["metadata.csv"].detail, items["metadata.csv"].detail


def test_an_integer_a_double_holds_is_kept_exactly_however_many_digits_it_has():
    """The limit is the double's range, not a digit count: 10**308 (309 digits) is kept, 2 * 10**308 is null."""
    held, past = 10 ** 308, 2 * 10 ** 308
    assert read_source_json(f"[{held}, {-held}, {past}, {-past}]".encode())[0] == {"json": [held, -held, None, None]}


def test_a_path_through_dot_dot_is_not_a_hidden_folder():
    """``..`` and ``.`` are steps of a path (``tar -C DIR ..``'s members), not folders another tool
    hides: a member under them is read as any other; a name or folder starting with a dot is hidden."""
    assert not any(map(is_hidden, ("../x.jpg", "d/../x.jpg", "./x.jpg", "./d/x.jpg")))
    assert all(map(is_hidden, ("../.x.jpg", "./.thumbnails/x.jpg", "d/..x/y.jpg", ".../x.jpg")))


def test_an_extended_sequential_jpeg_cut_and_closed_is_truncated_as_a_baseline_one_is():
    """SOF1 (extended sequential, what some cameras and encoders write with 8-bit samples) is
    decoded as SOF0 is, grey past a cut: its restart markers are counted too."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buffer, "JPEG", restart_marker_rows=1)
    data = buffer.getvalue()
    assert data.count(b"\xff\xc0") == 1
    extended = data.replace(b"\xff\xc0", b"\xff\xc1")
    assert prepare_image(extended, 16, 0).size == (16, 16)
    with pytest.raises(SampleError) as cut:
        prepare_image(extended[: len(extended) // 2] + b"\xff\xd9", 16, 0)
    assert cut.value.reason == "truncated_image" and "restart interval" in str(cut.value)


def _restart_jpeg(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).convert(mode).save(
        buffer, "JPEG", restart_marker_rows=1)
    return buffer.getvalue()


def _truncated(data: bytes) -> bool:
    try:
        prepare_image(data, 16, 0)
    except SampleError as e:
        return e.reason == "truncated_image" and "restart interval" in str(e)
    return False


def test_a_grey_jpeg_with_sampling_factors_counts_its_blocks_one_by_one():
    """A scan of one component is coded a block at a time whatever sampling factors its frame
    names (some encoders write 2x2 for grey): counted as 16x16 units, too few intervals were
    expected and a cut went unseen."""
    data = _restart_jpeg("L")
    sof = data.index(b"\xff\xc0")
    factors = sof + 4 + 6 + 1  # the one component's id, then its sampling factors
    assert data[factors] == 0x11
    grey = data[:factors] + b"\x22" + data[factors + 1:]
    assert not _truncated(grey) and prepare_image(grey, 16, 0).size == (16, 16)
    assert _truncated(grey[: len(grey) // 2] + b"\xff\xd9")


def test_restart_markers_after_the_end_marker_are_not_counted():
    """A JPEG cut, closed with an end marker and followed by the rest of its bytes (a repair that
    inserted the marker, trailing data): the scan ends at the end marker, and what follows it
    is no part of it."""
    data = _restart_jpeg("RGB")
    half = len(data) // 2
    assert _truncated(data[:half] + b"\xff\xd9" + data[half:])
