"""Hostile sources in styles a lab's own photos arrive in: file endings in two letter cases, read
alike from a folder and from a tar, as are links beside a key's files; metadata sidecars with numbers
no double holds; compressed tars damaged mid-way; a JPEG cut short and closed with an end marker;
captions saved as documents."""
from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.resizer import prepare_image
from builders.sources import FolderConfig, FolderSource, WebDatasetConfig, WebDatasetSource
from builders.sources.caption_text import read_caption
from builders.sources.source_json import read_source_json
from implicit_concept.sample_error import SampleError
from tests.test_sources import jpeg, read_all, write_tar

#: Keys two of whose files have one ending in two letter cases (a camera's ``IMG.JPG`` beside an
#: exported ``IMG.jpg``; captions or metadata written by two tools), and one key that is fine.
CASED = {
    "x": [("x.jpg", jpeg((200, 0, 0))), ("x.JPG", jpeg((0, 200, 0))), ("x.txt", b"a red or a green square")],
    "y": [("y.png", jpeg()), ("y.TXT", b"a caption from one tool"), ("y.txt", b"a caption from another")],
    "z": [("z.jpg", jpeg()), ("z.txt", b"a square"), ("z.JSON", b'{"url": "a"}'), ("z.json", b'{"url": "b"}')],
    "w": [("w.JPG", jpeg()), ("w.TXT", b"an upper-case ending alone is read")],
}


def test_endings_in_two_letter_cases_refuse_their_key_in_a_folder_as_in_a_tar(tmp_path: Path):
    """A tar holding ``x.jpg`` and ``x.JPG`` refuses the key (``duplicate_member``: which is meant is
    unknown), while a folder used whichever sorted first (``x.JPG``: upper case sorts first) and its
    caption ``y.txt`` over ``y.TXT``: one source of two files became a sample the other refused. Both
    now refuse such a key, every file of it recorded in a folder, and read ``w.JPG`` + ``w.TXT``."""
    folder = tmp_path / "folder"
    folder.mkdir()
    members = [m for key in sorted(CASED) for m in CASED[key]]
    for name, data in members:
        (folder / name).write_bytes(data)
    write_tar(tmp_path / "00000.tar", members)
    from_folder = read_all(FolderSource(FolderConfig(str(folder), test_fraction=0.0), shard_size=100), "train")
    from_tar = read_all(WebDatasetSource(WebDatasetConfig([str(tmp_path / "00000.tar")], test_fraction=0.0)), "train")

    assert {i.source_id: (i.error, i.caption) for i in from_tar} == {
        "00000.tar/w": (None, "an upper-case ending alone is read"),
        **{f"00000.tar/{k}": ("duplicate_member", None) for k in "xyz"},
    }
    assert {i.source_id: (i.error, i.caption) for i in from_folder} == {
        "w.JPG": (None, "an upper-case ending alone is read"),
        **{name: ("duplicate_member", None) for key in "xyz" for name, _ in CASED[key]},
    }
    detail = {i.source_id: i.detail for i in from_folder}
    assert detail["x.txt"] == ("x.txt: not read: x.JPG and x.jpg are one file name in two letter cases (a Mac's or Windows' "
                               "disk holds one of them), so which is meant is unknown and no file of key 'x' is read, as in a "
                               "tar; keep one")
    assert "y.TXT and y.txt" in detail["y.png"] and "z.JSON and z.json" in detail["z.jpg"]


def test_an_integer_no_double_holds_becomes_null_as_one_with_an_exponent_does():
    """``1e999`` in img2dataset's KEY.json became null, but the same number in 400 digits was copied
    into KEY.json's meta as it stood (a reader parsing numbers as doubles gets infinity), and one of
    5000 digits lost the whole JSON (``invalid_json``: Python's int digit limit). Each is now null,
    and an integer a double holds is kept exactly."""
    huge = "9" * 400
    for digits in (huge, "-" + huge, "1" + "0" * 5000):
        meta, skipped = read_source_json(f'{{"n": {digits}, "ok": 7, "big": 123456789012345678901234567890}}'.encode())
        assert skipped is None and meta == {"json": {"n": None, "ok": 7, "big": 123456789012345678901234567890}}, digits[:5]
    assert read_source_json(f"[{huge}, 1]".encode())[0] == {"json": [None, 1]}


def _noise_png(seed: int) -> bytes:
    """An image that does not compress, so a damaged byte of its tar lands among its pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("compress", [lambda raw: gzip.compress(raw, mtime=0), bz2.compress, lzma.compress],
                         ids=["gzip", "bzip2", "xz"])
@pytest.mark.parametrize("stream", [False, True], ids=["file", "pipe"])
def test_a_compressed_tar_damaged_mid_way_gives_its_samples_then_one_record(tmp_path: Path, compress, stream: bool):
    """An xz-compressed tar (``tar -cJf``, named ``.tar``) with one byte damaged in its middle raised
    xz's ``LZMAError``, which is not an ``OSError`` as gzip's and bzip2's errors are: the build stopped
    on a traceback. Every compression now gives the samples read before the damage was found (where
    depends on the compression: gzip's CRC is checked only at its end, bzip2 checks a block before it
    gives any of it), then one ``corrupt_tar`` saying what was raised."""
    members = [m for k in range(6) for m in ((f"{k}.png", _noise_png(k)), (f"{k}.txt", b"a field"))]
    write_tar(tmp_path / "plain.tar", members)
    data = bytearray(compress((tmp_path / "plain.tar").read_bytes()))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "00000.tar").write_bytes(bytes(data))
    url = f"pipe:cat {tmp_path / '00000.tar'}" if stream else str(tmp_path / "00000.tar")
    items = read_all(WebDatasetSource(WebDatasetConfig([url], test_fraction=0.0)), "train")
    *samples, record = items
    assert all(i.error is None for i in samples) and [i.source_id for i in samples] == [f"00000.tar/{k}" for k in range(len(samples))]
    assert (record.source_id, record.error) == ("00000.tar", "corrupt_tar")
    assert "\n" not in record.detail and ("after '" in record.detail or "00000.tar" in record.detail), record.detail


def test_a_link_or_fifo_beside_a_keys_file_leaves_the_file_used_in_a_folder_as_in_a_tar(tmp_path: Path):
    """``a.jpg``, a symlink to ``a.png`` (what a photo tool's "export as" leaves), or a FIFO, beside
    the file ``a.png``: the folder chose ``a.jpg`` by the order of extensions, refused it, and recorded
    the good ``a.png`` as ``duplicate_image`` "a.jpg of the same name is used", so the key made no
    sample, while a tar's symlink member is a record of its own and its key uses ``a.png``. Now the
    folder uses the regular file too, and a key of links alone records each as what it is."""
    folder = tmp_path / "folder"
    folder.mkdir()
    png = _noise_png(0)
    for key in "abc":
        (folder / f"{key}.txt").write_text(f"a field {key}")
    (folder / "a.png").write_bytes(png)
    os.symlink("a.png", folder / "a.jpg")
    (folder / "b.png").write_bytes(png)
    os.mkfifo(folder / "b.jpg")
    (folder / "elsewhere.bmp").write_bytes(png)
    os.symlink("elsewhere.bmp", folder / "c.jpg")
    os.symlink("elsewhere.bmp", folder / "c.png")
    items = {i.source_id: i for i in read_all(FolderSource(FolderConfig(str(folder), test_fraction=0.0), shard_size=100), "train")}
    assert {k: (i.error, i.caption) for k, i in items.items() if k != "elsewhere.bmp"} == {
        "a.png": (None, "a field a"), "a.jpg": ("not_a_regular_file", None),
        "b.png": (None, "a field b"), "b.jpg": ("not_a_regular_file", None),
        "c.jpg": ("not_a_regular_file", "a field c"), "c.png": ("not_a_regular_file", None),
    }
    assert items["a.png"].image == png and items["b.png"].image == png
    assert items["a.jpg"].detail.startswith("a.jpg: a symlink to a file, never followed")
    assert items["b.jpg"].detail == "b.jpg: a FIFO (named pipe), not a regular file"
    assert items["c.png"].detail.startswith("c.png: a symlink to a file")

    tar = tmp_path / "00000.tar"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        link = tarfile.TarInfo("a.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tf.addfile(link)
        for name, data in (("a.png", png), ("a.txt", b"a field a")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    from_tar = {i.source_id: i for i in read_all(WebDatasetSource(WebDatasetConfig([str(tar)], test_fraction=0.0)), "train")}
    assert {k: i.error for k, i in from_tar.items()} == {"00000.tar/a.jpg": "not_a_regular_file", "00000.tar/a": None}
    assert from_tar["00000.tar/a"].image == items["a.png"].image


def test_a_phones_heic_beside_its_caption_says_its_extension_is_not_read_in_a_folder_as_in_a_tar(tmp_path: Path):
    """An iPhone's ``IMG_1.HEIC`` beside ``IMG_1.txt`` is a ``no_image`` record: a tar's said the
    extension is not read, a folder's only listed the two files, as if the image were missing.
    Both now say why the file was not taken; a HEIC alone (no caption) too."""
    folder = tmp_path / "folder"
    folder.mkdir()
    heic = b"\0\0\0\x18ftypheic" + bytes(64)
    members = [("IMG_1.HEIC", heic), ("IMG_1.txt", b"a field"), ("IMG_2.heic", heic), ("ok.jpg", jpeg()), ("ok.txt", b"a field")]
    for name, data in members:
        (folder / name).write_bytes(data)
    write_tar(tmp_path / "00000.tar", members)
    from_folder = {i.source_id: i for i in read_all(FolderSource(FolderConfig(str(folder), test_fraction=0.0), shard_size=100), "train")}
    from_tar = {i.source_id: i for i in read_all(WebDatasetSource(WebDatasetConfig([str(tmp_path / "00000.tar")], test_fraction=0.0)), "train")}
    assert from_tar["00000.tar/IMG_1"].error == "no_image" and "extension 'heic' of 'IMG_1.HEIC' is not read" in from_tar["00000.tar/IMG_1"].detail
    for name in ("IMG_1.HEIC", "IMG_2.heic"):
        assert from_folder[name].error == "no_image"
        assert from_folder[name].detail.endswith(f"; {name}: extension 'heic' is not read as an image (a recipe's [source] "
                                                 "extensions reads others Pillow decodes)"), from_folder[name].detail
    assert from_folder["ok.jpg"].error is None


def _restart_jpeg(size: tuple[int, int], mode: str, **options) -> bytes:
    pixels = np.random.default_rng(size[0] * size[1]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("options", [{"restart_marker_rows": 1}, {"restart_marker_blocks": 3, "subsampling": 0},
                                     {"restart_marker_blocks": 2, "subsampling": 1}])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_jpeg_cut_short_then_closed_with_an_end_marker_is_truncated_where_it_has_restart_markers(options, mode):
    """A JPEG cut mid-scan with an end marker put after it (what a tool that "repairs" a cut
    download writes) decoded, its rest grey, libjpeg's warning on stderr alone: a sample of a
    half-grey photo. Where the JPEG has restart markers, one too few of them before the end marker
    is now ``truncated_image``; the whole file, of any size and subsampling, still decodes."""
    for size in ((80, 64), (37, 53), (300, 40), (9, 300)):
        whole = _restart_jpeg(size, mode, **options)
        assert prepare_image(whole, 16, 0).size == (16, 16)
        with pytest.raises(SampleError) as cut:
            prepare_image(whole[: len(whole) // 2] + b"\xff\xd9", 16, 0)
        assert cut.value.reason == "truncated_image" and "then its end marker: the data was cut short" in str(cut.value), size


RTF = b"{\\rtf1\\ansi\\ansicpg1252\\cocoartf2709\n{\\fonttbl\\f0\\fswiss Helvetica;}\n\\f0\\fs24 a red kite over a beach}"


def test_a_caption_saved_as_a_document_is_refused_and_named(tmp_path: Path):
    """A caption written in TextEdit (RTF, its default) and renamed ``.txt`` is ASCII, so it became
    the caption, markup and all: ``{\\rtf1\\ansi...``. It is ``caption_not_plain_text`` now, in any
    encoding a byte order mark names; a Word file, a PDF or an image saved in a caption's place was
    "Latin-1 or Windows-1252 text?" and is now named. A caption that mentions RTF is a caption."""
    for data in (RTF, codecs.BOM_UTF8 + RTF, codecs.BOM_UTF16_LE + RTF.decode().encode("utf-16-le"), b"  \r\n" + RTF):
        caption, reason, why = read_caption(data)
        assert (caption, reason) == (None, "caption_not_plain_text") and why.startswith("an RTF document"), data[:8]
    for data, named in ((b"PK\x03\x04\x14\x00\x06\x00\x08\x00\xe9", "a zip archive (a Word .docx"), (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "a PDF"),
                        (jpeg(), "a JPEG image"), (_noise_png(1), "a PNG image")):
        caption, reason, why = read_caption(data)
        assert reason == "caption_not_utf8" and f"; {named}" in why and "Latin-1" not in why, why
    assert read_caption(b"a sign reading {\\rtf1 on a wall")[:2] == ("a sign reading {\\rtf1 on a wall", None)
    (tmp_path / "kite.jpg").write_bytes(jpeg())
    (tmp_path / "kite.txt").write_bytes(RTF)
    [item] = read_all(FolderSource(FolderConfig(str(tmp_path), test_fraction=0.0), shard_size=10), "train")
    assert item.error == "caption_not_plain_text" and item.detail.startswith("kite.txt: an RTF document (starts with")
