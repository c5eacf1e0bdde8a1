"""What source bytes become, or why not: only the README's formats are decoded (no external program
ever runs), messages are the same on every run, transparency is white in every mode, ICC colours
become sRGB, metadata Pillow refuses does not cost the pixels, a PNG short of rows is truncated, and
structure that costs time its size does not show is refused. Every hostile file is built here."""
from __future__ import annotations

import io
import struct
import subprocess
import warnings
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageCms, PngImagePlugin, features

from builders.resizer import SampleError, prepare_image
from implicit_concept import image_decode, image_structure
from implicit_concept.image_decode import FORMATS, decode_rgb, load_pixels, open_image
from implicit_concept.image_structure import MAX_CHUNKS, MAX_JPEG_SCANS
from tests.pillow_calls import pillow_calls

SAVE_AS = "save the image as 8- or 16-bit RGB (PNG or TIFF) or as an 8-bit JPEG"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 1 setrgbcolor 0 0 16 16 rectfill\nshowpage\n%%EOF\n"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def refusal(raw) -> SampleError:
    with pytest.raises(SampleError) as info:
        prepare_image(raw, 16, 0)
    return info.value


def pixels(raw, size: int = 16) -> np.ndarray:
    return np.asarray(prepare_image(raw, size, 0), dtype=np.int16)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, colour: int, rows: list[bytes], before=(), after=(), interlace: int = 0, data: bytes | None = None) -> bytes:
    """A PNG made chunk by chunk: ``rows`` unfiltered (or ``data`` as the filtered stream), ``before``
    and ``after`` the IDAT extra (type, data) chunks."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    stream = data if data is not None else b"".join(b"\0" + r for r in rows)
    body = b"".join(chunk(k, d) for k, d in before) + chunk(b"IDAT", zlib.compress(stream)) + b"".join(chunk(k, d) for k, d in after)
    return b"\x89PNG\r\n\x1a\n" + header + body + chunk(b"IEND", b"")


def tiff(width: int, height: int, bits: list[int], photometric: int, data: bytes, order: str = "<", **tags: list[int]) -> bytes:
    """An uncompressed TIFF of one strip made tag by tag, for layouts Pillow cannot write; ``tags``
    more SHORT tags by name (``sample_format``, ``extra_samples``)."""
    named = {"sample_format": 339, "extra_samples": 338}
    entries = {256: (4, [width]), 257: (4, [height]), 258: (3, bits), 259: (3, [1]), 262: (3, [photometric]), 273: (4, [0]),
               277: (3, [len(bits)]), 278: (4, [height]), 279: (4, [len(data)])}
    entries.update({named[k]: (3, v) for k, v in tags.items()})
    table_end = 8 + 2 + 12 * len(entries) + 4
    values, table = b"", b""
    for tag, (kind, items) in sorted(entries.items()):
        packed = struct.pack(order + ("H" if kind == 3 else "I") * len(items), *items)
        if len(packed) > 4:
            packed, values = struct.pack(order + "I", table_end + len(values)), values + packed
        table += struct.pack(order + "HHI", tag, kind, len(items)) + packed.ljust(4, b"\0")
    strip = struct.pack(order + "I", table_end + len(values))
    at = table.index(struct.pack(order + "HHI", 273, 4, 1)) + 8
    table = table[:at] + strip + table[at + 4:]
    magic = b"II*\0" if order == "<" else b"MM\0*"
    return magic + struct.pack(order + "I", 8) + struct.pack(order + "H", len(entries)) + table + b"\0" * 4 + values + data


def rgb_rows(width: int, height: int, colour=(200, 100, 50)) -> list[bytes]:
    return [bytes(colour) * width] * height


# --- 1. only the README's formats, whatever the name; no external program ------------------------


@pytest.fixture
def no_programs(monkeypatch):
    """Pretend Ghostscript is installed, and record any program a decoder starts."""
    started: list = []

    def record(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a decoder ran a program: {args}")

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")
    for name in ("check_call", "run", "Popen", "call", "check_output"):
        monkeypatch.setattr(subprocess, name, record)
    return started


def test_postscript_named_jpg_is_refused_and_ghostscript_never_runs(no_programs):
    error = refusal(EPS)
    assert (error.reason, error.detail) == (
        "unsupported_format",
        "EPS (by its signature; it starts with '%!PS-Adobe-3.0 E') is not one of the formats read (JPEG, PNG, GIF, TIFF, WebP, AVIF, BMP)",
    )
    assert no_programs == []


def test_an_eps_image_a_caller_opened_is_refused_at_decode(no_programs):
    image = Image.open(io.BytesIO(EPS))  # not through open_image: the decode still refuses it
    with pytest.raises(SampleError) as info:
        decode_rgb(image)
    assert info.value.reason == "unsupported_format" and info.value.detail.startswith("EPS is not one of")
    assert no_programs == []


def test_a_minimal_psd_is_not_decoded():
    """Photoshop's header: signature, version 1, 3 channels, 16 x 16, 8 bits, RGB; raw image data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3) + struct.pack(">III", 0, 0, 0)
    data = header + struct.pack(">H", 0) + bytes([200]) * (3 * 16 * 16)
    assert Image.open(io.BytesIO(data)).format == "PSD", "the file is one Pillow would decode"
    assert refusal(data).reason == "unsupported_format" and refusal(data).detail.startswith("PSD (by its signature")


@pytest.mark.parametrize(("head", "name"), [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),  # an iPhone photo, renamed .jpg
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n\x00\x00\x00\x14ftypjxl ", "JPEG XL"),
    (b"\xff\x0a\xfa\x7f\x01\x90\x08", "JPEG XL"),
])
def test_a_photo_format_pillow_does_not_know_is_named(head, name):
    """A file the record calls unreadable sends a lab looking for corruption: an iPhone's HEIC is a format not read."""
    error = refusal(head + bytes(64))
    assert error.reason == "unsupported_format"
    assert error.detail.startswith(f"{name} (by its signature; it starts with ")


def _writable_other_formats() -> list[str]:
    Image.init()
    return sorted(f for f in Image.SAVE if f not in FORMATS and f != "MPO")


@pytest.mark.parametrize("fmt", _writable_other_formats())
def test_no_other_format_pillow_writes_is_decoded(fmt, no_programs):
    mode = {"XBM": "1", "MSP": "1", "BLP": "P", "PALM": "L", "SPIDER": "L"}.get(fmt, "RGB")
    try:
        data = encode(Image.new("RGB", (16, 16), (200, 40, 40)).convert(mode), fmt)
    except Exception:
        pytest.skip(f"Pillow cannot write {fmt} here")
    error = refusal(data)
    assert error.reason in ("unsupported_format", "unreadable_image"), error
    assert no_programs == []


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "WEBP", "AVIF", "BMP", "MPO", "APNG"])
def test_every_readme_format_decodes_whatever_its_name(fmt):
    if fmt == "AVIF" and not features.check("avif"):
        pytest.skip("no AVIF in this Pillow")
    image = Image.new("RGB", (16, 16), (200, 40, 40))
    extra = {"save_all": True, "append_images": [Image.new("RGB", (16, 16), "blue")]} if fmt in ("MPO", "APNG") else {}
    data = encode(image, "PNG" if fmt == "APNG" else fmt, **({"quality": 95} if fmt in ("JPEG", "MPO", "WEBP", "AVIF") else {}), **extra)
    if fmt == "MPO":
        assert Image.open(io.BytesIO(data)).format == "MPO"
    assert np.abs(pixels(data) - (200, 40, 40)).max() <= 8


# --- 2. messages: what the bytes look like, the same on every run --------------------------------


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b"", "unreadable_image", "empty file (zero bytes)"),
        (b"<html><body>403 Forbidden</body></html>", "unreadable_image", "cannot identify an image format (starts with '<html><body>403 ')"),
        (b"\x00\x01\x02", "unreadable_image", "cannot identify an image format (starts with '\\x00\\x01\\x02')"),
        (b"GIF89a\x01", "unreadable_image",
         "cannot identify an image: a GIF signature, but no GIF header Pillow reads (starts with 'GIF89a\\x01')"),
    ],
    ids=["empty", "html", "binary", "broken_gif"],
)
def test_bad_bytes_say_what_they_look_like(raw, reason, detail):
    error = refusal(raw)
    assert (error.reason, error.detail) == (reason, detail)


def test_a_message_names_no_memory_address_so_two_runs_agree():
    bad = [b"<html>", b"\x89PNG\r\n\x1a\n" + b"junk" * 10, encode(Image.new("RGB", (64, 64), "red"), "PNG")[:-40], b"II*\0" + bytes(40)]
    first = [str(refusal(raw)) for raw in bad]
    assert first == [str(refusal(raw)) for raw in bad]
    assert not any("0x" in m or "BytesIO" in m for m in first), first


def test_an_unforeseen_errors_message_loses_its_address(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError(f"cannot use {object()}")

    monkeypatch.setattr("builders.resizer.decode_rgb", broken)
    error = refusal(encode(Image.new("RGB", (16, 16)), "PNG"))
    assert (error.reason, error.detail) == ("decoder_failed", "ValueError: cannot use <object>")


# --- 3. transparency is white in every mode -----------------------------------------------------


@pytest.mark.parametrize("key", [0, 1000, 32896])
def test_sixteen_bit_grey_transparency_is_white(key):
    opaque = 0 if key else 32896
    values = np.full((16, 16), key, dtype=">u2")
    values[:, 8:] = opaque
    values[0, 8] = key + 1  # one level off the key is opaque
    raw = png(16, 16, 16, 0, [r.tobytes() for r in values], before=[(b"tRNS", struct.pack(">H", key))])
    assert Image.open(io.BytesIO(raw)).mode in ("I;16", "I;16B", "I")
    out = pixels(raw)
    assert (out[:, :8] == 255).all()
    assert (out[1:, 8:] == round(opaque / 257)).all()
    assert (out[0, 8] == round((key + 1) / 257)).all()


def _sub_filtered(rows: list[bytes], step: int) -> bytes:
    """PNG rows under the Sub filter (each byte less the one ``step`` bytes left): a decoder that
    took another pixel width reads them wrong."""
    out = b""
    for row in rows:
        line = np.frombuffer(row, np.uint8).astype(np.int16)
        left = np.concatenate([np.zeros(step, np.int16), line[:-step]])
        out += b"\1" + ((line - left) % 256).astype(np.uint8).tobytes()
    return out


@pytest.mark.parametrize("filtered", [False, True], ids=["unfiltered", "sub-filtered"])
@pytest.mark.parametrize("key", [(1000, 2000, 3000), (0, 0, 255)])
def test_sixteen_bit_rgb_transparency_is_the_key_to_the_last_bit(key, filtered):
    """A 16-bit RGB PNG's tRNS names a 16-bit colour, and Pillow compared it with the 8-bit pixels
    it decodes: the key's own pixels showed, and full blue turned white under a near-black blue
    key. Only the key's pixels are white now; one level off it, or the same high bytes, is opaque."""
    near = (key[0], key[1], key[2] + 1)
    values = np.zeros((16, 16, 3), ">u2")
    values[:, :8] = key
    values[0::2, 8:] = (0, 0, 65535)
    values[1::2, 8:] = near
    rows = [r.tobytes() for r in values]
    raw = png(16, 16, 16, 2, rows, before=[(b"tRNS", struct.pack(">HHH", *key))], data=_sub_filtered(rows, 6) if filtered else None)
    assert Image.open(io.BytesIO(raw)).info["transparency"] == key
    out = pixels(raw)
    assert (out[:, :8] == 255).all()
    assert (out[0::2, 8:] == (0, 0, 255)).all()
    assert (out[1::2, 8:] == np.array(near) >> 8).all()


def test_a_sixteen_bit_rgb_png_without_trns_keeps_its_pixels_opaque():
    """The low bytes are read only for a PNG whose tRNS names a colour: one without a tRNS decodes
    to its high bytes, opaque (reading them for every 16-bit RGB PNG failed it on a key it has not)."""
    values = np.zeros((4, 4, 3), ">u2")
    values[:, :2] = (0x1234, 0xFF00, 0x00FF)
    values[:, 2:] = (65535, 65535, 65535)
    raw = png(4, 4, 16, 2, [r.tobytes() for r in values])
    assert "transparency" not in Image.open(io.BytesIO(raw)).info
    out = pixels(raw, 4)
    assert (out[:, :2] == (0x12, 0xFF, 0x00)).all() and (out[:, 2:] == 255).all()


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 90}], ids=["lossless", "lossy"])
def test_an_animated_webps_transparent_ground_is_white(options):
    """libwebp crops a frame to what it draws and flags no alpha: Pillow read the ground left
    uncovered as RGB black. It is transparent, as a browser shows it; an opaque WebP keeps its pixels."""
    sticker = np.zeros((16, 16, 4), np.uint8)
    sticker[:, 8:] = (30, 200, 30, 255)
    raw = encode(Image.fromarray(sticker, "RGBA"), "WEBP", save_all=True, append_images=[Image.new("RGBA", (16, 16), "black")], **options)
    assert Image.open(io.BytesIO(raw)).mode == "RGB"  # what Pillow says of it
    out = pixels(raw)
    assert (out[:, :7] == 255).all() and np.abs(out[:, 9:] - (30, 200, 30)).max() <= 4
    opaque = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)), "WEBP", **options)
    assert np.array_equal(pixels(opaque), np.asarray(Image.open(io.BytesIO(opaque)).convert("RGB"), np.int16))


def _on_canvas(gif: bytes, canvas: tuple[int, int], at: tuple[int, int]) -> bytes:
    """``gif``'s one frame drawn at ``at`` on a larger canvas (its screen descriptor and image
    descriptor rewritten), as an animation's first frame may be."""
    raw = bytearray(gif)
    raw[6:10] = struct.pack("<HH", *canvas)
    i = 13 + (3 << ((raw[10] & 7) + 1) if raw[10] & 0x80 else 0)
    while raw[i] == 0x21:  # extension blocks: introducer, label, sub-blocks
        i += 2
        while raw[i]:
            i += raw[i] + 1
        i += 1
    assert raw[i] == 0x2C
    raw[i + 1:i + 5] = struct.pack("<HH", *at)
    return bytes(raw)


@pytest.mark.parametrize("transparency", [None, 2], ids=["opaque_frame", "frame_with_transparent_index"])
def test_the_canvas_a_gifs_first_frame_leaves_uncovered_is_white(transparency):
    """A GIF's first frame may draw part of its canvas (later frames draw the rest): Pillow filled
    the rest with palette entry 0 (black here, as in many GIFs), where a browser shows it
    transparent. It is white now; the frame keeps its colours, and its transparent index."""
    frame = Image.new("P", (8, 8), 1)
    frame.putpalette([0, 0, 0, 30, 200, 30, 200, 30, 200] + [0] * 759)
    frame.paste(2, (0, 0, 8, 2))
    named = {} if transparency is None else {"transparency": transparency}
    raw = _on_canvas(encode(frame, "GIF", optimize=False, **named), (16, 16), (8, 4))
    assert Image.open(io.BytesIO(raw)).tile[0].extents == (8, 4, 16, 12)
    out = pixels(raw)
    assert (out[:, :8] == 255).all() and (out[:4] == 255).all() and (out[12:] == 255).all()
    assert (out[6:12, 8:] == (30, 200, 30)).all()
    assert (out[4:6, 8:] == (255 if transparency is not None else (200, 30, 200))).all()


def test_a_32_bit_bmps_fourth_byte_is_alpha_unless_it_is_all_zero():
    """Pillow saves RGBA as a BMP whose fourth byte the old header calls reserved, and read it back
    opaque: a cut-out's ground showed black. It is alpha, as browsers show it; a writer that left it
    zero everywhere meant no alpha, and the colours stay."""
    sticker = np.zeros((16, 16, 4), np.uint8)
    sticker[:, 8:] = (30, 200, 30, 255)
    sticker[:, :8, :3] = (10, 20, 30)
    raw = encode(Image.fromarray(sticker, "RGBA"), "BMP")
    assert Image.open(io.BytesIO(raw)).mode == "RGB"  # what Pillow says of it
    out = pixels(raw)
    assert (out[:, :8] == 255).all() and (out[:, 8:] == (30, 200, 30)).all()
    sticker[:, :, 3] = 0
    assert (pixels(encode(Image.fromarray(sticker, "RGBA"), "BMP")) == sticker[:, :, :3]).all()


def test_a_sixteen_bit_tiff_whose_zero_is_white_is_not_a_negative():
    """Pillow inverts a TIFF whose photometric interpretation says 0 is white at 1 to 8 bits, and
    opened a 16-bit one as plain grey: a scanner's or an X-ray's image came out a negative."""
    values = np.full((16, 16), 10000, "<u2")
    values[:, 8:] = 60000
    out = pixels(tiff(16, 16, [16], 0, values.tobytes()))
    assert (out[:, :8] == round((65535 - 10000) / 257)).all() and (out[:, 8:] == round((65535 - 60000) / 257)).all()
    eight = pixels(tiff(16, 16, [8], 0, (values // 257).astype(np.uint8).tobytes()))
    assert np.abs(out - eight).max() <= 1, "as Pillow shows the same picture at 8 bits"
    assert (pixels(tiff(16, 16, [16], 1, values.tobytes()))[:, :8] == round(10000 / 257)).all()


@pytest.mark.parametrize(("bits", "photometric", "tags", "order", "said"), [
    ([16, 16], 1, {"extra_samples": [2]}, "<", "grey pixels, 2 samples of 16-bit unsigned integer, 1 of them extra (alpha)"),
    ([32, 32, 32], 2, {"sample_format": [3, 3, 3]}, "<", "RGB pixels, 3 samples of 32-bit floating-point"),
    ([16], 1, {"sample_format": [3]}, "<", "grey pixels, 1 sample of 16-bit floating-point"),
    ([16], 0, {}, ">", "grey (0 is white) pixels, 1 sample of 16-bit unsigned integer"),
], ids=["grey_alpha_16", "rgb_float32", "grey_float16", "big_endian_zero_is_white_16"])
def test_a_tiff_whose_pixels_pillow_has_no_mode_for_says_what_they_are(bits, photometric, tags, order, said):
    """A scientist's float RGB or 16-bit grey-with-alpha TIFF is a valid file Pillow has no mode
    for: it was recorded as a broken one ("no TIFF header Pillow reads")."""
    data = bytes(16 * 16 * sum(bits) // 8)
    error = refusal(tiff(16, 16, bits, photometric, data, order, **tags))
    assert (error.reason, error.detail) == ("unsupported_mode", f"a TIFF of {said}: no pixel mode Pillow decodes; {SAVE_AS}")


@pytest.mark.parametrize(("marker", "bits"), [(0xC1, 12), (0xC0, 12), (0xC3, 16)], ids=["extended_12", "baseline_12", "lossless_16"])
def test_a_jpeg_of_more_than_8_bit_samples_says_so(marker, bits):
    """A medical or scientific camera's 12-bit JPEG (or a 16-bit lossless one) is a JPEG Pillow
    does not decode, not a broken file: it was recorded as "no JPEG header Pillow reads"."""
    raw = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    at = raw.index(b"\xff\xc0")
    raw[at + 1], raw[at + 4] = marker, bits
    error = refusal(bytes(raw))
    assert (error.reason, error.detail) == ("unsupported_mode", f"a JPEG of {bits}-bit samples: Pillow decodes 8-bit JPEGs only; {SAVE_AS}")


def test_a_grey_tiff_with_premultiplied_alpha_is_shown_on_white():
    """Grey with associated (premultiplied) alpha opens as Pillow's "La", which it converts to LA
    alone: the image was a ``decoder_failed`` skip. Over white, a premultiplied pixel shows as its
    value plus the white its alpha lets through."""
    grey = np.zeros((8, 8, 2), np.uint8)
    grey[:, :4] = (50, 100)
    raw = tiff(8, 8, [8, 8], 1, grey.tobytes(), extra_samples=[1])
    assert Image.open(io.BytesIO(raw)).mode == "La"
    out = pixels(raw, 8)
    assert np.abs(out[:, :4] - (50 + 255 - 100)).max() <= 1
    assert (out[:, 4:] == 255).all()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "I", "I;16", "I;16B"])
def test_every_mode_with_an_rgb_meaning_becomes_rgb(mode):
    """An image handed over in memory may be in any of Pillow's modes: RGBX (its fourth band
    padding) was refused as having no RGB meaning, and La raised Pillow's own error."""
    out = decode_rgb(Image.new(mode, (4, 4)), None)
    assert (out.mode, out.size) == ("RGB", (4, 4))


def test_rgbx_keeps_its_colours_and_drops_its_padding():
    assert decode_rgb(Image.new("RGBX", (4, 4), (10, 200, 30, 0)), None).getpixel((0, 0)) == (10, 200, 30)


def test_a_tiff_with_a_broken_header_is_still_unreadable():
    error = refusal(b"II*\0\x08\0\0\0\xff\xff")
    assert error.reason == "unreadable_image" and "a TIFF signature, but no TIFF header Pillow reads" in error.detail


# --- 4. ICC profiles become sRGB ----------------------------------------------------------------


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _curve(gamma: float | None = None, table: list[int] | None = None) -> bytes:
    if table is not None:
        return b"curv\0\0\0\0" + struct.pack(f">I{len(table)}H", len(table), *table)
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def icc_profile(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal ICC v2 display profile (a matrix/TRC RGB or a TRC grey one), built by hand."""
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", 5) + b"test\0" + bytes(79)), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), *tags]
    offset, table, body = 128 + 4 + 12 * len(tags), struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = (struct.pack(">I", offset + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntr" + space + b"XYZ " + bytes(12)
              + b"acsp" + b"APPL" + bytes(24) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    assert len(header) == 128
    return header + table + body


def rgb_profile(primaries, trc: bytes) -> bytes:
    (rx, ry, rz), (gx, gy, gz), (bx, by, bz) = primaries
    return icc_profile(b"RGB ", [(b"rXYZ", _xyz(rx, ry, rz)), (b"gXYZ", _xyz(gx, gy, gz)), (b"bXYZ", _xyz(bx, by, bz)),
                                 (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)])


#: Adobe RGB (1998)'s D50-adapted colorants and gamma 2.2, as its published profile holds them.
ADOBE_RGB = rgb_profile([(0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446)], _curve(2.2))
#: sRGB's colorants with its transfer curve as a 1024-point table, as sRGB IEC61966-2.1 holds them.
SRGB_TABLE = rgb_profile(
    [(0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)],
    _curve(table=[round(65535 * (v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4)) for v in np.linspace(0, 1, 1024)]),
)


def viewer(image: Image.Image, profile: bytes) -> np.ndarray:
    """What a colour-managed viewer shows: LittleCMS, perceptual intent, to sRGB."""
    shown = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), outputMode="RGB")
    return np.asarray(shown, dtype=np.int16)


def test_an_adobe_rgb_image_shows_its_srgb_colours():
    image = Image.new("RGB", (16, 16), (200, 100, 50))
    image.paste((30, 180, 90), (0, 8, 16, 16))
    out = pixels(encode(image, "PNG", icc_profile=ADOBE_RGB))
    assert (out == viewer(image, ADOBE_RGB)).all()
    assert out[0, 0].tolist() == [227, 100, 42]


def test_an_adobe_rgb_jpeg_shows_its_srgb_colours():
    raw = encode(Image.new("RGB", (16, 16), (200, 100, 50)), "JPEG", quality=100, icc_profile=ADOBE_RGB)
    stored = Image.open(io.BytesIO(raw)).convert("RGB")
    assert (pixels(raw) == viewer(stored, ADOBE_RGB)).all()


def test_transparency_stays_white_through_a_profile():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((200, 100, 50, 255), (0, 0, 16, 8))
    out = pixels(encode(rgba, "PNG", icc_profile=ADOBE_RGB))
    assert out[0, 0].tolist() == [227, 100, 42] and (out[9:] == 255).all()


def test_a_grey_profile_converts_grey_pixels():
    linear = icc_profile(b"GRAY", [(b"kTRC", _curve(1.0))])
    out = pixels(encode(Image.new("L", (16, 16), 50), "PNG", icc_profile=linear))
    assert (out == viewer(Image.new("L", (16, 16), 50), linear)).all()
    encoded = 255 * (1.055 * (50 / 255) ** (1 / 2.4) - 0.055)  # linear 50/255, sRGB-encoded: 123.0
    assert np.abs(out - encoded).max() <= 1


@pytest.mark.parametrize(
    ("mode", "profile"),
    [("RGB", b"not a profile at all"), ("RGB", ADOBE_RGB[:200]), ("L", ADOBE_RGB), ("CMYK", ADOBE_RGB)],
    ids=["garbage", "cut", "rgb_profile_on_grey", "rgb_profile_on_cmyk"],
)
def test_a_broken_or_unfitting_profile_is_ignored_and_the_pixels_kept(mode, profile):
    image = Image.new(mode, (16, 16), {"RGB": (200, 100, 50), "L": 90, "CMYK": (0, 50, 50, 0)}[mode])
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    assert (pixels(encode(image, fmt, icc_profile=profile)) == pixels(encode(image, fmt))).all()


def test_an_srgb_profile_changes_nothing():
    colours = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(colours)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for profile in (SRGB_TABLE, srgb):
        out = prepare_image(encode(image, "PNG", icc_profile=profile), 16, 0)
        assert out.tobytes() == image.tobytes()


def test_the_profile_is_applied_after_the_exif_orientation():
    image = Image.new("RGB", (16, 8), (200, 100, 50))
    image.paste((30, 180, 90), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = pixels(encode(image, "PNG", icc_profile=ADOBE_RGB, exif=exif), 8)
    assert (out == viewer(image.transpose(Image.Transpose.ROTATE_270).crop((0, 4, 8, 12)), ADOBE_RGB)).all()


XMP_ROTATED = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_an_orientation_in_xmp_alone_is_not_applied_as_browsers_do_not(fmt):
    """Pillow's ``getexif`` takes XMP's ``tiff:Orientation`` where EXIF has none, and rotated the
    picture; browsers read EXIF's orientation only (an editor that rotated the pixels may leave the
    XMP behind). EXIF's still wins, and is applied."""
    image = Image.new("RGB", (16, 8), (200, 100, 50))
    image.paste((30, 180, 90), (8, 0, 16, 8))
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP_ROTATED)
        options = {"pnginfo": info}
    else:
        options = {"xmp": XMP_ROTATED.encode(), "quality": 100} if fmt == "JPEG" else {"xmp": XMP_ROTATED.encode(), "lossless": True}
    raw = encode(image, fmt, **options)
    opened = Image.open(io.BytesIO(raw))
    assert opened.getexif().get(0x0112) == 6, "Pillow reads the XMP orientation: the case this test is about"
    assert open_image(raw).size == (16, 8) and decode_rgb(open_image(raw)).size == (16, 8)
    handed = Image.open(io.BytesIO(raw))  # a caller's image, decoded in place: its XMP packet is its own, and kept
    xmp = {key: handed.info[key] for key in image_decode.XMP_KEYS if key in handed.info}
    assert xmp, "Pillow reads the packet into info: the case this test is about"
    decode_rgb(handed)
    assert {key: handed.info[key] for key in image_decode.XMP_KEYS if key in handed.info} == xmp
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_rgb(open_image(encode(image, fmt, exif=exif, **options))).size == (8, 16)


@pytest.mark.parametrize("process_filter", ["error", "always", "ignore"])
def test_pillows_warnings_are_ruled_by_the_decoder_not_by_the_process(process_filter, monkeypatch):
    """An EXIF block cut short makes Pillow warn: under ``-W error`` the JPEG was refused as
    truncated (so one source built two datasets), under the default each printed a stderr line. The
    picture decodes the same under any filter, nothing escapes, and a bomb is refused under any."""
    image = Image.new("RGB", (16, 8), (200, 100, 50))
    exif = Image.Exif()
    exif[0x010E] = "a description of fifty bytes, cut short by a tool."
    cut = exif.tobytes()[:-20]
    for fmt, options in (("JPEG", {"quality": 100}), ("PNG", {}), ("WEBP", {"lossless": True})):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(process_filter)
            decoded = pixels(encode(image, fmt, exif=cut, **options))
        assert np.array_equal(decoded, pixels(encode(image, fmt, **options))), fmt
        assert [str(w.message) for w in caught] == [], fmt
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter(process_filter)
        assert refusal(encode(Image.new("RGB", (12, 12)), "PNG")).reason == "too_large"


@pytest.mark.parametrize(("pad", "managed"), [(100 << 10, True), (image_decode.MAX_PROFILE_BYTES, False)], ids=["large", "too_large"])
def test_a_large_profile_is_read_and_one_over_the_cap_ignored(pad, managed):
    """A private tag pads the profile: read (not cached) at 100 KB, ignored over the cap."""
    padded = icc_profile(b"RGB ", [(b"rXYZ", _xyz(0.6097, 0.3111, 0.0195)), (b"gXYZ", _xyz(0.2053, 0.6257, 0.0609)),
                                   (b"bXYZ", _xyz(0.1492, 0.0632, 0.7446)), (b"rTRC", _curve(2.2)), (b"gTRC", _curve(2.2)),
                                   (b"bTRC", _curve(2.2)), (b"zzzz", b"zzzz" + bytes(pad))])
    image = Image.new("RGB", (16, 16), (200, 100, 50))
    out = pixels(encode(image, "TIFF", icc_profile=padded))
    assert (out == (viewer(image, padded) if managed else np.asarray(image))).all()


def test_colour_management_is_deterministic():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    raw = encode(image, "PNG", icc_profile=ADOBE_RGB)
    image_decode._srgb_transform.cache_clear()
    first = prepare_image(raw, 32, 0).tobytes()
    assert first == prepare_image(raw, 32, 0).tobytes() and first == prepare_image(raw, 32, 0).tobytes()


# --- 5. metadata Pillow refuses does not cost the pixels ----------------------------------------


def _big_text() -> list[tuple[bytes, bytes]]:
    two_mb = zlib.compress(b"A" * (2 << 20), 9)
    return [(b"zTXt", b"Comment\0\0" + two_mb), (b"iTXt", b"workflow\0\1\0\0\0" + two_mb), (b"iCCP", b"big\0\0" + two_mb)]


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["zTXt", "iTXt", "iCCP"])
def test_metadata_inflating_past_max_text_chunk_is_dropped_not_the_pixels(which, where):
    limit = PngImagePlugin.MAX_TEXT_CHUNK
    raw = png(16, 16, 8, 2, rgb_rows(16, 16), **{where: [_big_text()[which], (b"tEXt", b"Title\0kept")]})
    image = load_pixels(raw)
    assert image.info.get("Title") == "kept" and "Comment" not in image.info and "workflow" not in image.info
    assert (pixels(raw) == (200, 100, 50)).all()
    assert PngImagePlugin.MAX_TEXT_CHUNK == limit, "Pillow's own limit is left as it was"


def test_text_past_max_text_memory_in_all_is_dropped_not_the_pixels(monkeypatch):
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 4 * PngImagePlugin.MAX_TEXT_CHUNK)  # read where it is used: 64 MB is slow
    one = zlib.compress(b"B" * (PngImagePlugin.MAX_TEXT_CHUNK - 16), 9)
    count = PngImagePlugin.MAX_TEXT_MEMORY // PngImagePlugin.MAX_TEXT_CHUNK + 2
    raw = png(16, 16, 8, 2, rgb_rows(16, 16), before=[(b"zTXt", b"k%d\0\0" % i + one) for i in range(count)])
    image = load_pixels(raw)
    assert 0 < len([k for k in image.info if k.startswith("k")]) < count
    assert (pixels(raw) == (200, 100, 50)).all()


class InflatedPastTheBudget(BaseException):
    """Not an ``Exception``: the decoder turns those into a skipped image, and this must stop the test."""


def test_thousands_of_profiles_inflating_to_a_megabyte_each_are_not_all_inflated(monkeypatch):
    """Pillow inflates every iCCP chunk (1 MB each here, 20 GB in all); past MAX_TEXT_MEMORY none is,
    neither by the screen that sizes them nor by Pillow."""
    one = (b"iCCP", b"icc\0\0" + zlib.compress(bytes(PngImagePlugin.MAX_TEXT_CHUNK), 9))
    raw = png(16, 16, 8, 2, rgb_rows(16, 16), before=[one] * 20_000)
    budget, inflated = 2 * PngImagePlugin.MAX_TEXT_MEMORY + 2 * PngImagePlugin.MAX_TEXT_CHUNK, [0]

    def counted(inflate):
        def inflating(*args, **kwargs):
            out = inflate(*args, **kwargs)
            inflated[0] += len(out) if isinstance(out, bytes) else out or 0
            if inflated[0] > budget:
                raise InflatedPastTheBudget(f"{inflated[0]} bytes inflated")
            return out
        return inflating

    monkeypatch.setattr(image_structure, "_inflated_size", counted(image_structure._inflated_size))
    monkeypatch.setattr(PngImagePlugin, "_safe_zlib_decompress", counted(PngImagePlugin._safe_zlib_decompress))
    assert (pixels(raw) == (200, 100, 50)).all()
    assert inflated[0] >= PngImagePlugin.MAX_TEXT_MEMORY, "the profiles below the limit are inflated as before"


def test_metadata_of_an_unknown_compression_method_is_dropped_not_the_pixels():
    raw = png(16, 16, 8, 2, rgb_rows(16, 16), before=[(b"zTXt", b"Comment\0\7xyz"), (b"iCCP", b"icc\0\7xyz")])
    assert (pixels(raw) == (200, 100, 50)).all()


def _bad_crc(raw: bytes, kind: bytes) -> bytes:
    """``raw`` with the CRC of its first ``kind`` chunk wrong."""
    at = raw.index(kind)
    end = at + 4 + struct.unpack(">I", raw[at - 4:at])[0]
    return raw[:end] + bytes([raw[end] ^ 0xFF]) + raw[end + 1:]


@pytest.mark.parametrize("kind", [b"tEXt", b"gAMA", b"iCCP", b"tRNS", b"acTL", b"fcTL"])
def test_a_metadata_chunk_failing_its_crc_is_dropped_not_the_pixels(kind):
    """libpng and browsers drop an ancillary chunk whose CRC fails and show the picture; Pillow
    refused the file as no PNG at all. A damaged profile is not applied."""
    if kind in (b"acTL", b"fcTL"):
        frames = [Image.new("RGB", (16, 16), (200, 100, 50)), Image.new("RGB", (16, 16), (0, 0, 200))]
        raw = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    else:
        before = [(b"tEXt", b"Title\0kept"), (b"gAMA", struct.pack(">I", 45455)), (b"tRNS", struct.pack(">HHH", 1, 2, 3))]
        raw = png(16, 16, 8, 2, rgb_rows(16, 16), before=before + [(b"iCCP", b"icc\0\0" + zlib.compress(ADOBE_RGB))] * (kind == b"iCCP"))
    assert (pixels(_bad_crc(raw, kind)) == (200, 100, 50)).all()


@pytest.mark.parametrize("kind", [b"IHDR", b"PLTE", b"IDAT"])
def test_an_image_chunk_failing_its_crc_is_a_damaged_file_said_so(kind):
    raw = png(16, 16, 8, 3, [bytes(16)] * 16, before=[(b"PLTE", bytes([200, 100, 50]))])
    error = refusal(_bad_crc(raw, kind))
    at = raw.index(kind) - 4
    assert (error.reason, error.detail) == ("unreadable_image", f"the PNG's {kind.decode()} chunk at byte {at} fails its CRC check: the file is damaged")


def test_a_png_whose_download_ended_in_zeros_is_damaged_not_garbage_rows():
    """A download cut short into a file of its full length (a client that allocates the file
    first) ends in zeros: Pillow never checks the image data's CRC, and zeros inflate to rows,
    so the picture was used with its lower part garbage. The image data's CRC says it is damaged."""
    rows = [bytes(np.random.default_rng(i).integers(0, 256, 48, dtype=np.uint8)) for i in range(16)]
    raw = png(16, 16, 8, 2, rows)
    cut = raw.index(b"IDAT") + 4 + (struct.unpack(">I", raw[raw.index(b"IDAT") - 4:raw.index(b"IDAT")])[0] // 2)
    error = refusal(raw[:cut] + bytes(len(raw) - cut))
    assert (error.reason, error.detail) == ("unreadable_image", f"the PNG's IDAT chunk at byte {raw.index(b'IDAT') - 4} fails its CRC check: the file is damaged")


def test_a_png_whose_download_ended_in_zeros_past_its_first_image_chunk_is_damaged():
    """Encoders split the image data into chunks (libpng's 8 KiB each): zeros from a cut download
    land in a later one, whose CRC is checked as the first one's is."""
    rows = np.random.default_rng(0).integers(0, 256, (16, 48), dtype=np.uint8)
    stream = zlib.compress(b"".join(b"\0" + r.tobytes() for r in rows))
    third = len(stream) // 3
    parts = [stream[:third], stream[third:2 * third], stream[2 * third:]]
    raw = png(16, 16, 8, 2, [], data=b"")
    head, tail = raw[:raw.index(b"IDAT") - 4], raw[raw.index(b"IEND") - 4:]
    whole = head + b"".join(chunk(b"IDAT", p) for p in parts) + tail
    assert np.array_equal(pixels(whole).reshape(16, 48), rows)
    last = whole.rindex(b"IDAT")
    error = refusal(whole[:last + 8] + bytes(len(whole) - last - 8))
    assert (error.reason, error.detail) == ("unreadable_image", f"the PNG's IDAT chunk at byte {last - 4} fails its CRC check: the file is damaged")


# --- 6. a PNG short of rows is truncated ---------------------------------------------------------


def test_a_png_with_fewer_rows_than_its_header_is_truncated():
    raw = png(96, 72, 8, 2, [b"\xff" * 288] * 36)
    error = refusal(raw)
    assert (error.reason, error.detail) == ("truncated_image", "PNG image data ends after 10404 of the 20808 bytes its header declares")


def test_an_interlaced_png_short_of_passes_is_truncated():
    declared = image_structure._png_raw_size(16, 16, 8, 0, 0, 0, 1)
    assert refusal(png(16, 16, 8, 0, [], interlace=1, data=bytes(declared - 40))).reason == "truncated_image"
    assert load_pixels(png(16, 16, 8, 0, [], interlace=1, data=bytes(declared))).size == (16, 16)


@pytest.mark.parametrize("depth,colour,width", [(8, 2, 96), (1, 0, 33), (16, 6, 5), (4, 3, 7)])
def test_a_complete_png_with_a_black_last_row_decodes(depth, colour, width):
    row_bytes = (width * depth * {0: 1, 2: 3, 3: 1, 6: 4}[colour] + 7) // 8
    before = [(b"PLTE", bytes(48))] if colour == 3 else []
    raw = png(width, 8, depth, colour, [b"\x55" * row_bytes] * 7 + [bytes(row_bytes)], before=before)
    assert load_pixels(raw).size == (width, 8)


def test_a_png_cut_inside_its_data_is_still_truncated():
    raw = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    assert refusal(raw[: len(raw) // 2]).reason == "truncated_image"


def test_a_png_cut_inside_its_image_datas_crc_is_pillows_to_call():
    """A CRC not all there is no CRC failing: the image data's check reads only a whole one, and a
    file cut two bytes into it (its rows all there, zlib's own checksum passed) decodes as Pillow
    decodes it, not refused as damaged."""
    rows = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    raw = png(16, 16, 8, 2, [r.tobytes() for r in rows])
    idat = raw.index(b"IDAT")
    cut = raw[:idat + 4 + struct.unpack(">I", raw[idat - 4:idat])[0] + 2]
    assert np.array_equal(pixels(cut), rows)


# --- 7. structure that costs time its size does not show ----------------------------------------


def test_a_png_of_more_chunks_than_the_cap_is_refused_quickly():
    flood = chunk(b"zzZz", b"") * (MAX_CHUNKS + 1)
    raw = png(16, 16, 8, 2, rgb_rows(16, 16), before=[])
    raw = raw[:33] + flood + raw[33:]
    error = refusal(raw)
    assert (error.reason, error.detail) == ("too_many_chunks", f"a PNG of more than {MAX_CHUNKS} chunks before its first image ends")


def test_a_million_empty_chunks_are_refused_before_pillow_reads_them():
    raw = png(16, 16, 8, 2, rgb_rows(16, 16))
    raw = raw[:33] + chunk(b"zzZz", b"") * 1_000_000 + raw[33:]
    with pillow_calls() as calls:
        assert refusal(raw).reason == "too_many_chunks"
    assert calls["open"] == 0


def test_chunks_below_the_cap_decode():
    raw = png(16, 16, 8, 2, rgb_rows(16, 16), before=[(b"zzZz", b"")] * 1000)
    assert (pixels(raw) == (200, 100, 50)).all()


def test_an_apng_of_many_frames_decodes_its_first():
    frames = [Image.new("RGB", (16, 16), (i, 0, 0)) for i in range(40)]
    assert (pixels(encode(frames[0], "PNG", save_all=True, append_images=frames[1:])) == 0).all()


def _jpeg() -> bytes:
    return encode(Image.new("RGB", (16, 16), (200, 40, 40)), "JPEG", quality=95)


@pytest.mark.parametrize(
    "insert",
    [
        b"\xff\xef\x00\x02" * (MAX_CHUNKS + 1),
        b"\xff\xfe\x00\x03c" * (MAX_CHUNKS + 1),
        b"\xff\xe0\x00\x02" + b"\x00" * (MAX_CHUNKS + 1),
        b"\xff" * (MAX_CHUNKS + 2),
    ],
    ids=["app15", "comments", "stray_bytes", "fill_bytes"],
)
def test_a_jpeg_header_of_more_steps_than_the_cap_is_refused(insert):
    raw = _jpeg()
    error = refusal(raw[:2] + insert + raw[2:])
    assert (error.reason, error.detail) == ("too_many_chunks", f"a JPEG of more than {MAX_CHUNKS} marker segments and stray bytes before its first scan")


def test_a_jpeg_with_a_few_hundred_segments_decodes():
    raw = _jpeg()
    assert np.abs(pixels(raw[:2] + b"\xff\xef\x00\x04ab" * 300 + raw[2:]) - (200, 40, 40)).max() <= 4


def _progressive() -> tuple[bytes, list[int]]:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    raw = encode(image, "JPEG", progressive=True, quality=80)
    starts, at = [], raw.find(b"\xff\xda")
    while at >= 0:
        starts.append(at)
        at = raw.find(b"\xff\xda", at + 2)
    return raw, starts


def test_a_jpeg_of_more_scans_than_the_cap_is_refused():
    raw, starts = _progressive()
    assert 5 <= len(starts) <= 20, "libjpeg's progression"
    last = raw[starts[-1]:-2]
    bomb = raw[:-2] + last * (MAX_JPEG_SCANS - len(starts) + 1) + raw[-2:]
    error = refusal(bomb)
    assert (error.reason, error.detail) == ("too_many_chunks", f"a JPEG of more than {MAX_JPEG_SCANS} scans")
    assert prepare_image(raw[:-2] + last * (MAX_JPEG_SCANS - len(starts)) + raw[-2:], 16, 0).size == (16, 16)


def test_what_follows_a_jpegs_end_is_not_counted_as_scans():
    """A Motion Photo is a JPEG with its video after the end of the image, an MPO a JPEG with its
    other pictures there: every 0xFFDA pair in those bytes was counted as a scan, and a phone's
    photo with 8 MB of video (about 125 pairs) was refused as a scan bomb. libjpeg stops at the
    end of the image, and so does the count."""
    trailer = b"\x00\x00\x00\x18ftypmp42" + b"\xff\xda\x00\x00" * (MAX_JPEG_SCANS + 1)
    assert np.abs(pixels(_jpeg() + trailer) - (200, 40, 40)).max() <= 4
    raw, starts = _progressive()
    assert prepare_image(raw + raw[starts[-1]:-2] * MAX_JPEG_SCANS, 16, 0).size == (16, 16)


def test_scans_behind_an_end_marker_inside_a_segment_are_counted():
    """The count reads a segment by its length, as libjpeg does, so an end marker's bytes inside a
    comment do not hide the scans after it; nor do segments by the thousand between scans."""
    raw, starts = _progressive()
    last = raw[starts[-1]:-2]
    error = refusal(raw[:-2] + b"\xff\xfe\x00\x04\xff\xd9" + last * (MAX_JPEG_SCANS - len(starts) + 1) + raw[-2:])
    assert (error.reason, error.detail) == ("too_many_chunks", f"a JPEG of more than {MAX_JPEG_SCANS} scans")
    error = refusal(raw[:-2] + b"\xff\xfe\x00\x02" * (MAX_CHUNKS + 1) + raw[-2:])
    assert (error.reason, error.detail) == ("too_many_chunks", f"a JPEG of more than {MAX_CHUNKS} marker segments after its first scan")


def test_restart_markers_and_fill_in_a_scan_are_not_marker_segments():
    """A camera's JPEG may restart its entropy coding every block (0xFFD0-0xFFD7 in the scan's data,
    more of them than MAX_CHUNKS in a large photo), and fill bytes (0xFF) may run before a marker:
    neither is a segment libjpeg walks, so neither refuses the photo nor hides its end marker."""
    raw = encode(Image.new("RGB", (2112, 2112), (200, 40, 40)), "JPEG", quality=90, subsampling=0, restart_marker_blocks=1)
    data = np.frombuffer(raw, np.uint8)
    assert np.count_nonzero((data[:-1] == 0xFF) & (data[1:] >= 0xD0) & (data[1:] <= 0xD7)) > MAX_CHUNKS
    assert np.abs(pixels(raw) - (200, 40, 40)).max() <= 4
    trailer = bytes(1 << 17) + b"\xff\xda\x00\x00" * (MAX_JPEG_SCANS + 1)
    assert np.abs(pixels(_jpeg()[:-2] + b"\xff\xff\xff\xd9" + trailer) - (200, 40, 40)).max() <= 4
    raw, starts = _progressive()  # fill right after a segment, before the next scan's marker: each scan still counted
    filled = (b"\xff\xfe\x00\x02\xff" + raw[starts[-1]:-2]) * (MAX_JPEG_SCANS - len(starts) + 1)
    error = refusal(raw[:-2] + filled + raw[-2:])
    assert (error.reason, error.detail) == ("too_many_chunks", f"a JPEG of more than {MAX_JPEG_SCANS} scans")


@pytest.mark.parametrize("at", [0, 1, 6, 4095, 4096, 4097, 12287, 12288, 28671, 28672])
def test_a_marker_is_found_wherever_the_search_blocks_cut(at):
    """The search reads blocks of 4 KiB, then 8, 16...: a marker whose 0xFF ends one block and whose
    second byte starts the next is found, and so is one that starts a block; a stuffed zero,
    fill and restart markers before it are passed over."""
    skipped = b"\xff\xd3\xff\x00\xff\xff"
    data = bytes(at - len(skipped)) + skipped if at >= len(skipped) else bytes(at)
    f = io.BytesIO(data + b"\xff\xd9" + bytes(40000))
    assert image_structure._next_marker(f, 0) == at
    assert image_structure._next_marker(io.BytesIO(data + b"\xff"), 0) is None


def _gif() -> tuple[bytes, int]:
    raw = encode(Image.new("P", (16, 16), 1), "GIF")
    flags = raw[10]
    return raw, 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)


@pytest.mark.parametrize(
    "block",
    [b"!\xf9\x04\x00\x00\x00\x00\x00", b"!\xfe\x01c\x00", b"\x07"],
    ids=["graphic_control", "comment", "stray_byte"],
)
def test_a_gif_of_more_blocks_than_the_cap_before_its_image_is_refused(block):
    raw, at = _gif()
    error = refusal(raw[:at] + block * (MAX_CHUNKS + 1) + raw[at:])
    assert (error.reason, error.detail) == ("too_many_chunks", f"a GIF of more than {MAX_CHUNKS} blocks before its first image")


def test_a_gif_comment_of_many_sub_blocks_is_refused_and_a_few_decode():
    raw, at = _gif()
    assert refusal(raw[:at] + b"!\xfe" + b"\x01c" * (MAX_CHUNKS + 1) + b"\0" + raw[at:]).reason == "too_many_chunks"
    assert load_pixels(raw[:at] + b"!\xfe" + b"\x01c" * 100 + b"\0" + raw[at:]).size == (16, 16)


def test_open_image_reads_a_stream_from_its_start_as_pillow_does():
    raw = encode(Image.new("RGB", (16, 16), (200, 100, 50)), "PNG")
    stream = io.BytesIO(raw)
    stream.seek(10)
    assert decode_rgb(open_image(stream)).getpixel((0, 0)) == (200, 100, 50)


def test_the_pixel_cap_admits_an_image_of_exactly_the_cap_and_refuses_one_pixel_more():
    """``max_pixels`` is the largest image decoded: width x height equal to it is read, one past it is refused from the header."""
    raw = encode(Image.new("RGB", (10, 10), (200, 100, 50)), "PNG")
    assert load_pixels(raw, max_pixels=100).size == (10, 10)
    with pytest.raises(SampleError) as info:
        load_pixels(raw, max_pixels=99)
    assert (info.value.reason, info.value.detail) == ("too_large", "10x10 pixels > the cap of 99")
    with pytest.raises(SampleError, match="too_large"):
        decode_rgb(open_image(raw), max_pixels=99)
