"""Tests that kill hand mutants of the newest code (package_changes, a reader waiting for a build,
lock holders and shared locks, write_unless_same, the oldest schema read, verify's release check,
leaderboard's version notes) and of compositing, the caption screen and the source screen that the
suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: a resume under other versions
names every change and how to put it back; a shard named alone waits for its build; a lock names its
holder from its record and every no-locks errno names the lock file; readers share a lock; a file of
the same size but other bytes is written; a schema 1 KEY.json is refused; a flag in params stays a
bool; a mark seen from 8 levels and a tenth of its alpha, in any channel; the caption screen's
article, punctuation, second pass, digits-only leftovers and decomposed text; the source screen's
switches and its sorted findings under any hash seed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmark.leaderboard import version_notes
from builders import source_screen
from builders.caption_screen import CaptionScreen
from builders.source_screen import SourceScreen, SourceScreenConfig
from implicit_concept import file_locks
from implicit_concept.compositing import MIN_SEEN, composite, jsonable
from implicit_concept.concepts.renderer import Layer
from implicit_concept.file_locks import LOCK_NAME, FolderBusyError, LocksUnavailable, locked, read_locked
from implicit_concept.files import write_unless_same
from implicit_concept.provenance import package_changes
from implicit_concept.sample import Box, Instance, SampleMeta
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


@pytest.mark.parametrize(("record", "said"), [(b"", "unknown"), (b"123\n" + socket.gethostname().encode() + b"\n", "123"),
                                              (b"123\nnode-7\n", "123 on node-7")])
def test_a_holder_is_named_from_what_its_lock_file_records(tmp_path, record, said):
    """A lock file recording nothing (a holder that could not write it) names no pid; this host's
    holder its pid alone, another host's with the host."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_bytes(record)
    fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held as another process would hold it, without rewriting the record
        with pytest.raises(FolderBusyError, match=rf"^{folder}: in use by another process \(pid {said}\); "):
            with locked(folder, wait=False, inside=True):
                pass
        with read_locked(folder, wait=False) as writer:
            assert writer == said
    finally:
        os.close(fd)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_every_way_a_filesystem_says_it_keeps_no_locks_names_the_lock_file(tmp_path, monkeypatch, code):
    """NFS without its lock service says ENOLCK; a FUSE or SMB mount ENOSYS or EOPNOTSUPP."""
    def no_flock(fd, operation):
        raise OSError(code, os.strerror(code))

    folder = tmp_path / "out"
    folder.mkdir()
    monkeypatch.setattr(file_locks.fcntl, "flock", no_flock)
    with pytest.raises(LocksUnavailable) as e:
        with locked(folder, inside=True):
            pass
    assert e.value.filename == str(folder / LOCK_NAME) and e.value.errno == code
    assert e.value.strerror.startswith(f"cannot be locked: its filesystem keeps no file locks (flock: {os.strerror(code)})")


def test_readers_share_a_lock_a_maker_waits_for(tmp_path):
    """Two readers of one dataset at once (a verify and a show) do not find each other busy; a maker does."""
    folder = tmp_path / "data"
    folder.mkdir()
    with locked(folder, inside=True):
        pass  # its lock file made, as a build leaves it
    with read_locked(folder, wait=False) as first:
        with read_locked(folder, wait=False) as second:
            assert (first, second) == (None, None)
            with pytest.raises(FolderBusyError):
                with locked(folder, wait=False, inside=True):
                    pass


def test_write_unless_same_writes_other_bytes_of_the_same_size_and_leaves_the_same_ones(tmp_path):
    """A rerun leaves a file holding its bytes as it was (a read-only copy serves); a file of the same
    size holding other bytes (a record edited by hand) is written."""
    path = tmp_path / "recipe.json"
    path.write_bytes(b"abc")
    before = path.stat().st_ino
    write_unless_same(path, b"abc")
    assert path.stat().st_ino == before
    write_unless_same(path, b"xyz")
    assert path.read_bytes() == b"xyz"
    write_unless_same(tmp_path / "new", b"")
    assert (tmp_path / "new").read_bytes() == b""


def test_a_mark_that_changes_only_the_blue_channel_is_seen():
    """The change a mark makes is its largest channel difference, blue included: a blue mark on grey is seen."""
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((100, 100, 200, 255), (4, 4, 12, 9))
    _, instances, _ = composite(Image.new("RGB", (16, 16), (100, 100, 100)), [Layer(rgba)], "watermark", 0.0, MIN_SEEN)
    assert [i.box.as_list() for i in instances] == [[4, 4, 12, 9]]


@pytest.mark.parametrize(("caption", "names", "stripped"), [
    ("an inscription on a wall", ("text",), "on a wall"),  # "an" goes with the word, as "a" does
    ("water text mark on a door", ("text", "watermark"), "on a door"),  # a phrase joined once a word was taken out
    ("a dog (\"[logo]\") in a park", ("watermark",), "a dog in a park"),  # brackets and quotes left empty, nested
    ("logo, a cat", ("watermark",), "a cat"),  # no comma left at the start
    ("a cat, logo", ("watermark",), "a cat"),
    ("a cat ,logo, and a dog", ("watermark",), "a cat, and a dog"),  # no space before punctuation, no comma twice
    ("a logo水印2 here", ("watermark",), "here"),  # a match inside a longer one's token goes with that token
])
def test_strip_takes_out_the_words_their_article_and_the_punctuation_left_around_them(caption, names, stripped):
    verdict = CaptionScreen("strip").check(caption)
    assert (verdict.names, verdict.caption, verdict.stripped, verdict.reason) == (names, stripped, True, None)


@pytest.mark.parametrize("caption", ["watermark 2020", "logo: 12-34", "(text) ..."])
def test_a_caption_left_without_a_letter_is_skipped(caption):
    """A caption of digits and punctuation once the words are out describes nothing: the item is skipped."""
    verdict = CaptionScreen("strip").check(caption)
    assert (verdict.caption, verdict.reason) == (None, "caption_empty_after_screen")


@pytest.mark.parametrize(("caption", "names"), [("(c) 3 apples", ()), ("(c) 2021 Jane", ("watermark",)), ("(c)2021", ("watermark",))])
def test_c_in_brackets_is_a_copyright_only_before_a_year(caption, names):
    assert CaptionScreen("flag").check(caption).names == names


@pytest.mark.parametrize("caption", ["워터마크가 있는 사진", "foto com marca d'água", "ＱＲコード"])
def test_a_decomposed_caption_is_matched_as_its_composed_form(caption):
    """A Mac's NFD file names, Korean typed as jamo: the words are found as if composed."""
    decomposed = unicodedata.normalize("NFD", caption)
    assert decomposed != caption
    assert CaptionScreen("flag").check(decomposed).names == CaptionScreen("flag").check(caption).names != ()


def test_the_source_screen_is_on_with_the_decoder_alone_and_its_fields_are_checked():
    assert not SourceScreenConfig().active
    assert SourceScreenConfig(qr_decode=True).active and SourceScreenConfig(detector="det").active
    assert SourceScreenConfig(detector=Path("det")).detector == "det"  # recorded in recipe.json as text
    with pytest.raises(ValueError, match=r"^source_screen\.qr_decode must be true or false, got 'yes'$"):
        SourceScreenConfig(qr_decode="yes")


class _Sees:
    """A detector that sees the given concepts (in that order) in every image."""

    def __init__(self, *concepts):
        self.concepts = concepts

    def detect(self, image, conf=0.25):
        return [SimpleNamespace(concept=c, confidence=0.9) for c in self.concepts]


def test_the_source_screen_uses_the_detector_it_was_given_and_names_concepts_sorted(monkeypatch):
    monkeypatch.setattr(source_screen, "load_detector", lambda path: pytest.fail(f"loaded {path}"))
    screen = SourceScreen(SourceScreenConfig(detector="det"), detector=_Sees("watermark", "text", "qrcode", "text"))
    assert screen.shows(Image.new("RGB", (8, 8))) == ["qrcode", "text", "watermark"]


SORTED_UNDER_ANY_HASH_SEED = """
from types import SimpleNamespace
from builders.source_screen import SourceScreen, SourceScreenConfig
seen = SimpleNamespace(detect=lambda image, conf: [SimpleNamespace(concept=c) for c in ("watermark", "text", "qrcode")])
print(SourceScreen(SourceScreenConfig(detector="det"), detector=seen).shows(None))
"""


def test_what_the_source_screen_finds_is_written_in_one_order_whatever_the_hash_seed():
    """KEY.json's screen.source_shows: same seed, same bytes, in any process (a set's order is not)."""
    root = Path(__file__).resolve().parent.parent
    for seed in range(4):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(root)}
        done = subprocess.run([sys.executable, "-c", SORTED_UNDER_ANY_HASH_SEED], cwd=root, env=env, capture_output=True,
                              text=True, check=True)
        assert done.stdout == "['qrcode', 'text', 'watermark']\n", seed


def _key_json(**changes) -> dict:
    meta = SampleMeta(key="k0", caption="a scene", width=64, height=64, split="train", subset="icd-qrcode",
                      source={"kind": "test", "id": "0"}, instances=[Instance("qrcode", Box(1, 2, 30, 40))],
                      seed=[0], recipe="test", recipe_sha256="0", version="0.9.0")
    return {**meta.to_json(), **changes}


@pytest.mark.parametrize("schema", [0, 1])
def test_a_schema_1_key_json_is_refused_its_boxes_cover_what_was_drawn_not_what_shows(schema):
    with pytest.raises(ValueError, match=rf"^schema: {schema}, written by an older implicit-concept \(version 0\.9\.0\); "
                                         r"this one \(.+\) reads schemas 2 to \d+: rebuild the dataset to read it$"):
        SampleMeta.from_json(_key_json(schema=schema))


def test_versions_are_said_not_compared_only_beside_a_run_that_records_them():
    """Runs none of which record versions (all from an older release) have nothing to compare: no note."""
    torch = {"environment": {"packages": {"torch": "2.1", "numpy": None}}}
    assert version_notes({"a": {}, "b": {"environment": None}}) == []
    assert version_notes({"a": torch, "b": {}}) == ["package versions not compared: not recorded in b (a results.json from an older version)"]
    assert version_notes({"a": torch, "b": {"environment": {"packages": {"torch": "2.2"}}}}) == [
        "numpy differs between runs, which may change their numbers: not installed (a); not recorded (b)",
        "torch differs between runs, which may change their numbers: 2.1 (a); 2.2 (b)",
    ]


def test_samples_of_another_release_are_named_once_at_the_first_of_them(debug_dataset, tmp_path):
    """Two shards another release wrote: verify names the first sample it wrote (of the first shard),
    once, not the last one it came across."""
    from builders.verify import verify_dataset
    from tests.test_verify import read_tar, write_tar
    from tests.test_version_skew import _reseal_whole

    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    shards = [out / "icd-qrcode" / "train" / name for name in ("00000.tar", "00001.tar")]
    for shard in shards:
        samples = read_tar(shard)
        for _, members in samples:
            members["json"] = json.dumps({**json.loads(members["json"]), "version": "0.0.9"}, sort_keys=True,
                                         ensure_ascii=False).encode()
        write_tar(shard, samples)
    _reseal_whole(out)
    first = read_tar(shards[0])[0][0]
    problems = [p for p in verify_dataset(out).problems if "samples of two releases" in p]
    assert len(problems) == 1 and problems[0].startswith(f"{shards[0]}:{first}: KEY.json written by implicit-concept 0.0.9 "), problems
