"""Decode whatever bytes a source holds into an 8-bit RGB image, or say why not.

Pillow's decoders fail with a zoo of exception types; every failure becomes one ``SampleError``
whose ``reason`` feeds a build's failure histogram. Opening and loading are separate steps so a
caller can ask a JPEG decoder for a smaller draft in between (see ``builders.resizer``). Reasons:

- ``unreadable_image``: no image in the bytes (an empty file, an HTML page saved as ``.jpg``), a
  header that cannot be read, or a decoder that gave up on the data;
- ``truncated_image``: the data ends before the pixels the header declares (a PNG whose image data
  holds fewer rows than its header says included);
- ``unsupported_format``: an image, but not one of :data:`FORMATS` (EPS, PSD, FITS, ...);
- ``too_large``: more pixels than the cap;
- ``too_many_chunks``: more structure than any real image has (PNG chunks, JPEG marker segments
  or progressive scans, GIF blocks, TIFF tags, strips, tiles and tag values), which costs time
  and memory the file's size does not show;
- ``unsupported_mode``: pixels that have no 8-bit RGB meaning here (float, LAB), or that Pillow has no
  mode for in a format read (a 12-bit JPEG, a TIFF of 16-bit grey with alpha or float RGB), named.

Only :data:`FORMATS` are decoded, whatever a file is called: Pillow knows forty formats, and some
run an external program (EPS: Ghostscript) or are attack surface nobody asked for. The messages
say what the bytes look like and hold nothing that differs between two runs (no memory address),
so two builds of the same input write the same tables.

Pixels cost memory that the file's size does not show: a 684 KB PNG can declare 13000 x 13000
pixels (2.8 GB decoded). Every decode here is refused, from the header alone, above ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS` unless the caller sets another), and Pillow's own decompression-bomb
warning is an error, never a full-size decode. Structure costs time the same way; it is bounded
before Pillow reads it (:mod:`implicit_concept.image_structure`).

Colours are what a colour-managed viewer shows: an embedded ICC profile is converted to sRGB
(LittleCMS, perceptual intent, the same as relative colorimetric for the matrix profiles of cameras
and phones); a profile that cannot be read, does not fit the pixels (an RGB profile on grey or
CMYK pixels, a grey one on grey pixels with alpha) or is over :data:`MAX_PROFILE_BYTES` is ignored
and the pixels kept. The same bytes give the same pixels (LittleCMS is pinned with Pillow).
"""
from __future__ import annotations

import functools
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, TiffImagePlugin, UnidentifiedImageError

from implicit_concept.image_structure import check_png_rows, screen_structure
from implicit_concept.sample_error import SampleError, error_text

#: Pixels decoded at most (after a JPEG draft), unless a caller sets another cap: 40 MP is a 4:3
#: photo of 7300 x 5500; an RGBA image of that size takes 160 MB per copy.
DEFAULT_MAX_PIXELS = 40_000_000
#: The largest cap a caller may set: above it Pillow warns of a decompression bomb.
PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

#: The formats decoded (Pillow's names), whatever the file is called: JPEG (a multi-picture
#: camera's MPO opens as one), PNG (and APNG), GIF, TIFF, WebP, AVIF and BMP. Every other is
#: ``unsupported_format``.
FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "AVIF", "BMP")
_DECODED = (*FORMATS, "MPO")
_READ = "JPEG, PNG, GIF, TIFF, WebP, AVIF, BMP"
#: An EXIF block read at most for its orientation: a JPEG's holds 64 KB (one APP1 segment), and a
#: PNG's or WebP's is a copy of one. Pillow unpacks a tag's values into Python objects (a PNG whose
#: eXIf holds 8 million orientations took 1.7 s and 200 MB), so a larger block is ignored.
MAX_EXIF_BYTES = 1 << 20

#: ICC profiles read at most: a camera's or a screen's takes a few KB, a printer's LUTs a few MB;
#: a larger one is ignored (parsing it is work, and attack surface, the pixels do not need).
MAX_PROFILE_BYTES = 4 << 20
#: Transforms of profiles up to this size are kept (16 at most) for the next image that has one.
_CACHED_PROFILE_BYTES = 64 << 10

_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def open_image(raw: bytes | BinaryIO | Image.Image) -> Image.Image:
    """Read the header of ``raw`` (pixels are decoded later, by :func:`decode_rgb` or :func:`load_pixels`)."""
    if isinstance(raw, Image.Image):
        return raw
    raw = _seekable(raw)
    head = raw.read(16)
    if not head:
        raise SampleError("unreadable_image", "empty file (zero bytes)")
    try:
        raw = screen_structure(raw, head)
        jpeg = head.startswith(b"\xff\xd8\xff")
        # A baseline JPEG decodes from a draft (an eighth of each side at most): check_pixels caps
        # what is decoded, so a 108 MP phone photo is not refused as a bomb at open.
        with _pillow_warnings(bombs="ignore" if jpeg else "error"):
            image = Image.open(raw, formats=FORMATS)
        if jpeg and image.info.get("progressive") and image.width * image.height > PILLOW_MAX_PIXELS:
            raise SampleError("too_large", f"a progressive JPEG of {image.width}x{image.height} pixels > {PILLOW_MAX_PIXELS}: "
                                           "libjpeg holds every coefficient of one, whatever the draft")
        if image.format == "WEBP" and getattr(image, "rawmode", None) == "RGBX":
            _keep_webp_alpha(image)
        if image.format == "BMP" and image.info.get("compression") == 0 and image.tile and image.tile[0].args[0] == "BGRX":
            _keep_bmp_alpha(image)
        return image
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleError("too_large", error_text(exc)) from exc
    except UnidentifiedImageError:
        raise SampleError(*_unidentified(head, raw)) from None
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error ...
        raise SampleError(_decode_reason(exc), error_text(exc)) from exc


def check_pixels(image: Image.Image, max_pixels: int) -> None:
    """Refuse, before any pixel is decoded, an image larger than ``max_pixels``."""
    width, height = image.size
    if width * height > max_pixels:
        raise SampleError("too_large", f"{width}x{height} pixels > the cap of {max_pixels}")


def load_pixels(raw: bytes | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and decode ``raw`` in its own mode (no conversion), within ``max_pixels``."""
    image = open_image(raw)
    check_pixels(image, max_pixels)
    _load(image)
    return image


def decode_rgb(image: Image.Image, max_pixels: int | None = DEFAULT_MAX_PIXELS, orient: bool = True) -> Image.Image:
    """Decode the pixels, apply the EXIF orientation and normalise the mode to 8-bit sRGB: the one
    rule for every image the toolkit reads (16-bit grey keeps its level, transparency is white, an
    ICC profile's colours become sRGB).

    ``max_pixels`` None: no cap, for an image already in memory (nothing left to decode).
    ``orient`` False: keep the stored pixel grid, for a shard whose boxes are drawn in it. An image
    already upright and 8-bit RGB without a profile is returned itself, not copied (a copy of a
    512 px image costs a tenth of its decode).
    """
    if max_pixels is not None:
        check_pixels(image, max_pixels)
    _load(image)
    with _pillow_warnings():
        return _to_rgb(_orient(image) if orient else image, _zero_is_white(image))


@contextmanager
def _pillow_warnings(bombs: str = "error") -> Iterator[None]:
    """Pillow's warnings ruled here, not by the process's filters: a decompression bomb's is
    ``bombs`` ("error": refused), every other one (a broken EXIF block, a truncated tag) is ignored.
    Under ``-W error`` a photo with a broken EXIF block was refused, so one source built two
    datasets; under the default each such photo printed a line to stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter(bombs, Image.DecompressionBombWarning)
        yield


def _seekable(raw: bytes | BinaryIO) -> BinaryIO:
    """``raw`` as a stream at its start (Pillow reads a stream from its start whatever its position)."""
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return io.BytesIO(raw)
    try:
        raw.seek(0)
    except (AttributeError, io.UnsupportedOperation):
        raw = io.BytesIO(raw.read())
    return raw


def _load(image: Image.Image) -> None:
    if getattr(image, "tile", None) and image.format not in _DECODED:
        raise SampleError("unsupported_format", _not_read(image.format))  # opened by a caller, not by open_image
    source = image.fp if image.format == "PNG" else None
    try:
        with _pillow_warnings():
            low = _low_bytes(image)
            drawn = _gif_frame(image)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleError("too_large", error_text(exc)) from exc
    except Exception as exc:
        raise SampleError(_decode_reason(exc), error_text(exc)) from exc
    if source is not None:
        check_png_rows(image, source)
    if low is not None:
        _clear_key(image, low)
    if drawn is not None:
        _clear_uncovered(image, drawn)
    if image.format == "BMP" and image.mode == "RGBA" and image.info.get("compression") == 0 and image.getextrema()[3] == (0, 0):
        image.putalpha(255)  # the reserved byte unused: opaque, as every viewer shows it


def _low_bytes(image: Image.Image) -> Image.Image | None:
    """The low byte of each sample of a 16-bit RGB PNG whose tRNS names a transparent colour
    (decoded before its pixels, from the same rows: rawmode ``RGB;16L``); None for any other image.

    Pillow decodes each sample's high byte and compared those 8-bit pixels with the 16-bit key:
    the key's own pixels showed, and others (bright blue for a near-black key) turned white."""
    tile = getattr(image, "tile", None)
    if image.format != "PNG" or image.mode != "RGB" or not isinstance(image.info.get("transparency"), tuple) or len(tile or ()) != 1:
        return None
    if tile[0].args not in ("RGB;16B", ("RGB;16B",)):
        return None
    image.fp.seek(0)
    low = Image.open(image.fp, formats=("PNG",))
    low.tile = [tile[0]._replace(args="RGB;16L")]
    low.load()
    return low


def _clear_key(image: Image.Image, low: Image.Image) -> None:
    """Make transparent, as libpng and browsers do, the pixels whose 16-bit colour (``image``'s
    high bytes, ``low``'s low ones) is the tRNS key."""
    key = image.info.pop("transparency")
    high, low_bytes = np.asarray(image), np.asarray(low)
    clear = np.ones(high.shape[:2], bool)
    for band, value in enumerate(key):
        clear &= (high[..., band] == value >> 8) & (low_bytes[..., band] == value & 0xFF)
    image.putalpha(Image.fromarray(np.where(clear, 0, 255).astype(np.uint8)))


def _gif_frame(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The box a GIF's first frame draws (read before its pixels, which drops the tile), when it
    leaves part of the canvas uncovered; None for any other image."""
    tile = getattr(image, "tile", None)
    if image.format != "GIF" or len(tile or ()) != 1 or tuple(tile[0].extents) == (0, 0, *image.size):
        return None
    return tuple(tile[0].extents)


def _clear_uncovered(image: Image.Image, drawn: tuple[int, int, int, int]) -> None:
    """Make transparent the canvas a GIF's first frame leaves uncovered, as browsers show it:
    Pillow filled it with palette entry 0 (whatever colour that is, black as often as not), unless
    the frame names a transparent index. Inside the frame, that index stays transparent."""
    shown = image.convert("RGBA").getchannel("A")
    alpha = Image.new("L", image.size, 0)
    alpha.paste(shown.crop(drawn), drawn[:2])
    image.info.pop("transparency", None)
    image.putalpha(alpha)


def _decode_reason(exc: Exception) -> str:
    return "truncated_image" if "truncated" in str(exc).lower() else "unreadable_image"


# --- what the bytes are, when Pillow finds no image ---------------------------------------------


def _unidentified(head: bytes, raw: BinaryIO) -> tuple[str, str]:
    """The reason and message for bytes no plugin of :data:`FORMATS` opens, from their first bytes
    (Pillow's signature tests, never another plugin's parser) and, for a format read, why its own
    plugin refused them: a 12-bit JPEG or a float TIFF is a variant not decoded, not a broken file."""
    starts = f"starts with {repr(bytes(head))[1:]}"
    found = _signature(head)
    if found is None:
        return "unreadable_image", f"cannot identify an image format ({starts})"
    if found in _DECODED:
        variant = _variant_not_read(found, raw)
        if variant is not None:
            return "unsupported_mode", variant
        return "unreadable_image", f"cannot identify an image: a {found} signature, but no {found} header Pillow reads ({starts})"
    return "unsupported_format", _not_read(f"{found} (by its signature; it {starts})")


#: What a TIFF's PhotometricInterpretation and SampleFormat values mean, for the message of a refusal.
_TIFF_PHOTOMETRIC = {0: "grey (0 is white)", 1: "grey", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr", 8: "CIE L*a*b*",
                     9: "ICC L*a*b*", 10: "ITU L*a*b*", 32844: "LogL", 32845: "LogLuv"}
_TIFF_SAMPLE_FORMAT = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 4: "untyped", 5: "complex integer",
                       6: "complex floating-point"}
#: Pillow's JPEG plugin's refusal of samples over 8 bits (a 12-bit JPEG, a 16-bit lossless one).
_JPEG_DEPTH = re.compile(r"cannot handle (\d+)-bit layers")
_SAVE_AS = "save the image as 8- or 16-bit RGB (PNG or TIFF) or as an 8-bit JPEG"


def _variant_not_read(found: str, f: BinaryIO) -> str | None:
    """What a file of a format read holds that Pillow has no mode for, in words, from the refusal of
    that format's own plugin: a JPEG of 12- or 16-bit samples (medical and scientific cameras), a
    TIFF of float RGB or 16-bit grey with alpha. None when the plugin refused it for anything else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow said what it had to when it refused the file
        try:
            f.seek(0)
            Image.OPEN[found][0](f)
            return None
        except SyntaxError as exc:
            said = str(exc)
        except Exception:
            return None
        depth = _JPEG_DEPTH.fullmatch(said) if found in ("JPEG", "MPO") else None
        if depth is not None:
            return f"a JPEG of {depth[1]}-bit samples: Pillow decodes 8-bit JPEGs only; {_SAVE_AS}"
        layout = _tiff_layout(f) if found == "TIFF" and said == "unknown pixel mode" else None
        return f"a TIFF of {layout}: no pixel mode Pillow decodes; {_SAVE_AS}" if layout is not None else None


def _tiff_layout(f: BinaryIO) -> str | None:
    """A TIFF's first image's pixel layout in words, from its tag directory; None if unreadable."""
    try:
        f.seek(0)
        header = f.read(8)
        header += f.read(8) if header[2] == 43 else b""  # a BigTIFF, by Pillow's test
        tags = TiffImagePlugin.ImageFileDirectory_v2(header)
        f.seek(tags.next)
        tags.load(f)
        photometric, bits = tags.get(262), tuple(tags.get(258, (1,)))
        formats, extra = set(tags.get(339, (1,))), tuple(tags.get(338, ()))
    except Exception:
        return None
    kind = _TIFF_PHOTOMETRIC.get(photometric, f"photometric interpretation {photometric}")
    depth = "/".join(str(b) for b in dict.fromkeys(bits))
    numbers = ", ".join(_TIFF_SAMPLE_FORMAT.get(v, f"sample format {v}") for v in sorted(formats))
    aside = f", {len(extra)} of them extra ({'alpha' if set(extra) & {1, 2} else 'not alpha'})" if extra else ""
    return f"{kind} pixels, {len(bits)} sample{'s' if len(bits) > 1 else ''} of {depth}-bit {numbers}{aside}"


#: HEIF brands of an ISO media file's ftyp box (iPhones save HEIC): no plugin of Pillow's knows them.
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs")
#: JPEG XL: a bare codestream, or its ISO media container.
_JPEG_XL = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def _signature(head: bytes) -> str | None:
    """The first format whose signature ``head`` carries, of every format Pillow knows, then the
    photo formats it does not (HEIC, JPEG XL): either is a format not read, not a broken image."""
    Image.init()
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(head):
                return name
        except Exception:  # a signature test given 16 bytes it did not expect
            continue
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIC"
    if head.startswith(_JPEG_XL):
        return "JPEG XL"
    return None


def _not_read(name: str | None) -> str:
    return f"{name or 'this format'} is not one of the formats read ({_READ})"


# --- pixels ------------------------------------------------------------------------------------


def _keep_webp_alpha(image: Image.Image) -> None:
    """Decode a WebP Pillow would read as RGB with its alpha: libwebp leaves the canvas transparent
    where an animation's first frame does not cover it, and an encoder crops each frame to what it
    draws without flagging alpha (a sticker on a transparent ground), so Pillow showed that ground
    black. A browser shows it transparent, so it becomes white here; an opaque WebP is unchanged."""
    image.rawmode = image._mode = "RGBA"


def _keep_bmp_alpha(image: Image.Image) -> None:
    """Decode a 32-bit BMP's fourth byte, which the old header calls reserved, as alpha: writers put
    it there (Pillow's own RGBA BMP), and browsers show it, unless it is zero everywhere (a writer
    that left it unused; :func:`_load` makes that image opaque)."""
    tile = image.tile[0]
    image.tile = [tile._replace(args=("BGRA", *tile.args[1:]))]
    image._mode = "RGBA"


#: Where Pillow keeps an XMP packet, whose ``tiff:Orientation`` its ``getexif`` takes when EXIF has none.
XMP_KEYS = ("XML:com.adobe.xmp", "xmp")


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as browsers do: an orientation in XMP alone is not applied (an
    editor that turned the pixels may leave it behind; browsers read EXIF's only). A broken EXIF
    block, or one over :data:`MAX_EXIF_BYTES`, only loses the hint, not the picture."""
    exif = image.info.get("exif")
    if isinstance(exif, (bytes, bytearray)) and len(exif) > MAX_EXIF_BYTES:
        return image
    xmp = {key: image.info.pop(key) for key in XMP_KEYS if key in image.info}
    try:
        # Read (and cached by Pillow, for exif_transpose) with the XMP packet out of sight.
        if image.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF raises anything from SyntaxError to struct.error
        return image
    finally:
        image.info.update(xmp)


def _zero_is_white(image: Image.Image) -> bool:
    """Whether ``image`` is a 16-bit TIFF whose PhotometricInterpretation says 0 is white: Pillow
    opens it as plain 16-bit grey, a negative of what it shows (its 1-8 bit ones it inverts)."""
    return image.format == "TIFF" and image.mode in _SIXTEEN_BIT and getattr(image, "tag_v2", {}).get(262) == 0


def _eight_bit(image: Image.Image, transparent: object = None, zero_is_white: bool = False) -> Image.Image:
    """16-bit (or 32-bit integer) grey to 8 bits: round(clip(v, 0, 65535) / 257), in integers
    (inverted when ``zero_is_white``); the value a PNG's tRNS makes transparent becomes white, as
    every other transparency does.

    The same values as the float formula, without float64 copies (8 bytes a pixel each). A copy,
    not a view: a mode "I" image's array is Pillow's own buffer, read-only.
    """
    pixels = np.array(image, dtype=np.int32)
    clear = pixels == transparent if isinstance(transparent, int) else None
    np.clip(pixels, 0, 65535, out=pixels)
    if zero_is_white:
        np.subtract(65535, pixels, out=pixels)
    pixels += 128
    pixels //= 257
    grey = pixels.astype(np.uint8)
    if clear is not None:
        grey[clear] = 255
    return Image.fromarray(grey)


def _to_rgb(image: Image.Image, zero_is_white: bool = False) -> Image.Image:
    """Normalise any pixel mode to 8-bit RGB, flattening transparency onto white and converting the
    colours of an ICC profile to sRGB (``zero_is_white``: see :func:`_zero_is_white`)."""
    profile = image.info.get("icc_profile")
    image = _flatten(image, zero_is_white)
    if isinstance(profile, bytes) and 0 < len(profile) <= MAX_PROFILE_BYTES and image.mode in ("L", "RGB", "CMYK"):
        image = _to_srgb(image, profile)
    return image if image.mode == "RGB" else image.convert("RGB")


def _flatten(image: Image.Image, zero_is_white: bool = False) -> Image.Image:
    """Any pixel mode as 8-bit L, RGB, CMYK or YCbCr, transparency flattened onto white."""
    if image.mode in _SIXTEEN_BIT:
        image = _eight_bit(image, image.info.get("transparency"), zero_is_white)
    if image.mode == "1":
        image = image.convert("L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "La":
        image = image.convert("LA")  # grey premultiplied by its alpha (a TIFF's associated alpha): Pillow converts it to LA alone
    if image.mode in ("LA", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBX":
        image = image.convert("RGB")  # the fourth band is padding
    if image.mode == "RGBA":
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image).convert("RGB")
    if image.mode in ("L", "RGB", "CMYK", "YCbCr"):
        return image
    kind = _MODE_NAMES.get(image.mode, "pixels")
    raise SampleError("unsupported_mode", f"{image.mode} ({kind}): no 8-bit RGB meaning here; save the image as 8- or 16-bit RGB")


#: What a mode with no RGB meaning here holds, for the message of its refusal.
_MODE_NAMES = {"F": "32-bit floating-point pixels", "LAB": "CIE L*a*b* pixels", "HSV": "hue, saturation, value pixels"}


def _to_srgb(image: Image.Image, profile: bytes) -> Image.Image:
    """``image``'s colours, in ``profile``'s space, as sRGB; ``image`` itself where the profile
    cannot be read, does not fit the mode, or changes nothing (sRGB's own)."""
    try:
        build = _srgb_transform if len(profile) <= _CACHED_PROFILE_BYTES else _srgb_transform.__wrapped__
        transform = build(profile, image.mode)
        return image if transform is None else ImageCms.applyTransform(image, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image


@functools.lru_cache(maxsize=16)
def _srgb_transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from ``profile`` to sRGB, perceptual intent, or None where it moves no colour of
    a 17-level grid more than one level from Pillow's own conversion: sRGB's profiles, in most
    photos, cost nothing. LittleCMS's one-pixel cache is off, so threads sharing a transform get
    the same pixels."""
    transform = ImageCms.buildTransform(
        ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB"), mode, "RGB",
        renderingIntent=ImageCms.Intent.PERCEPTUAL, flags=ImageCms.Flags.NOCACHE,
    )
    probe = _probe(mode)
    moved = np.abs(np.asarray(ImageCms.applyTransform(probe, transform), np.int16) - np.asarray(probe.convert("RGB"), np.int16))
    return transform if moved.max() > 1 else None


def _probe(mode: str) -> Image.Image:
    """A grid of colours of ``mode``, as one row of pixels."""
    levels = np.linspace(0, 255, 17).round().astype(np.uint8)
    bands = len(mode)  # L, RGB, CMYK
    grid = np.stack(np.meshgrid(*[levels] * bands, indexing="ij"), axis=-1).reshape(-1, bands)
    return Image.frombytes(mode, (len(grid), 1), grid.tobytes())
