"""Decode whatever bytes a source holds into an 8-bit RGB image, or say why not.

Pillow's decoders fail with a zoo of exception types; every failure becomes one ``SampleError``
whose ``reason`` feeds a build's failure histogram. Opening and loading are separate steps so a
caller can ask a JPEG decoder for a smaller draft in between (see ``builders.resizer``).

Pixels cost memory that the file's size does not show: a 684 KB PNG can declare 13000 x 13000
pixels (2.8 GB decoded). Every decode here is refused, from the header alone, above ``max_pixels``
(:data:`DEFAULT_MAX_PIXELS` unless the caller sets another), and Pillow's own decompression-bomb
warning is an error, never a full-size decode.
"""
from __future__ import annotations

import io
import warnings
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

#: Pixels decoded at most (after a JPEG draft), unless a caller sets another cap: 40 MP is a 4:3
#: photo of 7300 x 5500; an RGBA image of that size takes 160 MB per copy.
DEFAULT_MAX_PIXELS = 40_000_000
#: The largest cap a caller may set: above it Pillow warns of a decompression bomb.
PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class SampleError(Exception):
    """A sample cannot be used; ``reason`` is the snake_case key counted in failure histograms."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(raw: bytes | BinaryIO | Image.Image) -> Image.Image:
    """Read the header of ``raw`` (pixels are decoded later, by :func:`decode_rgb` or :func:`load_pixels`)."""
    if isinstance(raw, Image.Image):
        return raw
    if isinstance(raw, (bytes, bytearray)):
        if not raw:
            raise SampleError("unreadable_image", "zero bytes")
        raw = io.BytesIO(raw)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(raw)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleError("too_large", str(exc)) from exc
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error ...
        raise SampleError(_decode_reason(exc), str(exc)) from exc


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
    """Decode the pixels, apply the EXIF orientation and normalise the mode to 8-bit RGB: the one
    rule for every image the toolkit reads (16-bit grey keeps its level, transparency is white).

    ``max_pixels`` None: no cap, for an image already in memory (nothing left to decode).
    ``orient`` False: keep the stored pixel grid, for a shard whose boxes are drawn in it. An image
    already upright and 8-bit RGB is returned itself, not copied (a copy of a 512 px image costs
    a tenth of its decode).
    """
    if max_pixels is not None:
        check_pixels(image, max_pixels)
    _load(image)
    return _to_rgb(_orient(image) if orient else image)


def _load(image: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleError("too_large", str(exc)) from exc
    except Exception as exc:
        raise SampleError(_decode_reason(exc), str(exc)) from exc


def _decode_reason(exc: Exception) -> str:
    return "truncated_image" if "truncated" in str(exc).lower() else "unreadable_image"


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block only loses the hint, not the picture."""
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) not in range(2, 9):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF raises anything from SyntaxError to struct.error
        return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grey to 8 bits: round(clip(v, 0, 65535) / 257), in integers.

    The same values as the float formula, without float64 copies (8 bytes a pixel each). A copy,
    not a view: a mode "I" image's array is Pillow's own buffer, read-only.
    """
    pixels = np.array(image, dtype=np.int32)
    np.clip(pixels, 0, 65535, out=pixels)
    pixels += 128
    pixels //= 257
    return Image.fromarray(pixels.astype(np.uint8))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any pixel mode to 8-bit RGB, flattening transparency onto white."""
    if image.mode in _SIXTEEN_BIT:
        image = _eight_bit(image)
    if image.mode == "1":
        image = image.convert("L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image).convert("RGB")
    if image.mode == "RGB":
        return image
    if image.mode in ("L", "CMYK", "YCbCr"):
        return image.convert("RGB")
    raise SampleError("unsupported_mode", image.mode)
