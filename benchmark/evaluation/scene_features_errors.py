"""The one error of the scene-feature extractor, shared by its config, vocabulary, input and cache.

Callers catch a single type whichever part refused: a config field, a caption outside the scene
grammar, an image the net cannot read. Config fields are checked with ``implicit_concept.validate``,
whose ``ValueError`` :func:`config_fields` turns into this error, naming the config and the field.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

#: How config errors start: ``scene features config: steps: expected an integer >= 1, got 0``.
CONFIG_NAME = "scene features config"


class SceneFeaturesError(ValueError):
    """A config field, an input image or a prompt the extractor cannot read; the message names it."""


@contextmanager
def config_fields() -> Iterator[None]:
    """Re-raise a field check's ``ValueError`` as a :class:`SceneFeaturesError` about the config."""
    try:
        yield
    except ValueError as e:
        raise SceneFeaturesError(f"{CONFIG_NAME}: {e}") from None
