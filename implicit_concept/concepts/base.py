"""The contract every concept renderer follows.

A renderer draws onto a transparent canvas the size of the image and returns one layer per
instance, so compositing can measure each instance's tight box from the pixels it really drew.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Layer:
    """One instance: a full-canvas RGBA image (alpha 0 where nothing is drawn) and its parameters."""

    rgba: Image.Image
    params: dict[str, Any] = field(default_factory=dict)


class Renderer(ABC):
    """Draws instances of one concept; pure function of (config, assets, rng, size)."""

    name: str

    @abstractmethod
    def render(self, rng: np.random.Generator, size: tuple[int, int]) -> list[Layer]:
        """Return the layers of one contamination event (several for a tiled watermark)."""
