"""The scene grammar: what a procedural scene is, how one is drawn at random, and its caption.

No captioned image set can be installed offline, and a text-to-image model trained on two CPU
cores only learns a small, regular language. So each image is drawn from a scene whose caption
says exactly what was drawn, in a fixed word order, with a small vocabulary whose every word
changes many pixels: background pattern and colour, and each object's size, colour, shape and
place. Objects are kept apart so relations ("above", "to the left of") are never ambiguous.

A scene holds only JSON values, so the benchmark can rebuild any training scene, caption it, or
draw it (:mod:`implicit_concept.scene.render`) at another size.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from implicit_concept.validate import is_names

T = TypeVar("T")

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (45, 165, 65),
    "blue": (40, 80, 215),
    "yellow": (245, 215, 40),
    "orange": (245, 135, 25),
    "purple": (135, 55, 175),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "pink": (245, 140, 190),
    "cyan": (40, 200, 215),
    "brown": (125, 75, 35),
    "gray": (128, 128, 128),
}
BACKGROUNDS: dict[str, str] = {
    "flat": "",
    "gradient": "gradient ",
    "stripes": "striped ",
    "checker": "checkered ",
    "noise": "noisy ",
    "texture": "textured ",
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "diamond", "cross")
#: Half the side of the box an object fits in, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.12, "large": 0.22}
#: Object centres per layout; a layout's slots are far enough apart for its sizes not to touch.
LAYOUTS: dict[str, dict[str, tuple[float, float]]] = {
    "single": {
        "centre": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5),
        "top": (0.5, 0.25), "bottom": (0.5, 0.75),
    },
    "pair_horizontal": {"left": (0.25, 0.5), "right": (0.75, 0.5)},
    "pair_vertical": {"top": (0.5, 0.25), "bottom": (0.5, 0.75)},
    "row": {"left": (0.18, 0.5), "centre": (0.5, 0.5), "right": (0.82, 0.5)},
    "column": {"top": (0.5, 0.18), "centre": (0.5, 0.5), "bottom": (0.5, 0.82)},
}
POSITION_PHRASES: dict[str, str] = {
    "centre": "in the centre", "left": "on the left", "right": "on the right",
    "top": "at the top", "bottom": "at the bottom",
}
#: The relation of the first object of a pair to the second, keyed by the first one's slot.
RELATIONS: dict[str, str] = {
    "top": "above", "bottom": "below", "left": "to the left of", "right": "to the right of",
}
_MARGIN = 0.02


def _names(name: str, value: Any, known: tuple[str, ...] | dict[str, Any]) -> tuple[str, ...]:
    if not is_names(value):
        raise ValueError(f"{name} must be a list of names, got {value!r}")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown[0]!r} (known: {', '.join(known)})")
    if not value or len(set(value)) != len(value):
        raise ValueError(f"{name} must be a non-empty list without repeats, got {list(value)}")
    return tuple(value)


def check_integer(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class ProceduralConfig:
    """What scenes look like and how many each split holds."""

    train: int = 10_000
    test: int = 1_000
    backgrounds: tuple[str, ...] = ("flat", "gradient")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
    colors: tuple[str, ...] = (
        "red", "green", "blue", "yellow", "orange", "purple", "white", "black",
    )
    min_objects: int = 1
    max_objects: int = 2
    #: Uniform shift of each object's centre, as a fraction of the side; capped so objects never overlap.
    jitter: float = 0.02
    #: Uniform per-channel shift of every drawn colour, in 8-bit levels.
    color_jitter: int = 10

    def __post_init__(self) -> None:
        check_integer("train", self.train, 0)
        check_integer("test", self.test, 0)
        object.__setattr__(self, "backgrounds", _names("backgrounds", self.backgrounds, BACKGROUNDS))
        object.__setattr__(self, "shapes", _names("shapes", self.shapes, SHAPES))
        object.__setattr__(self, "colors", _names("colors", self.colors, PALETTE))
        if len(self.colors) < 2:
            raise ValueError(
                f"colors needs at least 2 names (objects differ from the background), "
                f"got {list(self.colors)}"
            )
        check_integer("min_objects", self.min_objects, 1, 3)
        check_integer("max_objects", self.max_objects, self.min_objects, 3)
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 0.03:
            raise ValueError(f"jitter must be in [0, 0.03], got {self.jitter!r}")
        check_integer("color_jitter", self.color_jitter, 0, 40)


@dataclass(frozen=True)
class Background:
    kind: str
    color: str
    rgb: tuple[int, int, int]
    #: Pattern parameters, only those ``kind`` uses: orientation, period, flip, seed.
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    size: str
    position: str
    #: Centre and half box side, as fractions of the image side.
    x: float
    y: float
    radius: float

    @property
    def anchor(self) -> tuple[float, float]:
        """A point surely inside the drawn shape (a ring's centre is background)."""
        if self.shape == "ring":
            return self.x + 0.775 * self.radius, self.y
        if self.shape == "triangle":
            return self.x, self.y + 0.289 * self.radius
        return self.x, self.y


@dataclass(frozen=True)
class Scene:
    background: Background
    objects: tuple[SceneObject, ...]
    layout: str

    @property
    def caption(self) -> str:
        return caption(self)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for obj, out in zip(self.objects, d["objects"]):
            out["anchor"] = [round(v, 6) for v in obj.anchor]
        return _jsonable(d)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Scene":
        bg = d["background"]
        background = Background(bg["kind"], bg["color"], tuple(bg["rgb"]), dict(bg["params"]))
        objects = tuple(
            SceneObject(
                o["shape"], o["color"], tuple(o["rgb"]), o["size"], o["position"],
                o["x"], o["y"], o["radius"],
            )
            for o in d["objects"]
        )
        return cls(background, objects, d["layout"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def sample_scene(rng: np.random.Generator, config: ProceduralConfig) -> Scene:
    """Draw one scene's parameters; the draw order is part of the dataset's definition."""
    background = _sample_background(rng, config)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    if count == 1:
        layout = "single"
        slots = [_choice(rng, tuple(LAYOUTS[layout]))]
    elif count == 2:
        layout = _choice(rng, ("pair_horizontal", "pair_vertical"))
        slots = list(LAYOUTS[layout])
        if rng.random() < 0.5:
            slots.reverse()
    else:
        layout = _choice(rng, ("row", "column"))
        slots = list(LAYOUTS[layout])
    object_colors = tuple(c for c in config.colors if c != background.color)
    objects = tuple(
        _sample_object(rng, config, layout, slot, object_colors) for slot in slots
    )
    return Scene(background, objects, layout)


def _choice(rng: np.random.Generator, options: tuple[T, ...]) -> T:
    return options[int(rng.integers(len(options)))]


def _jittered_rgb(rng: np.random.Generator, name: str, amount: int) -> tuple[int, int, int]:
    shift = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(PALETTE[name]) + shift, 0, 255))


def _sample_background(rng: np.random.Generator, config: ProceduralConfig) -> Background:
    kind = _choice(rng, config.backgrounds)
    color = _choice(rng, config.colors)
    rgb = _jittered_rgb(rng, color, config.color_jitter)
    if kind == "gradient":
        params = {
            "orientation": _choice(rng, ("horizontal", "vertical", "diagonal")),
            "flip": bool(rng.random() < 0.5),
        }
    elif kind in ("stripes", "checker"):
        params = {
            "orientation": _choice(rng, ("horizontal", "vertical", "diagonal")),
            "period": _choice(rng, (0.125, 0.167, 0.25)),
        }
    elif kind in ("noise", "texture"):
        params = {"seed": int(rng.integers(2**62))}
    else:
        params = {}
    return Background(kind, color, rgb, params)


def _sample_object(
    rng: np.random.Generator, config: ProceduralConfig, layout: str, slot: str, colors: tuple[str, ...]
) -> SceneObject:
    shape = _choice(rng, config.shapes)
    color = _choice(rng, colors)
    size = "small" if layout in ("row", "column") else _choice(rng, tuple(SIZES))
    radius = SIZES[size]
    cx, cy = LAYOUTS[layout][slot]
    dx, dy = rng.uniform(-config.jitter, config.jitter, size=2)
    low, high = radius + _MARGIN, 1 - radius - _MARGIN
    x = round(float(np.clip(cx + dx, low, high)), 6)
    y = round(float(np.clip(cy + dy, low, high)), 6)
    rgb = _jittered_rgb(rng, color, config.color_jitter)
    return SceneObject(shape, color, rgb, size, slot, x, y, radius)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"


def caption(scene: Scene) -> str:
    """The templated caption: objects first, background last, e.g.
    "a small red circle above a large blue square on a green gradient background"."""
    objects = scene.objects
    if len(objects) == 1:
        subject = f"{_noun(objects[0])} {POSITION_PHRASES[objects[0].position]}"
    elif len(objects) == 2:
        subject = f"{_noun(objects[0])} {RELATIONS[objects[0].position]} {_noun(objects[1])}"
    else:
        parts = [f"{_noun(o)} {POSITION_PHRASES[o.position]}" for o in objects]
        subject = ", ".join(parts[:-1]) + " and " + parts[-1]
    bg = scene.background
    return f"{subject} on {_article(bg.color)} {bg.color} {BACKGROUNDS[bg.kind]}background"
