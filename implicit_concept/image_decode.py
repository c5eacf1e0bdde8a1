"""Decode whatever bytes a source holds into an 8-bit RGB image, or say why not.

Pillow's decoders fail with a zoo of exception types; every failure becomes one ``SampleError``
whose ``reason`` feeds a build's failure histogram. Opening and loading are separate steps so a
caller can ask a JPEG decoder for a smaller draft in between (see ``builders.resizer``).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class SampleError(Exception):
    """A sample cannot be used; ``reason`` is the snake_case key counted in failure histograms."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_image(raw: bytes | Image.Image) -> Image.Image:
    """Read the header of ``raw`` (pixels are decoded later, by :func:`decode_rgb`)."""
    if isinstance(raw, Image.Image):
        return raw
    if not raw:
        raise SampleError("unreadable_image", "zero bytes")
    try:
        return Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as exc:
        raise SampleError("too_large", str(exc)) from exc
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error ...
        raise SampleError(_decode_reason(exc), str(exc)) from exc


def decode_rgb(image: Image.Image) -> Image.Image:
    """Decode the pixels, apply the EXIF orientation and normalise the mode to 8-bit RGB."""
    try:
        image.load()
    except Exception as exc:
        raise SampleError(_decode_reason(exc), str(exc)) from exc
    return _to_rgb(_orient(image))


def _decode_reason(exc: Exception) -> str:
    return "truncated_image" if "truncated" in str(exc).lower() else "unreadable_image"


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block only loses the hint, not the picture."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF raises anything from SyntaxError to struct.error
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Normalise any pixel mode to 8-bit RGB, flattening transparency onto white."""
    if image.mode in _SIXTEEN_BIT:
        pixels = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(pixels, 0, 65535) / 257.0).astype(np.uint8))
    if image.mode == "1":
        image = image.convert("L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image).convert("RGB")
    if image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        return image.convert("RGB")
    raise SampleError("unsupported_mode", image.mode)
