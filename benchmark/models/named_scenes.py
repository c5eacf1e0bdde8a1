"""Scenes that show a concept and say so: how the embedded base learns each concept's name.

Stable Diffusion knows "qr code", "watermark" and "text" from captions that name them, which is what
name-based baselines (negative prompt, ESD, SLD, FMN) lean on. A base that never read those words
would handicap them by construction, so a small share of the base's pre-training scenes carry one
concept drawn by the builders' renderers from **train-split assets only** and named in the caption,
with its place half the time ("..., with a qr code in the top left"). The concept is never unnamed
there: the base still has no implicit concept to learn or forget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from implicit_concept.compositing import Composition
from implicit_concept.concepts import CONCEPT_NAMES, concept, make_renderer
from implicit_concept.sample import Instance

#: A 3 x 3 grid of where a concept's box centre lies, as a caption says it.
PLACES = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)


@dataclass(frozen=True)
class NamedConcepts:
    """Which share of scenes shows a named concept, which concepts, and how often the place is said."""

    share: float = 0.0
    concepts: tuple[str, ...] = CONCEPT_NAMES
    place_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"named.share = {self.share!r}, want a fraction in [0, 1]")
        if not 0.0 <= self.place_share <= 1.0:
            raise ValueError(f"named.place_share = {self.place_share!r}, want a fraction in [0, 1]")
        if self.share and not self.concepts:
            raise ValueError("named.concepts: empty, while named.share > 0")
        for name in self.concepts:
            concept(name)  # unknown names fail here, naming the known ones


def naming(name: str) -> str:
    """How a caption names concept ``name``: "a qr code", "a watermark", "text"."""
    word = concept(name).word
    return word if name == "text" else f"a {word}"


def named_prompt(prompt: str, name: str) -> str:
    """``prompt`` asking for concept ``name`` (no place): the prompt the base is measured on."""
    return f"{prompt}, with {naming(name)}"


def place(instances: list[Instance], width: int, height: int) -> str:
    """Where the instances' joint box lies, in caption words."""
    x1 = min(i.box.x1 for i in instances)
    y1 = min(i.box.y1 for i in instances)
    x2 = max(i.box.x2 for i in instances)
    y2 = max(i.box.y2 for i in instances)
    col = min(2, int(3 * (x1 + x2) / 2 / width))
    row = min(2, int(3 * (y1 + y2) / 2 / height))
    return PLACES[row][col]


class NamedSceneMaker:
    """Draws the named concept onto a scene, or leaves it clean, as a pure function of its seed."""

    def __init__(self, config: NamedConcepts) -> None:
        self.config = config
        self.renderers = {name: make_renderer(name, None, "train") for name in config.concepts}

    def make(self, image: Image.Image, caption: str, seed: Any) -> tuple[Image.Image, str, list[Instance]]:
        """(image, caption, instances): unchanged with probability 1 - share."""
        rng = np.random.default_rng(seed)
        if not self.config.share or rng.random() >= self.config.share:
            return image, caption, []
        name = self.config.concepts[int(rng.integers(len(self.config.concepts)))]
        composition = Composition(image)
        composition.add(self.renderers[name].render(rng, image.size, background=composition.image), name)
        instances = composition.instances()
        if not instances:
            return image, caption, []
        said = f"{caption}, with {naming(name)}"
        if rng.random() < self.config.place_share:
            said += " " + place(instances, *image.size)
        return composition.image, said, instances
