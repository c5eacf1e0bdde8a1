"""img2dataset's "resizer" stage: a decoded image becomes a square RGB image of a fixed size.

Decoding (and why it fails) lives in :mod:`implicit_concept.image_decode`; this stage checks the
minimum side, lets JPEG (and MPO) decode a smaller draft, refuses more pixels than the cap (from the header,
before decoding), resizes the shorter side to ``size`` and
centre-crops. The filter is fixed and ``reducing_gap`` is off, so the same bytes always give the
same pixels. The image it returns holds pixels alone: Pillow copies a source's metadata through
every conversion and resize, and its JPEG writer writes a comment it finds there, so a photo's
comment (a camera's, a lab's note) was copied into every shard made from it.

One image must never stop a build: an exception nobody foresaw (a Pillow plugin's or numpy's, on a
mode or a header this code has not met) becomes a ``SampleError`` (``decoder_failed``) naming its
type, so the item is a counted skip. ``MemoryError`` is not caught: it says nothing about the item.
"""
from __future__ import annotations

from PIL import Image

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS, decode_rgb, open_image
from implicit_concept.sample_error import SampleError, error_text

__all__ = ["SampleError", "prepare_image"]

RESAMPLE = Image.Resampling.LANCZOS


def prepare_image(raw: bytes | Image.Image, size: int, min_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``raw`` and return an RGB ``size`` x ``size`` centre crop.

    Raises ``SampleError`` with reason ``unreadable_image``, ``truncated_image``,
    ``unsupported_format`` (not JPEG, PNG, GIF, TIFF, WebP, AVIF or BMP, whatever the file's name),
    ``too_large`` (more than ``max_pixels`` to decode; an image already in memory is not capped),
    ``too_many_chunks`` (more PNG chunks, JPEG segments or scans, GIF blocks, TIFF strips, tiles or
    tag values than a real image has),
    ``unsupported_mode``, ``too_small`` (shorter side below ``min_side``) or ``decoder_failed``
    (anything else raised on the way); :mod:`implicit_concept.image_decode` says when each is given.
    """
    try:
        return _prepare(raw, size, min_side, max_pixels)
    except (SampleError, MemoryError):
        raise
    except Exception as exc:
        raise SampleError("decoder_failed", f"{type(exc).__name__}: {error_text(exc)}") from exc


def _prepare(raw: bytes | Image.Image, size: int, min_side: int, max_pixels: int) -> Image.Image:
    image = open_image(raw)
    if min(image.size) < min_side:
        raise SampleError("too_small", f"{image.size[0]}x{image.size[1]} < {min_side}")
    if image is not raw and image.format in ("JPEG", "MPO"):
        # DCT-domain downscaling: several times faster on photos, and still deterministic. A phone's
        # JPEG with a depth map or a second picture (an MPF segment) opens as MPO: the same first picture.
        image.draft(None, (size, size))
    rgb = decode_rgb(image, None if image is raw else max_pixels)
    # Already square at size, and decoded here: the resize would only copy it.
    prepared = rgb if rgb is not raw and rgb.size == (size, size) else _square(rgb, size)
    prepared.info = {}  # a new image, or one opened here: none of the source's metadata is written out
    return prepared


def _square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop, in one resampling pass."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((size, size), RESAMPLE, box=box, reducing_gap=None)
