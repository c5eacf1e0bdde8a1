"""Hostile inputs of kinds the other suites do not build: TIFF headers whose tag arrays cost far more
memory and time than their bytes, recipes asking for sizes, event counts or plans no build can hold,
and files given as tars that are no tar."""
from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from builders.resizer import SampleError, prepare_image
from implicit_concept.image_structure import MAX_CHUNKS, MAX_TIFF_VALUES
from tests.pillow_calls import pillow_calls


def _tiff(width: int, height: int, strips: int, extra: dict[int, tuple[int, int, bytes]] | None = None, big: bool = False) -> bytes:
    """An uncompressed 8-bit grey TIFF (little-endian; BigTIFF with ``big``) of ``strips`` strips,
    plus ``extra`` tags (tag: (type, count, value bytes))."""
    rows = max(1, -(-height // strips))
    strip_bytes = [min(rows, height - i * rows) * width for i in range(strips)]
    tags = {256: (4, 1, struct.pack("<I", width)), 257: (4, 1, struct.pack("<I", height)), 258: (3, 1, struct.pack("<H", 8)),
            259: (3, 1, struct.pack("<H", 1)), 262: (3, 1, struct.pack("<H", 1)), 277: (3, 1, struct.pack("<H", 1)),
            278: (4, 1, struct.pack("<I", rows)), 279: (4, strips, struct.pack(f"<{strips}I", *strip_bytes)), 273: None}
    tags.update(extra or {})
    entry, inline = (20, 8) if big else (12, 4)
    start = (16 if big else 8) + (8 if big else 2) + entry * len(tags) + (8 if big else 4)
    blob = bytearray()
    data_at = {}
    for tag, value in sorted(tags.items()):
        if value is not None and len(value[2]) > inline:
            data_at[tag] = start + len(blob)
            blob += value[2]
    pixels_at = start + len(blob) + 4 * strips
    offsets = [pixels_at + sum(strip_bytes[:i]) for i in range(strips)] if strips < 1000 else \
        list(np.cumsum([0] + strip_bytes[:-1]) + pixels_at)
    tags[273] = (4, strips, struct.pack(f"<{strips}I", *offsets))
    data_at[273] = start + len(blob)
    blob += tags[273][2]
    head = b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 16) if big else b"II*\x00" + struct.pack("<I", 8)
    ifd = struct.pack("<Q" if big else "<H", len(tags))
    for tag, (kind, count, value) in sorted(tags.items()):
        if tag in data_at:
            ifd += struct.pack("<HHQQ" if big else "<HHII", tag, kind, count, data_at[tag])
        else:
            ifd += struct.pack("<HHQ" if big else "<HHI", tag, kind, count) + value.ljust(inline, b"\0")
    ifd += b"\0" * (8 if big else 4)
    return head + ifd + bytes(blob) + b"\x80" * sum(strip_bytes)


def _refusal(raw: bytes) -> SampleError:
    with pytest.raises(SampleError) as info:
        prepare_image(raw, 16, 0)
    return info.value


# --- TIFF: tag arrays Pillow unpacks into Python objects -----------------------------------------


def test_a_tiff_of_strips_and_tags_a_real_image_has_decodes():
    assert prepare_image(_tiff(40, 40, 40), 16, 0).size == (16, 16)
    assert prepare_image(_tiff(40, 40, 1, big=True), 16, 0).size == (16, 16)
    stored = io.BytesIO()
    Image.new("RGB", (300, 300), (200, 100, 50)).save(stored, "TIFF", save_all=True, append_images=[Image.new("RGB", (9, 9))])
    assert prepare_image(stored.getvalue(), 16, 0).getpixel((3, 3)) == (200, 100, 50)


def test_a_tiff_of_more_strips_than_the_cap_is_refused_quickly():
    """100 000 one-row strips in 900 KB cost 1.2 s and 70 MB to open, and 8 million (a 64 MiB file)
    minutes and gigabytes: one Python tuple per strip."""
    raw = _tiff(16, MAX_CHUNKS + 1, MAX_CHUNKS + 1)
    with pillow_calls() as calls:
        error = _refusal(raw)
    assert (error.reason, error.detail) == (
        "too_many_chunks", f"a TIFF whose first image has more than {MAX_CHUNKS} strips or tiles (tag 273: {MAX_CHUNKS + 1} values)")
    assert calls["open"] == 0, "refused after Pillow had unpacked the strips"


@pytest.mark.parametrize("tag, kind, size", [(282, 5, 8), (258, 3, 2), (339, 3, 2)], ids=["x_resolution_rationals", "bits_per_sample", "sample_format"])
def test_a_tiff_tag_of_more_values_than_the_cap_is_refused_quickly(tag, kind, size):
    """Four million rationals as the XResolution of a 30 MB TIFF cost 16 s and 680 MB to open."""
    count = MAX_TIFF_VALUES + 1
    raw = _tiff(16, 16, 1, {tag: (kind, count, b"\x01" * size * count)})
    with pillow_calls() as calls:
        error = _refusal(raw)
    assert (error.reason, error.detail) == (
        "too_many_chunks", f"a TIFF whose first image has a tag of more than {MAX_TIFF_VALUES} values (tag {tag}: {count} values)")
    assert calls["open"] == 0, "refused after Pillow had unpacked the tag"


def test_a_bigtiff_of_more_tags_than_the_cap_is_refused():
    raw = b"II+\x00\x08\x00\x00\x00" + struct.pack("<QQ", 16, MAX_CHUNKS + 1) + struct.pack("<HHQQ", 50000, 1, 1, 0) * (MAX_CHUNKS + 1)
    error = _refusal(raw)
    assert (error.reason, error.detail) == ("too_many_chunks", f"a TIFF whose first image has more than {MAX_CHUNKS} tags ({MAX_CHUNKS + 1})")


def test_a_tiff_header_cut_short_is_left_to_pillow():
    raw = _tiff(40, 40, 4)
    for cut in (5, 8, 9, 14, 20, 60):
        assert _refusal(raw[:cut]).reason in ("unreadable_image", "truncated_image")


# --- EXIF: an orientation of millions of values ----------------------------------------------------


def _exif(orientations: int, value: int = 6) -> bytes:
    """A little-endian EXIF block (TIFF header, IFD0) whose Orientation tag holds ``orientations`` SHORTs."""
    inline = orientations <= 2
    entry = struct.pack("<HHI", 274, 3, orientations) + (struct.pack("<H", value).ljust(4, b"\0") if inline else struct.pack("<I", 26))
    return b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", 1) + entry + b"\0\0\0\0" + (b"" if inline else struct.pack("<H", value) * orientations)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_block_over_the_cap_is_ignored_in_bounded_memory(fmt):
    """8 million orientations in a 15 MB PNG's eXIf took 1.7 s and 200 MB: one Python object each."""
    import tracemalloc

    from implicit_concept.image_decode import MAX_EXIF_BYTES

    picture = Image.new("RGB", (40, 20), (200, 100, 50))
    picture.putpixel((0, 0), (0, 0, 255))

    def stored(exif: bytes) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, fmt, exif=(b"Exif\x00\x00" + exif) if fmt == "WEBP" else exif, lossless=True)
        return buffer.getvalue()

    upright = open_decoded(stored(_exif(1)))
    assert upright.size == (20, 40)  # orientation 6: turned a quarter
    big = stored(_exif(MAX_EXIF_BYTES // 2))
    tracemalloc.start()
    try:
        kept = open_decoded(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(big)
    assert kept.size == (40, 20)  # the orientation of a block over the cap is not read


def open_decoded(raw: bytes) -> Image.Image:
    from implicit_concept.image_decode import decode_rgb, open_image

    return decode_rgb(open_image(raw))


# --- recipes: sizes, event counts and plans no build can hold ------------------------------------


def _recipe(**changes) -> dict:
    raw = {"name": "r", "seed": 1, "image_size": 32, "shard_size": 8,
           "source": {"kind": "procedural", "train": 4, "test": 2},
           "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 1.0}]}
    raw.update(changes)
    return raw


def _recipe_error(**changes) -> str:
    from builders.recipe import RecipeError, parse_recipe

    with pytest.raises(RecipeError) as info:
        parse_recipe(_recipe(**changes))
    return str(info.value)


def test_an_image_size_no_build_can_hold_is_refused_naming_the_field():
    """image_size = 1000000 failed in the first scene's render: a traceback of numpy's 2.73 TiB MemoryError."""
    from builders.recipe import MAX_IMAGE_SIZE, parse_recipe

    assert _recipe_error(image_size=1_000_000) == f"image_size must be in [16, {MAX_IMAGE_SIZE}], got 1000000"
    assert parse_recipe(_recipe(image_size=MAX_IMAGE_SIZE)).image_size == MAX_IMAGE_SIZE


@pytest.mark.parametrize("instances, why", [
    ([100_000, 100_000], "[100000, 100000]"),  # a hang: each image drew 100 000 concepts
    ([True, True], "[True, True]"),             # read as [1, 1]
    ([1, 2.0], "[1, 2.0]"),
])
def test_subset_instances_are_integers_within_a_bound(instances, why):
    from builders.recipe import MAX_INSTANCES

    assert _recipe_error(subsets=[{"name": "q", "concepts": ["qrcode"], "fraction": 1.0, "instances": instances}]) == (
        f"subsets.q.instances must be [min, max] with 1 <= min <= max <= {MAX_INSTANCES}, got {why}")


def test_a_procedural_plan_of_more_shards_than_a_plan_holds_is_refused_naming_the_field():
    """train = 10**15 in shards of 8 failed with a MemoryError traceback listing the shard ids."""
    from builders.recipe import parse_recipe
    from builders.sources.base import MAX_PLANNED_SHARDS

    assert _recipe_error(source={"kind": "procedural", "train": 10**15, "test": 2}) == (
        f"source.train: 1000000000000000 items in shards of 8 are 125000000000000 shards, over the {MAX_PLANNED_SHARDS} a split may have")
    assert parse_recipe(_recipe(source={"kind": "procedural", "train": 8 * MAX_PLANNED_SHARDS, "test": 2}))


@contextmanager
def names_expanded() -> Iterator[list[str]]:
    """The brace patterns expanded within the block, wherever the toolkit expands them. One of more
    than a thousand names gives none (braceexpand makes a range's every name before the first), so
    a pattern expanded before it was counted fails the test rather than filling memory."""
    from builders.sources import webdataset_source
    from implicit_concept import shard_reader

    expanded: list[str] = []
    real = webdataset_source.braceexpand

    def bounded(pattern, *args, **kwargs):
        expanded.append(pattern)
        return iter(()) if webdataset_source.brace_count(pattern) > 1000 else real(pattern, *args, **kwargs)

    sites = (webdataset_source, shard_reader)
    for site in sites:
        site.braceexpand = bounded
    try:
        yield expanded
    finally:
        for site in sites:
            site.braceexpand = real


def test_a_tar_pattern_naming_more_tars_than_a_plan_holds_is_refused_without_listing_them(tmp_path):
    """'{000000000000..999999999999}.tar' was expanded into a list of a trillion names before any check
    (braceexpand makes every name of a range before the first)."""
    from builders.sources.base import MAX_PLANNED_SHARDS

    pattern = str(tmp_path / "{000000000000..999999999999}.tar")
    with names_expanded() as expanded:
        error = _recipe_error(source={"kind": "webdataset", "urls": pattern})
    assert error == f"source.urls: {pattern!r} names more than {MAX_PLANNED_SHARDS} tars, the shards a split may have"
    assert expanded == [], "the pattern was expanded before it was counted"


@pytest.mark.parametrize("pattern", [
    "a", "{0..9}", "{00..10}x{a,b,c}", "{a..e}{Z..a}", "{1..10..3}", "{10..1..3}", "{-3..3}", "{a,b{0..4},{c,d}}",
    "x{}y", "x{,}y", r"a\{0..3\}", r"{a\,b,c}", "{{0..2}}", "{a,{b..d}}{1..2}", "{z..a..2}", "{5..5..0}", "{,a,,}", "}{",
])
def test_a_brace_pattern_is_counted_as_braceexpand_expands_it(pattern):
    from braceexpand import braceexpand

    from builders.sources.webdataset_source import brace_count

    assert brace_count(pattern) == len(list(braceexpand(pattern)))


def test_a_source_pattern_naming_more_tars_than_a_plan_holds_is_one_line(tmp_path, capsys):
    from benchmark.cli import main
    from builders.sources.base import MAX_PLANNED_SHARDS

    pattern = str(tmp_path / "{000000000000..999999999999}.tar")
    with names_expanded() as expanded:
        assert main(["build", "icd-debug", "--source", pattern, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--source: {pattern!r} names more than {MAX_PLANNED_SHARDS} tars, the shards a split may have")
    assert "\n" not in err and expanded == [], "the pattern was expanded before it was counted"
    assert not (tmp_path / "out").exists()
