"""Tests that kill hand mutants of the newest code (version skew, a reader waiting for a build, lock
holders, write_unless_same, the command line's paths) and of compositing, the caption screen and
the source screen that the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: what a resume under other
package versions names and how it says to put the old ones back.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from implicit_concept.file_locks import locked
from implicit_concept.provenance import package_changes
from implicit_concept.shard_reader import list_shards


def test_package_changes_name_each_change_and_the_pins_that_put_it_back():
    assert package_changes({"torch": "2.1"}, {"torch": "2.1"}) is None
    assert package_changes({}, {}) is None
    assert package_changes({"torch": "2.1"}, {"torch": "2.2"}) == ("torch 2.1 then, 2.2 now", " (pip install torch==2.1)")
    # A package installed since (or removed since) is a change too; nothing to pin for one absent then.
    assert package_changes({}, {"xformers": "0.1"}) == ("xformers not installed then, 0.1 now", "")
    assert package_changes({"xformers": "0.1"}, {"xformers": None}) == ("xformers 0.1 then, not installed now",
                                                                        " (pip install xformers==0.1)")


@pytest.mark.parametrize("count", [4, 5])
def test_package_changes_show_four_and_say_when_there_are_more(count):
    then = {f"p{i}": "1" for i in range(count)}
    shown, pins = package_changes(then, {name: "2" for name in then})
    assert shown.count(" then, ") == 4
    assert shown.endswith("; ...") == (count > 4)
    assert pins == " (pip install " + " ".join(f"p{i}==1" for i in range(count)) + ")"


@pytest.mark.parametrize("named", ["", "icd-qrcode", "icd-qrcode/train", "icd-qrcode/train/00000.tar",
                                   "icd-qrcode/train/{00000..00001}.tar"])
def test_a_reader_of_any_part_of_a_dataset_waits_for_the_build_writing_it(tmp_path, caplog, named):
    """A shard named alone (three folders below the dataset's record), or a brace pattern, was listed
    while the build went on, as a subset or a split was before the build's lock was waited for."""
    dataset = tmp_path / "icd-debug"
    split = dataset / "icd-qrcode" / "train"
    split.mkdir(parents=True)
    (dataset / "recipe.json").write_text("{}")
    for name in ("00000.tar", "00001.tar"):
        (split / name).write_bytes(b"")
    listed: list = []
    with locked(dataset, inside=True):  # a build writing the dataset
        reader = threading.Thread(target=lambda: listed.extend(list_shards(str(dataset / named) if "{" in named else dataset / named)),
                                  daemon=True)
        reader.start()
        said = f"{dataset.resolve()}: in use by another process (pid {os.getpid()}); waiting for it"
        deadline = time.monotonic() + 60
        while reader.is_alive() and said not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        assert said in caplog.text
        assert not listed  # nothing listed while the build holds its lock
    reader.join(60)
    assert sorted(Path(p).name for p in listed) == (["00000.tar"] if named.endswith("00000.tar") else ["00000.tar", "00001.tar"])
