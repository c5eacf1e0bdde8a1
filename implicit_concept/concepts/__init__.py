"""The implicit concepts, each declared once, and ``make_renderer``, which turns recipe options into one.

A :class:`Concept` holds everything the project says about a concept: its id (shard labels,
detector class order), the word Geom-Erasing writes into captions, the phrase name-based baselines
use as a negative prompt, the colour boxes are drawn in, and its renderer. Adding a concept is one
entry in :data:`CONCEPTS` plus its renderer module.

Options are checked here, once, so a typo in a recipe fails before any shard is written, with a
message naming the concept and the field.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from implicit_concept.concepts.assets import AssetPool
from implicit_concept.concepts.qrcode import QRCodeConfig, QRCodeRenderer
from implicit_concept.concepts.renderer import Layer, Renderer
from implicit_concept.concepts.text import TextConfig, TextRenderer
from implicit_concept.concepts.watermark import WatermarkConfig, WatermarkRenderer
from implicit_concept.validate import check_fields


@dataclass(frozen=True)
class Concept:
    name: str
    #: How a caption says it (Geom-Erasing's concept name when ``concept_token`` is off).
    word: str
    #: How a prompt names it (the negative prompt of ``np``, the concept ESD, SLD and FMN erase).
    phrase: str
    #: The colour its boxes are drawn in on contact sheets and sample grids.
    colour: tuple[int, int, int]
    renderer: type[Renderer]


#: In detector class-id order.
CONCEPTS: tuple[Concept, ...] = (
    Concept("qrcode", word="qr code", phrase="QR code", colour=(255, 0, 255), renderer=QRCodeRenderer),
    Concept("watermark", word="watermark", phrase="watermark", colour=(0, 220, 255), renderer=WatermarkRenderer),
    Concept("text", word="text", phrase="text", colour=(255, 200, 0), renderer=TextRenderer),
)
CONCEPT_NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS)
_BY_NAME = {c.name: c for c in CONCEPTS}

__all__ = [
    "CONCEPTS", "CONCEPT_NAMES", "Concept", "Layer", "Renderer", "concept", "make_renderer", "make_config",
    "QRCodeConfig", "QRCodeRenderer", "TextConfig", "TextRenderer", "WatermarkConfig", "WatermarkRenderer",
]


def concept(name: str) -> Concept:
    """The concept called ``name``; ValueError lists the known ones."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown concept {name!r}, expected one of {list(CONCEPT_NAMES)}")
    return _BY_NAME[name]


def _freeze(value: Any) -> Any:
    """Lists (as YAML and JSON give them) become tuples, the configs' sequence type."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def make_config(name: str, options: Mapping[str, Any] | None) -> Any:
    """The validated config of concept ``name``; ValueError names ``concepts.<name>.<field>``."""
    if name not in _BY_NAME:
        raise ValueError(f"concepts: unknown concept {name!r}, expected one of {list(CONCEPT_NAMES)}")
    config_type = _BY_NAME[name].renderer.config_type
    options = dict(options or {})
    check_fields(options, [f.name for f in fields(config_type)], f"concepts.{name}")
    try:
        return config_type(**{k: _freeze(v) for k, v in options.items()})
    except ValueError as err:
        raise ValueError(f"concepts.{name}.{err}") from None


def make_renderer(name: str, options: Mapping[str, Any] | None, split: str, system_fonts: bool = False) -> Renderer:
    """A renderer of concept ``name`` drawing only from ``split``'s assets."""
    config = make_config(name, options)
    return _BY_NAME[name].renderer(config, AssetPool.for_split(split, system_fonts))
