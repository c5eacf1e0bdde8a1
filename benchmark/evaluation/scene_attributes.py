"""The attribute vocabulary of procedural scenes: what a scene shows, or what its caption asks for.

The scene-feature extractor reads these attributes back from an image (background colour and
pattern, arrangement, and each object's shape, colour and size), and prompt following compares its
reading with what the prompt asked for. They are pure functions of the scene grammar in
``implicit_concept.scene``; nothing here knows about the net.

Objects are numbered in reading order (top to bottom, then left to right), not in caption order:
"a red circle above a blue square" and "a blue square below a red circle" are the same picture.
"""
from __future__ import annotations

import re
from typing import Iterable

from benchmark.evaluation.scene_features_errors import SceneFeaturesError
from implicit_concept.scene.grammar import (
    BACKGROUNDS,
    PALETTE,
    POSITION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    ProceduralConfig,
    Scene,
)

#: Reading order of slots; sorting objects by it numbers them as a viewer would.
_READING_ORDER = ("top", "left", "centre", "right", "bottom")


def heads(scenes: ProceduralConfig) -> dict[str, tuple[str, ...]]:
    """Attribute name -> its possible values, for scenes drawn from ``scenes``."""
    arrangements: list[str] = []
    if scenes.min_objects <= 1:
        arrangements += [f"single-{slot}" for slot in POSITION_PHRASES]
    if scenes.min_objects <= 2 <= scenes.max_objects:
        arrangements += ["pair_horizontal", "pair_vertical"]
    if scenes.max_objects >= 3:
        arrangements += ["row", "column"]
    out = {
        "background_color": scenes.colors,
        "background_kind": scenes.backgrounds,
        "arrangement": tuple(arrangements),
    }
    for k in range(1, scenes.max_objects + 1):
        out[f"object{k}_shape"] = scenes.shapes
        out[f"object{k}_color"] = scenes.colors
        out[f"object{k}_size"] = tuple(SIZES)
    return out


def scene_attributes(scene: Scene) -> dict[str, str]:
    """What ``scene`` shows, attribute -> value; objects in reading order."""
    objects = sorted(scene.objects, key=lambda o: _READING_ORDER.index(o.position))
    slots = [o.position for o in objects]
    return _attributes(scene.background.color, scene.background.kind, slots,
                       [(o.shape, o.color, o.size) for o in objects])


def _attributes(bg_color: str, bg_kind: str, slots: list[str], objects: list[tuple[str, str, str]]) -> dict[str, str]:
    if len(slots) == 1:
        arrangement = f"single-{slots[0]}"
    elif len(slots) == 2:
        arrangement = "pair_vertical" if "top" in slots else "pair_horizontal"
    else:
        arrangement = "column" if "top" in slots else "row"
    out = {"background_color": bg_color, "background_kind": bg_kind, "arrangement": arrangement}
    for k, (shape, color, size) in enumerate(objects, start=1):
        out[f"object{k}_shape"], out[f"object{k}_color"], out[f"object{k}_size"] = shape, color, size
    return out


def _alternatives(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_NOUN = rf"a ({_alternatives(SIZES)}) ({_alternatives(PALETTE)}) ({_alternatives(SHAPES)})"
_PLACE = rf"({_alternatives(POSITION_PHRASES.values())})"
_BACKGROUND = (
    rf" on an? ({_alternatives(PALETTE)}) ({_alternatives(w for w in BACKGROUNDS.values() if w)})?background"
)
_CAPTION_PATTERNS = (
    re.compile(rf"{_NOUN} {_PLACE}{_BACKGROUND}"),
    re.compile(rf"{_NOUN} ({_alternatives(RELATIONS.values())}) {_NOUN}{_BACKGROUND}"),
    re.compile(rf"{_NOUN} {_PLACE}, {_NOUN} {_PLACE} and {_NOUN} {_PLACE}{_BACKGROUND}"),
)
_SLOT_OF_PHRASE = {phrase: slot for slot, phrase in POSITION_PHRASES.items()}
_SLOT_OF_RELATION = {relation: slot for slot, relation in RELATIONS.items()}
_OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
_KIND_OF_WORD = {word: kind for kind, word in BACKGROUNDS.items()}


def caption_attributes(caption: str) -> dict[str, str]:
    """The attributes a templated caption asks for (the inverse of ``procedural.caption``)."""
    text = caption.strip()
    for n_objects, pattern in enumerate(_CAPTION_PATTERNS, start=1):
        m = pattern.fullmatch(text)
        if m:
            break
    else:
        raise SceneFeaturesError(f"not a procedural scene caption: {caption!r}")
    g = m.groups()
    bg_color, bg_word = g[-2], g[-1] or ""
    if n_objects == 1:
        placed = [(_SLOT_OF_PHRASE[g[3]], g[:3])]
    elif n_objects == 2:
        first = _SLOT_OF_RELATION[g[3]]
        placed = [(first, g[:3]), (_OPPOSITE[first], g[4:7])]
    else:
        placed = [(_SLOT_OF_PHRASE[g[4 * i + 3]], g[4 * i:4 * i + 3]) for i in range(3)]
    placed.sort(key=lambda p: _READING_ORDER.index(p[0]))
    objects = [(shape, color, size) for _, (size, color, shape) in placed]
    return _attributes(bg_color, _KIND_OF_WORD[bg_word], [slot for slot, _ in placed], objects)


def object_index(attribute: str) -> int:
    """1 for ``object1_shape``, 0 for attributes of the whole scene."""
    m = re.match(r"object(\d+)_", attribute)
    return int(m.group(1)) if m else 0


def object_count(arrangement: str) -> int:
    """How many objects an arrangement places."""
    if arrangement.startswith("single"):
        return 1
    return 2 if arrangement.startswith("pair") else 3
