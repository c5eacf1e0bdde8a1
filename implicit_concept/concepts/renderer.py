"""The contract every concept renderer follows, and the small drawing and checking helpers they share.

A renderer draws onto a transparent canvas the size of the image and returns one layer per
instance, so compositing can measure each instance's tight box from the pixels it really drew.
Renderers build greyscale coverage masks first and colour them last (``paint``): rotating or
warping a mask never bleeds a transparent pixel's colour into the edge, as rotating RGBA would.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageStat

RGB = tuple[int, int, int]
K = TypeVar("K")


class Layer:
    """One instance: an RGBA patch placed on the canvas (alpha 0 where nothing is drawn) and its
    parameters. ``rgba`` is the full-canvas view; compositing works on the patch alone
    (:meth:`visible_patch`), so an instance costs its own area, not the canvas's."""

    def __init__(self, rgba: Image.Image, params: dict[str, Any] | None = None) -> None:
        self.patch = rgba
        self.params = {} if params is None else params
        self.xy = (0, 0)
        self.canvas = rgba.size
        self._full: Image.Image | None = None

    @classmethod
    def placed(cls, patch: Image.Image, size: tuple[int, int], xy: tuple[int, int], params: dict[str, Any]) -> "Layer":
        """``patch`` at ``xy`` on a canvas of ``size``; what overhangs the canvas is clipped."""
        layer = cls(patch, params)
        layer.xy, layer.canvas = (int(xy[0]), int(xy[1])), (int(size[0]), int(size[1]))
        return layer

    def with_params(self, params: dict[str, Any]) -> "Layer":
        """The same pixels, in the same place, with other parameters."""
        return Layer.placed(self.patch, self.canvas, self.xy, params)

    @property
    def rgba(self) -> Image.Image:
        """The full-canvas RGBA image (the patch itself when it already is one)."""
        if self.xy == (0, 0) and self.patch.size == self.canvas:
            return self.patch
        if self._full is None:
            self._full = full_canvas(self.patch, self.canvas, self.xy)
        return self._full

    def visible_patch(self) -> tuple[tuple[int, int, int, int], Image.Image] | None:
        """``(box, crop)``: the patch's pixels of non-zero alpha on the canvas, as the canvas box
        ``(x1, y1, x2, y2)`` (x2/y2 exclusive) and the RGBA crop it holds; None when none shows."""
        (x, y), (W, H), (w, h) = self.xy, self.canvas, self.patch.size
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 >= x2 or y1 >= y2:
            return None
        clip = self.patch if (x1 - x, y1 - y, x2 - x, y2 - y) == (0, 0, w, h) else self.patch.crop((x1 - x, y1 - y, x2 - x, y2 - y))
        bbox = clip.getchannel("A").getbbox()
        if bbox is None:
            return None
        return (x1 + bbox[0], y1 + bbox[1], x1 + bbox[2], y1 + bbox[3]), clip.crop(bbox)


class Renderer(ABC):
    """Draws instances of one concept; pure function of (config, assets, rng, size, background)."""

    name: str

    @abstractmethod
    def render(
        self,
        rng: np.random.Generator,
        size: tuple[int, int],
        background: Image.Image | None = None,
    ) -> list[Layer]:
        """Return the layers of one contamination event (several for a tiled watermark).

        ``background`` is the image the layers will be composited onto, when known; renderers
        use it only to pick colours that contrast with what lies underneath.
        """


def paint(masks: Sequence[tuple[Image.Image, RGB]], opacity: float = 1.0) -> Image.Image:
    """Stack same-size coverage masks, bottom first, each in one colour, into an RGBA patch."""
    patch = Image.new("RGBA", masks[0][0].size, (0, 0, 0, 0))
    for mask, colour in masks:
        ink = Image.new("RGBA", mask.size, (*colour, 0))
        ink.putalpha(mask)
        patch = Image.alpha_composite(patch, ink)
    if opacity < 1.0:
        patch.putalpha(patch.getchannel("A").point(lambda a: round(a * opacity)))
    return patch


def full_canvas(patch: Image.Image, size: tuple[int, int], xy: tuple[int, int]) -> Image.Image:
    """Place an RGBA patch at ``xy`` on a transparent canvas of ``size``; overhang is clipped."""
    canvas = Image.new("RGBA", size, (0, 0, 0, 0))
    canvas.paste(patch, xy)
    return canvas


def luminance(background: Image.Image | None, box: Sequence[int] | None = None) -> float | None:
    """Mean luma (0..1) of ``background`` inside ``box``, or None when there is no background."""
    if background is None:
        return None
    region = background if box is None else background.crop(tuple(box))
    return ImageStat.Stat(region.convert("L")).mean[0] / 255.0


def choose(rng: np.random.Generator, weights: Mapping[K, float]) -> K:
    """Draw one key of ``weights`` with probability proportional to its weight."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """One draw from U(lo, hi) for a validated ``(lo, hi)`` pair."""
    return float(rng.uniform(bounds[0], bounds[1]))
