"""What one ICD sample is, as written into a shard's ``KEY.json``.

Everything downstream (detector export, Geom-Erasing captions, the benchmark) reads samples through
these dataclasses, so the JSON schema lives in exactly one place.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from PIL import Image

SPLITS: tuple[str, ...] = ("train", "test")
SCHEMA_VERSION = 2  # 2: boxes are visible-pixel boxes; instances record ``visible``


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
            "params": self.params,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Instance":
        return cls(concept=d["concept"], box=Box(*d["box"]), params=d.get("params", {}), visible=d.get("visible", 1.0))


@dataclass
class SampleMeta:
    """The ``KEY.json`` record of a sample."""

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
    schema: int = SCHEMA_VERSION

    @property
    def contaminated(self) -> bool:
        return bool(self.instances)

    @property
    def concepts(self) -> list[str]:
        return sorted({i.concept for i in self.instances})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["instances"] = [i.to_json(self.width, self.height) for i in self.instances]
        d["contaminated"] = self.contaminated
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "SampleMeta":
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "instances"}
        return cls(instances=[Instance.from_json(i) for i in d["instances"]], **fields)


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
