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

import numpy as np
import pytest
from PIL import Image

from implicit_concept.compositing import MIN_SEEN, composite, jsonable
from implicit_concept.concepts.renderer import Layer
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


def test_params_keep_their_json_types_whatever_numpy_gave():
    """KEY.json's params: a flag stays true/false (numpy's too), not 1/0, which a reader of the
    dataset card's declared types would take for a number."""
    params = {"inverted": True, "shadow": np.bool_(False), "size": np.int64(7), "angle": np.float32(1.23456),
              "colour": (1, 2, np.uint8(3)), 4: "key"}
    out = jsonable(params)
    assert out == {"inverted": True, "shadow": False, "size": 7, "angle": 1.2346, "colour": [1, 2, 3], "4": "key"}
    assert [type(out[k]) for k in ("inverted", "shadow", "size", "angle")] == [bool, bool, int, float]
    with pytest.raises(TypeError, match=r"^params\.colour\[1\]: object is not JSON-serialisable$"):
        jsonable({"colour": [0, object()]})


def test_compositing_leaves_the_callers_image_as_it_was_and_refuses_a_layer_not_rgba():
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    square = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    square.paste((255, 255, 255, 255), (2, 2, 5, 6))
    drawn, instances, mask = composite(image, [Layer(square)], "text")
    assert image.getpixel((3, 3)) == (10, 20, 30) and drawn.getpixel((3, 3)) == (255, 255, 255)
    assert [i.box.as_list() for i in instances] == [[2, 2, 5, 6]]
    assert mask.getbbox() == (2, 2, 5, 6)
    with pytest.raises(ValueError, match=r"^text: layer must be RGBA \(8, 8\), got RGB \(8, 8\)$"):
        composite(image, [Layer(Image.new("RGB", (8, 8)))], "text")


def _patch(ground: int, marked: int, changed: int) -> tuple[Image.Image, Layer]:
    """A grey ground and an opaque 8x5 mark of its own grey but for ``changed`` pixels ``marked`` levels away."""
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((ground, ground, ground, 255), (4, 4, 12, 9))
    for i in range(changed):
        rgba.putpixel((4 + i % 8, 4 + i // 8), (ground + marked,) * 3 + (255,))
    return Image.new("RGB", (16, 16), (ground,) * 3), Layer(rgba)


@pytest.mark.parametrize(("marked", "seen"), [(8, True), (7, False)])
def test_a_pixel_changed_by_exactly_seen_levels_shows_the_mark(marked, seen):
    """SEEN_LEVELS (8) is "at least": 8 levels show a mark; 7 are what a JPEG moves a pixel by."""
    image, layer = _patch(100, marked, 40)  # every pixel of the mark changed by ``marked``
    assert [i.concept for i in composite(image, [layer], "watermark", 0.0, MIN_SEEN)[1]] == (["watermark"] if seen else [])


@pytest.mark.parametrize(("changed", "labelled"), [(4, True), (3, False)])
def test_a_mark_is_labelled_from_a_tenth_of_its_alpha_on_pixels_it_changed(changed, labelled):
    """4 of its 40 pixels changed is MIN_SEEN's tenth, and the mark is labelled; 3 (7.5 %) are edge pixels."""
    image, layer = _patch(100, 50, changed)
    _, instances, _ = composite(image, [layer], "watermark", 0.0, MIN_SEEN)
    assert [i.box.as_list() for i in instances] == ([[4, 4, 12, 9]] if labelled else [])
