"""The registry of sources: turns the ``source`` block of a build config into a ``Source``.

Errors name the offending field as ``source.<field>`` so a config file can be fixed without
reading code.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from implicit_concept.validate import check_fields

from .base import RawItem, Source, SourceNotFound, split_of
from .folder import FolderConfig, FolderSource
from .procedural import ProceduralConfig, ProceduralSource
from .webdataset_source import WebDatasetConfig, WebDatasetSource

__all__ = [
    "SOURCES", "SourceKind", "make_source", "RawItem", "Source", "split_of",
    "FolderConfig", "FolderSource", "ProceduralConfig", "ProceduralSource",
    "WebDatasetConfig", "WebDatasetSource",
]


@dataclass(frozen=True)
class SourceKind:
    """A source's config class and how to build it from (config, image_size, shard_size, seed)."""

    config: type
    build: Callable[[Any, int, int, int], Source]


def _procedural(config: ProceduralConfig, image_size: int, shard_size: int, seed: int) -> Source:
    return ProceduralSource(config, image_size=image_size, shard_size=shard_size, seed=seed)


def _folder(config: FolderConfig, image_size: int, shard_size: int, seed: int) -> Source:
    return FolderSource(config, shard_size=shard_size)


def _webdataset(config: WebDatasetConfig, image_size: int, shard_size: int, seed: int) -> Source:
    return WebDatasetSource(config)


SOURCES: dict[str, SourceKind] = {
    "procedural": SourceKind(ProceduralConfig, _procedural),
    "folder": SourceKind(FolderConfig, _folder),
    "webdataset": SourceKind(WebDatasetConfig, _webdataset),
}


def make_source(options: dict[str, Any], *, image_size: int, shard_size: int, seed: int) -> Source:
    """Build the source named by ``options["kind"]`` from the rest of ``options``.

    ``image_size``, ``shard_size`` and ``seed`` come from the build, not the source block, so
    their errors carry no ``source.`` prefix.
    """
    for name, value, low in (("image_size", image_size, 8), ("shard_size", shard_size, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(options, dict):
        raise ValueError(f"source must be a mapping with a 'kind', got {options!r}")
    known = ", ".join(sorted(SOURCES))
    kind = options.get("kind")
    if not isinstance(kind, str) or kind not in SOURCES:  # a list or table there is unhashable
        what = "missing" if kind is None else f"unknown source {kind!r}"
        raise ValueError(f"source.kind: {what} (known: {known})")
    entry = SOURCES[kind]
    fields = {f.name: f for f in dataclasses.fields(entry.config)}
    given = {k: v for k, v in options.items() if k != "kind"}
    check_fields(given, fields, "source")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in given:
            raise ValueError(f"source.{name}: required for source {kind!r}")
    try:
        return entry.build(entry.config(**given), image_size, shard_size, seed)
    except SourceNotFound as exc:
        raise SourceNotFound(f"source.{exc}") from None
    except ValueError as exc:
        raise ValueError(f"source.{exc}") from None
