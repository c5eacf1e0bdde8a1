"""Tests that kill hand mutants of the hostile-sources-5 and hostile-plugins-4 code the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: every link or FIFO beside a
key's image is recorded, not only the first; a key without an image names its JSON and a metadata
table as what they are; an integer a double holds is kept exactly however many digits it has.
"""
from __future__ import annotations

import os
from pathlib import Path

from builders.sources import FolderConfig, FolderSource
from builders.sources.source_json import read_source_json
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
