"""The concept renderers by name, and ``make_renderer``, which turns recipe options into one.

Options are checked here, once, so a typo in a recipe fails before any shard is written, with a
message naming the concept and the field.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from implicit_concept.concepts.assets import AssetPool
from implicit_concept.sample import CONCEPT_NAMES
from implicit_concept.concepts.renderer import Layer, Renderer
from implicit_concept.concepts.qrcode import QRCodeConfig, QRCodeRenderer
from implicit_concept.concepts.text import TextConfig, TextRenderer
from implicit_concept.concepts.watermark import WatermarkConfig, WatermarkRenderer
from implicit_concept.validate import check_fields

RENDERERS: dict[str, type[Renderer]] = {
    "qrcode": QRCodeRenderer,
    "watermark": WatermarkRenderer,
    "text": TextRenderer,
}
assert tuple(RENDERERS) == CONCEPT_NAMES

__all__ = [
    "RENDERERS", "Layer", "Renderer", "make_renderer", "make_config",
    "QRCodeConfig", "QRCodeRenderer", "TextConfig", "TextRenderer", "WatermarkConfig", "WatermarkRenderer",
]


def _freeze(value: Any) -> Any:
    """Lists (as YAML and JSON give them) become tuples, the configs' sequence type."""
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def make_config(name: str, options: Mapping[str, Any] | None) -> Any:
    """The validated config of concept ``name``; ValueError names ``concepts.<name>.<field>``."""
    if name not in RENDERERS:
        raise ValueError(f"concepts: unknown concept {name!r}, expected one of {list(RENDERERS)}")
    config_type = RENDERERS[name].config_type
    options = dict(options or {})
    check_fields(options, [f.name for f in fields(config_type)], f"concepts.{name}")
    try:
        return config_type(**{k: _freeze(v) for k, v in options.items()})
    except ValueError as err:
        raise ValueError(f"concepts.{name}.{err}") from None


def make_renderer(name: str, options: Mapping[str, Any] | None, split: str, system_fonts: bool = False) -> Renderer:
    """A renderer of concept ``name`` drawing only from ``split``'s assets."""
    config = make_config(name, options)
    return RENDERERS[name](config, AssetPool.for_split(split, system_fonts))
