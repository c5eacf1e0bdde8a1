"""The contract every concept renderer follows, and the small drawing and checking helpers they share.

A renderer draws onto a transparent canvas the size of the image and returns one layer per
instance, so compositing can measure each instance's tight box from the pixels it really drew.
Renderers build greyscale coverage masks first and colour them last (``paint``): rotating or
warping a mask never bleeds a transparent pixel's colour into the edge, as rotating RGBA would.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageStat

RGB = tuple[int, int, int]
K = TypeVar("K")


@dataclass
class Layer:
    """One instance: a full-canvas RGBA image (alpha 0 where nothing is drawn) and its parameters."""

    rgba: Image.Image
    params: dict[str, Any] = field(default_factory=dict)


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
