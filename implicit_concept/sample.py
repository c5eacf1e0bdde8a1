"""What one ICD sample is, as written into a shard's ``KEY.json``.

Everything downstream (detector export, Geom-Erasing captions, the benchmark) reads samples through
these dataclasses, so the JSON schema lives in exactly one place. Its shape is the same for every
sample (:data:`JSON_SHAPE`): what varies from one concept or source to another (an instance's
drawing parameters, the source's own metadata) is written as JSON text, so a tool that infers a
schema from a few records (Hugging Face ``datasets``, pyarrow) never drops a field.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from PIL import Image

from implicit_concept.provenance import version as reader_version

SPLITS: tuple[str, ...] = ("train", "test")
#: 2: boxes are visible-pixel boxes; instances record ``visible``. 3: one shape for every record
#: (``params`` and ``source.meta`` are JSON text), and ``screen`` records what the screens found.
SCHEMA_VERSION = 3
#: The oldest schema read: a schema 1 box covers the drawn layer, not its visible pixels (a label
#: where nothing shows), and a later schema may mean other things by the same fields.
OLDEST_SCHEMA = 2

#: Every field of ``KEY.json`` and its type: "string", "int64", "float64", "bool", a list of one
#: type (``[type]``), a record (a dict); the same for every sample (a dataset card declares it).
JSON_SHAPE: dict[str, Any] = {
    "key": "string",
    "caption": "string",
    "width": "int64",
    "height": "int64",
    "split": "string",
    "subset": "string",
    "source": {"kind": "string", "id": "string", "meta": "string"},
    "instances": [
        {
            "concept": "string",
            "box": ["int64"],
            "box_norm": ["float64"],
            "area_frac": "float64",
            "visible": "float64",
            "params": "string",
        }
    ],
    "screen": {"caption_names": ["string"], "caption_stripped": "bool", "source_shows": ["string"]},
    "seed": ["int64"],
    "recipe": "string",
    "recipe_sha256": "string",
    "version": "string",
    "schema": "int64",
    "contaminated": "bool",
}


def json_text(value: Any) -> str:
    """The one way a nested value becomes JSON text inside a record: sorted keys, UTF-8."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _parsed(value: Any) -> Any:
    """A field written as JSON text (schema 3) or as the value itself (schema 2)."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Box:
    """Pixel box, ``x2``/``y2`` exclusive (PIL's ``getbbox`` convention)."""

    x1: int
    y1: int
    x2: int
    y2: int

    def __post_init__(self) -> None:
        if not (self.x2 > self.x1 and self.y2 > self.y1):
            raise ValueError(f"empty or inverted box {self.as_list()}")

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_list(self) -> list[int]:
        return [self.x1, self.y1, self.x2, self.y2]

    def normalised(self, width: int, height: int) -> list[float]:
        return [self.x1 / width, self.y1 / height, self.x2 / width, self.y2 / height]

    def inside(self, width: int, height: int) -> bool:
        return 0 <= self.x1 and 0 <= self.y1 and self.x2 <= width and self.y2 <= height


def key_hash(key: str, errors: str = "surrogateescape") -> int:
    """The number every split by key is decided on: sha256 of ``key`` as UTF-8, its first 8 bytes
    as a big-endian integer in [0, 2**64). A key alone decides it, so the split is the same on every
    machine and in any order, and a key never moves when others are added. Callers compare it with
    their share as they always have (a source's test split: ``h / 2**64 < fraction``; the detector's
    validation keys: ``h < share * 2**64``). ``errors``: how a name that is not UTF-8 text (a tar's
    surrogate-escaped bytes) is encoded; ``"strict"`` raises on one."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", errors)).digest()[:8], "big")


def covering_box(coords: Sequence[float], width: int | None = None, height: int | None = None) -> Box | None:
    """The smallest integer :class:`Box` containing the float box ``coords`` (x1, y1, x2, y2).

    The one rule by which float boxes (a detector's, a scaled one, a text layout's) become pixel
    boxes: outwards to whole pixels, at least one pixel wide, then clipped to ``width`` x ``height``
    when given. None when clipping leaves nothing.
    """
    x1, y1 = math.floor(coords[0]), math.floor(coords[1])
    x2, y2 = max(math.ceil(coords[2]), x1 + 1), max(math.ceil(coords[3]), y1 + 1)
    if width is not None:
        x1, x2 = max(0, x1), min(width, x2)
    if height is not None:
        y1, y2 = max(0, y1), min(height, y2)
    return Box(x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


@dataclass
class Instance:
    """One drawn concept instance: the box of its pixels still visible in the final image, the
    share of its alpha they hold (``visible``, 1.0 when nothing covers it; an instance showing less
    than the recipe's ``min_visible`` is not recorded) and every parameter that drew it. What
    "visible" means exactly is :mod:`implicit_concept.compositing`'s rule."""

    concept: str
    box: Box
    params: dict[str, Any] = field(default_factory=dict)
    visible: float = 1.0

    def to_json(self, width: int, height: int) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "box": self.box.as_list(),
            "box_norm": [round(v, 6) for v in self.box.normalised(width, height)],
            "area_frac": round(self.box.area / (width * height), 6),
            "visible": self.visible,
            "params": json_text(self.params),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Instance":
        return cls(concept=d["concept"], box=Box(*d["box"]), params=_parsed(d.get("params", {})), visible=d.get("visible", 1.0))


@dataclass
class Screen:
    """What the builder's screens found in the source item (:mod:`builders.caption_screen`,
    :mod:`builders.source_screen`): concepts its caption named (``caption_stripped``: their words
    were taken out of the caption) and concepts already in its image."""

    caption_names: list[str] = field(default_factory=list)
    caption_stripped: bool = False
    source_shows: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"caption_names": list(self.caption_names), "caption_stripped": self.caption_stripped, "source_shows": list(self.source_shows)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Screen":
        return cls(list(d.get("caption_names", [])), bool(d.get("caption_stripped", False)), list(d.get("source_shows", [])))


@dataclass
class SampleMeta:
    """The ``KEY.json`` record of a sample. ``source`` holds the source's ``kind``, the item's ``id``
    and the source's metadata about it (``meta``, a dict here, JSON text in the record)."""

    key: str
    caption: str
    width: int
    height: int
    split: str
    subset: str
    source: dict[str, Any]
    instances: list[Instance]
    seed: list[int]
    recipe: str
    recipe_sha256: str
    version: str
    screen: Screen = field(default_factory=Screen)
    schema: int = SCHEMA_VERSION

    @property
    def contaminated(self) -> bool:
        return bool(self.instances)

    @property
    def concepts(self) -> list[str]:
        return sorted({i.concept for i in self.instances})

    def to_json(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in ("instances", "source", "screen")}
        extra = {k: v for k, v in self.source.items() if k not in ("kind", "id", "meta")}
        meta = self.source.get("meta", extra)
        d["source"] = {"kind": self.source.get("kind", ""), "id": self.source.get("id", ""), "meta": json_text(meta)}
        d["instances"] = [i.to_json(self.width, self.height) for i in self.instances]
        d["screen"] = self.screen.to_json()
        d["contaminated"] = self.contaminated
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SampleMeta":
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("instances", "source", "screen")}
        source = dict(d["source"])
        if "meta" in source or d.get("schema", SCHEMA_VERSION) >= 3:
            source["meta"] = _parsed(source.get("meta", {}))
        else:
            source = {"kind": source.pop("kind", None), "id": source.pop("id", None), "meta": source}
        meta = cls(
            instances=[Instance.from_json(i) for i in d["instances"]],
            source=source,
            screen=Screen.from_json(d.get("screen", {})),
            **fields,
        )
        meta.check()
        return meta

    def check(self) -> None:
        """Refuse, naming the field, a record no writer makes: a string or number of the wrong type
        (``JSON_SHAPE``), a size below 1, a box that is not four integers inside the image, a visible
        share outside [0, 1], a concept that is not one of ours (training would leave its instance
        unerased without a word). KEY.json is read from files anyone hands over: unchecked, a wrong type
        fails far from here as a traceback, and a box outside the image becomes a wrong label."""
        for name, kind in JSON_SHAPE.items():
            value = getattr(self, name, None) if name in self.__dataclass_fields__ else None
            if kind == "string" and not isinstance(value, str):
                raise ValueError(f"{name}: expected a string, got {value!r}")
            if kind == "int64" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        if not OLDEST_SCHEMA <= self.schema <= SCHEMA_VERSION:
            newer = self.schema > SCHEMA_VERSION
            raise ValueError(f"schema: {self.schema}, written by {'a newer' if newer else 'an older'} implicit-concept "
                             f"(version {self.version}); this one ({reader_version()}) reads schemas {OLDEST_SCHEMA} to "
                             f"{SCHEMA_VERSION}: {'upgrade implicit-concept' if newer else 'rebuild the dataset'} to read it")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"width, height: expected at least 1, got {self.width}x{self.height}")
        if not isinstance(self.seed, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in self.seed):
            raise ValueError(f"seed: expected a list of integers, got {self.seed!r}")
        from implicit_concept.concepts import CONCEPT_NAMES as concept_names  # concepts import this module

        for i, inst in enumerate(self.instances):
            box = inst.box.as_list()
            if not isinstance(inst.concept, str):
                raise ValueError(f"instances[{i}].concept: expected a string, got {inst.concept!r}")
            if inst.concept not in concept_names:
                raise ValueError(f"instances[{i}].concept: {inst.concept!r} is not an ICD concept {concept_names}")
            if any(isinstance(v, bool) or not isinstance(v, int) for v in box):
                raise ValueError(f"instances[{i}].box: expected four integers, got {box!r}")
            if not inst.box.inside(self.width, self.height):
                raise ValueError(f"instances[{i}]: {inst.concept} box {box} outside the image ({self.width}x{self.height})")
            if isinstance(inst.visible, bool) or not isinstance(inst.visible, (int, float)) or not 0 <= inst.visible <= 1:
                raise ValueError(f"instances[{i}].visible: expected a number in [0, 1], got {inst.visible!r}")


@dataclass
class Sample:
    """A decoded sample read back from a shard."""

    meta: SampleMeta
    image: Image.Image
    clean: Image.Image | None = None
    mask: Image.Image | None = None

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def caption(self) -> str:
        return self.meta.caption
