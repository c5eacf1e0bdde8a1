"""A small CNN trained on procedural scenes: the feature extractor of the `tiny` track's quality scores.

Inception and CLIP weights cannot be downloaded offline, and they would say little about 64 px
drawings of coloured shapes anyway. So we train our own extractor on the scenes the tiny model
learns from: it reads a scene's attributes (background colour and pattern, arrangement, and each
object's shape, colour and size) back from the image. Its penultimate layer gives the features of
scene-FID; its predictions give prompt following. Neither is Inception FID or CLIP score, and every
number computed with it says so.

Objects are numbered in reading order (top to bottom, then left to right), not in caption order:
"a red circle above a blue square" and "a blue square below a red circle" are the same picture.

Training is seeded and renders fresh scenes on the fly from its own seed streams (never the
benchmark's evaluation prompts), with mild blur, noise and JPEG so that imperfect generated images
still get meaningful features. Weights are cached by the hash of the config.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from implicit_concept.scene.grammar import BACKGROUNDS, PALETTE, POSITION_PHRASES, RELATIONS, SHAPES, SIZES, ProceduralConfig, Scene, sample_scene
from implicit_concept.scene.render import render_scene
from implicit_concept.provenance import config_hash, environment
from implicit_concept.validate import check_fields

#: Bump when a code change alters the trained weights for an unchanged config: old caches are then ignored.
FORMAT_VERSION = 1
KIND = "scene features (a small CNN trained on procedural scenes; not Inception, not CLIP)"
CACHE_SUBDIR = "scene-features"
WEIGHTS_NAME = "weights.pt"
INFO_NAME = "info.json"
IMAGE_SIZES = (32, 64)
#: First entry of every seed this module draws: keeps its streams apart from the dataset's
#: ``[seed, split, index]`` streams, so training never renders an evaluation prompt's image.
_STREAM_TAG = 0x5CE4E
_TRAIN_STREAM, _HELDOUT_STREAM = 0, 1
#: Reading order of slots; sorting objects by it numbers them as a viewer would.
_READING_ORDER = ("top", "left", "centre", "right", "bottom")
_IGNORE = -100


class SceneFeaturesError(ValueError):
    """A config field, an input image or a prompt the extractor cannot read; the message names it."""


@dataclass(frozen=True)
class Degradation:
    """Mild damage applied to training images (each kind with its own probability), so imperfect
    generated images still land near the clean ones in feature space."""

    blur_p: float = 0.4
    #: Largest Gaussian blur radius, in pixels of a 64 px image (scaled with the image size).
    blur_max: float = 0.8
    noise_p: float = 0.4
    #: Largest per-pixel Gaussian noise standard deviation, in 8-bit levels.
    noise_max: float = 10.0
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (50, 95)

    def __post_init__(self) -> None:
        for name in ("blur_p", "noise_p", "jpeg_p"):
            _check(name, getattr(self, name), lambda v: _real(v) and 0 <= v <= 1, "a probability in [0, 1]")
        _check("blur_max", self.blur_max, lambda v: _real(v) and 0 <= v <= 3, "in [0, 3] pixels")
        _check("noise_max", self.noise_max, lambda v: _real(v) and 0 <= v <= 40, "in [0, 40] levels")
        q = tuple(self.jpeg_quality) if isinstance(self.jpeg_quality, (list, tuple)) else None
        _check(
            "jpeg_quality", self.jpeg_quality,
            lambda v: q is not None and len(q) == 2 and all(_int(x) for x in q) and 10 <= q[0] <= q[1] <= 100,
            "[low, high] with 10 <= low <= high <= 100",
        )
        object.__setattr__(self, "jpeg_quality", q)

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Blur, then JPEG, then noise, each drawn from ``rng``: the same rng state gives the same damage."""
        u = rng.random(6)
        if u[0] < self.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(float(u[1]) * self.blur_max * image.width / 64))
        if u[4] < self.jpeg_p:
            low, high = self.jpeg_quality
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=int(round(low + u[5] * (high - low))))
            buf.seek(0)
            image = Image.open(buf).convert("RGB")
        if u[2] < self.noise_p:
            noise = rng.normal(0.0, u[3] * self.noise_max, size=(image.height, image.width, 3))
            image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).round().astype(np.uint8))
        return image


@dataclass(frozen=True)
class SceneFeaturesConfig:
    """Everything that changes the trained weights; its hash names the cache entry."""

    image_size: int = 64
    scenes: ProceduralConfig = field(default_factory=ProceduralConfig)
    degradation: Degradation = field(default_factory=Degradation)
    #: Width of the penultimate layer, i.e. of the scene-FID features. Small, because FID's
    #: covariance is estimated from a few hundred images per method.
    feature_dim: int = 64
    steps: int = 600
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    #: CPU threads while training; part of the config because it can change float reductions. One,
    #: because this net is too small to gain from a second thread, and on two cores shared with
    #: another job two threads measured 3x slower than one.
    threads: int = 1
    heldout: int = 1000

    def __post_init__(self) -> None:
        _check("image_size", self.image_size, lambda v: v in IMAGE_SIZES, f"one of {IMAGE_SIZES}")
        _check("scenes", self.scenes, lambda v: isinstance(v, ProceduralConfig), "a ProceduralConfig")
        _check("degradation", self.degradation, lambda v: isinstance(v, Degradation), "a Degradation")
        for name, low in (("feature_dim", 8), ("steps", 1), ("batch", 8), ("threads", 1), ("heldout", 10)):
            _check(name, getattr(self, name), lambda v, low=low: _int(v) and v >= low, f"an integer >= {low}")
        _check("seed", self.seed, lambda v: _int(v) and v >= 0, "an integer >= 0")
        _check("lr", self.lr, lambda v: _real(v) and 0 < v < 1, "in (0, 1)")
        _check("weight_decay", self.weight_decay, lambda v: _real(v) and 0 <= v < 1, "in [0, 1)")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @property
    def hash(self) -> str:
        return config_hash({"format": FORMAT_VERSION, "config": self.to_json()})


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(name: str, value: Any, ok: Any, want: str) -> None:
    if not ok(value):
        raise SceneFeaturesError(f"scene features config: {name} = {value!r}, want {want}")


# ---- attributes: what a scene (or its caption) asks for, in the extractor's vocabulary ----

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


# ---- the network ----

class _Net(nn.Module):
    """Conv stages halve the side down to 4 px; the 4x4 map is flattened, not pooled, because the
    arrangement and the reading order of objects are spatial."""

    def __init__(self, image_size: int, feature_dim: int, head_sizes: Mapping[str, int]) -> None:
        super().__init__()
        stages = int(math.log2(image_size // 4))
        widths = (16, 32, 64, 128)[-stages:]
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if c_out == widths[-1]:
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(widths[-1] * 16, feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in head_sizes.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer before its ReLU: no dead, constant dimensions in FID's covariance."""
        return self.embed(self.trunk(x).flatten(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(self.features(x))
        return {name: head(h) for name, head in self.heads.items()}


def _to_batch(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """RGB uint8 (or float in [0, 1]) images -> normalised NCHW float tensor at ``size`` px."""
    arrays = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            a = image
            if a.dtype != np.uint8:
                if not np.issubdtype(a.dtype, np.floating) or a.size and (a.min() < 0 or a.max() > 1):
                    raise SceneFeaturesError(f"image {i}: arrays must be uint8 or float in [0, 1], got {a.dtype}")
                a = (a * 255).round().astype(np.uint8)
            if a.ndim != 3 or a.shape[2] != 3:
                raise SceneFeaturesError(f"image {i}: want an HxWx3 RGB array, got shape {a.shape}")
            image = Image.fromarray(a)
        elif not isinstance(image, Image.Image):
            raise SceneFeaturesError(f"image {i}: want a PIL image or a numpy array, got {type(image).__name__}")
        image = image.convert("RGB")
        if image.size != (size, size):
            # Box filtering when shrinking matches how the renderer antialiases its 4x supersampling.
            shrink = image.width > size and image.height > size
            image = image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image))
    if not arrays:
        raise SceneFeaturesError("no images")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.25


# ---- training ----

def _draw(config: SceneFeaturesConfig, n: int, seed: list[int], degrade: bool) -> tuple[list[Image.Image], list[dict[str, str]]]:
    """``n`` scenes from the stream ``seed``; degradation draws from a second stream, so the clean and
    the degraded draws of one seed show the same scenes."""
    scenes_rng = np.random.default_rng([*seed, 0])
    damage_rng = np.random.default_rng([*seed, 1])
    images, labels = [], []
    for _ in range(n):
        scene = sample_scene(scenes_rng, config.scenes)
        image = render_scene(scene, config.image_size)
        if degrade:
            image = config.degradation.apply(image, damage_rng)
        images.append(image)
        labels.append(scene_attributes(scene))
    return images, labels


def _targets(labels: list[dict[str, str]], vocab: Mapping[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor([values.index(lab[name]) if name in lab else _IGNORE for lab in labels])
        for name, values in vocab.items()
    }


def _loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for name, y in targets.items():
        valid = int((y != _IGNORE).sum())
        if valid:
            total = total + F.cross_entropy(logits[name], y, ignore_index=_IGNORE, reduction="sum") / valid
    return total


def _train(config: SceneFeaturesConfig, vocab: Mapping[str, tuple[str, ...]]) -> _Net:
    torch.manual_seed(config.seed)
    net = _Net(config.image_size, config.feature_dim, {k: len(v) for k, v in vocab.items()})
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.15)
    net.train()
    for step in range(config.steps):
        images, labels = _draw(config, config.batch, [_STREAM_TAG, config.seed, _TRAIN_STREAM, step], degrade=True)
        loss = _loss(net(_to_batch(images, config.image_size)), _targets(labels, vocab))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def _accuracy(predicted: list[dict[str, str]], expected: list[dict[str, str]]) -> dict[str, Any]:
    """Share of correct predictions per attribute (over the images whose scene has it) and per image."""
    names = list(dict.fromkeys(name for e in expected for name in e))
    per_attribute = {}
    for name in names:
        pairs = [(p.get(name), e[name]) for p, e in zip(predicted, expected) if name in e]
        per_attribute[name] = round(sum(p == e for p, e in pairs) / len(pairs), 4)
    per_image = [np.mean([p.get(k) == v for k, v in e.items()]) for p, e in zip(predicted, expected)]
    return {"per_attribute": per_attribute, "mean_per_image": round(float(np.mean(per_image)), 4)}


# ---- the extractor ----

class SceneFeatures:
    """A trained extractor: ``features`` for scene-FID, ``predict`` for prompt following."""

    def __init__(self, net: _Net, config: SceneFeaturesConfig, info: dict[str, Any], path: Path | None = None) -> None:
        self.net = net.eval()
        self.config = config
        self.vocab = heads(config.scenes)
        self.info = info
        self.path = path

    @property
    def id(self) -> str:
        """Short config hash: two scores are comparable only if their extractors share it."""
        return self.config.hash[:16]

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @classmethod
    def train(cls, config: SceneFeaturesConfig) -> "SceneFeatures":
        """Train now (no cache) and measure per-attribute accuracy on held-out scenes."""
        previous = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        try:
            start = time.perf_counter()
            vocab = heads(config.scenes)
            net = _train(config, vocab)
            train_s = time.perf_counter() - start
            extractor = cls(net, config, {})
            heldout = extractor._evaluate()
        finally:
            torch.set_num_threads(previous)
        extractor.info = {
            "kind": KIND,
            "config": config.to_json(),
            "config_hash": config.hash,
            "format": FORMAT_VERSION,
            "heads": {k: list(v) for k, v in vocab.items()},
            "heldout": heldout,
            "train_s": round(train_s, 1),
            "environment": environment(),
        }
        return extractor

    @classmethod
    def load_or_train(cls, cache_dir: str | Path, image_size: int = 64, **overrides: Any) -> "SceneFeatures":
        """Load ``cache_dir/scene-features/<hash>/``, training and writing it first if missing.

        ``overrides`` are ``SceneFeaturesConfig`` fields (``steps=...``, ``seed=...``).
        """
        check_fields(overrides, {f.name for f in fields(SceneFeaturesConfig)} - {"image_size"}, "scene features config", SceneFeaturesError)
        config = SceneFeaturesConfig(image_size=image_size, **overrides)
        root = Path(cache_dir) / CACHE_SUBDIR
        final = root / config.hash[:16]
        if (final / WEIGHTS_NAME).is_file() and (final / INFO_NAME).is_file():
            return cls.load(final, config)
        extractor = cls.train(config)
        tmp = root / f".tmp-{config.hash[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(extractor.net.state_dict(), tmp / WEIGHTS_NAME)
        (tmp / INFO_NAME).write_text(json.dumps(extractor.info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process cached the same config first; its weights are as good as ours.
            shutil.rmtree(tmp, ignore_errors=True)
            return cls.load(final, config)
        extractor.path = final
        return extractor

    @classmethod
    def load(cls, path: str | Path, config: SceneFeaturesConfig) -> "SceneFeatures":
        path = Path(path)
        info = json.loads((path / INFO_NAME).read_text(encoding="utf-8"))
        if info.get("config_hash") != config.hash:
            raise SceneFeaturesError(f"{path}: cached config hash {info.get('config_hash')} != {config.hash}")
        vocab = heads(config.scenes)
        net = _Net(config.image_size, config.feature_dim, {k: len(v) for k, v in vocab.items()})
        net.load_state_dict(torch.load(path / WEIGHTS_NAME, map_location="cpu", weights_only=True))
        return cls(net, config, info, path)

    def _run(self, images: Sequence[Image.Image | np.ndarray], batch: int, want: str) -> list[Any]:
        images = list(images)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = _to_batch(images[i:i + batch], self.image_size)
                out.append(self.net.features(x) if want == "features" else self.net(x))
        if not out:
            raise SceneFeaturesError("no images")
        return out

    def features(self, images: Sequence[Image.Image | np.ndarray], batch: int = 256) -> np.ndarray:
        """(N, feature_dim) float64 penultimate-layer features; images are resized to ``image_size``."""
        return torch.cat(self._run(images, batch, "features")).double().numpy()

    def predict(self, images: Sequence[Image.Image | np.ndarray], batch: int = 256) -> list[dict[str, str]]:
        """Attribute -> predicted value per image; objects beyond the predicted arrangement's count are left out."""
        chunks = self._run(images, batch, "predict")
        indices = {name: torch.cat([c[name] for c in chunks]).argmax(1).tolist() for name in self.vocab}
        n = len(indices["arrangement"])
        out = []
        for i in range(n):
            pred = {name: self.vocab[name][indices[name][i]] for name in self.vocab}
            count = _object_count(pred["arrangement"])
            out.append({k: v for k, v in pred.items() if _object_index(k) <= count})
        return out

    def _evaluate(self) -> dict[str, Any]:
        config = self.config
        result: dict[str, Any] = {"n": config.heldout}
        for name, degrade in (("clean", False), ("degraded", True)):
            images, labels = _draw(config, config.heldout, [_STREAM_TAG, config.seed, _HELDOUT_STREAM], degrade=degrade)
            result[name] = _accuracy(self.predict(images), labels)
        return result


def _object_index(attribute: str) -> int:
    """1 for ``object1_shape``, 0 for attributes of the whole scene."""
    m = re.match(r"object(\d+)_", attribute)
    return int(m.group(1)) if m else 0


def _object_count(arrangement: str) -> int:
    if arrangement.startswith("single"):
        return 1
    return 2 if arrangement.startswith("pair") else 3
