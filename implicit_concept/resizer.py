"""Turn whatever a source holds into a square RGB image of a fixed size, or say why not.

This is img2dataset's "resizer" stage: decode, apply EXIF orientation, normalise the pixel mode,
resize the shorter side to ``size`` and centre-crop. Pillow decoders fail with a zoo of exception
types; every failure becomes one ``SampleError`` whose ``reason`` feeds the failure histogram.
The filter is fixed and ``reducing_gap`` is off, so the same bytes always give the same pixels.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from implicit_concept.errors import SampleError

__all__ = ["SampleError", "prepare_image"]

RESAMPLE = Image.Resampling.LANCZOS
_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def prepare_image(raw: bytes | Image.Image, size: int, min_side: int) -> Image.Image:
    """Decode ``raw`` and return an RGB ``size`` x ``size`` centre crop.

    Raises ``SampleError`` with reason ``unreadable_image``, ``truncated_image``, ``too_large``,
    ``unsupported_mode`` or ``too_small`` (shorter side below ``min_side``).
    """
    image = _open(raw)
    if min(image.size) < min_side:
        raise SampleError("too_small", f"{image.size[0]}x{image.size[1]} < {min_side}")
    if image is not raw and image.format == "JPEG":
        # DCT-domain downscaling: several times faster on photos, and still deterministic.
        image.draft(None, (size, size))
    _load(image)
    image = _to_rgb(_orient(image))
    return _square(image, size)


def _open(raw: bytes | Image.Image) -> Image.Image:
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


def _load(image: Image.Image) -> None:
    try:
        image.load()
    except Exception as exc:
        raise SampleError(_decode_reason(exc), str(exc)) from exc


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


def _square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop, in one resampling pass."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), RESAMPLE, box=box, reducing_gap=None)
