"""A small CNN trained on procedural scenes: the feature extractor of the `tiny` track's quality scores.

Inception and CLIP weights cannot be downloaded offline, and they would say little about 64 px
drawings of coloured shapes anyway. So we train our own extractor on the scenes the tiny model
learns from: it reads a scene's attributes (background colour and pattern, arrangement, and each
object's shape, colour and size; see ``scene_attributes``) back from the image. Its penultimate
layer gives the features of scene-FID; its predictions give prompt following. Neither is Inception
FID or CLIP score, and every number computed with it says so.

This module holds what callers use: the config (everything that changes the trained weights) and
``SceneFeatures``, trained by ``scene_features_training`` and cached by the hash of the config.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchmark.evaluation.degradations import Degradation
from benchmark.evaluation.scene_attributes import heads, object_count, object_index
from benchmark.evaluation.scene_features_errors import CONFIG_NAME, SceneFeaturesError, config_fields
from benchmark.evaluation.scene_features_net import SceneNet, to_batch
from benchmark.evaluation.scene_features_training import HELDOUT_STREAM, STREAM_TAG, accuracy, draw_scenes, train_net
from implicit_concept.content_hashes import sha256_file
from implicit_concept.disk_space import writing
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_dir
from implicit_concept.json_records import read_json_object
from implicit_concept.provenance import cache_key, config_hash, environment
from implicit_concept.scene.grammar import ProceduralConfig
from implicit_concept.tensor_checks import non_finite
from implicit_concept.torch_settings import MAX_THREADS, torch_threads
from implicit_concept.validate import check_choice, check_fields, check_int, is_number

#: Bump when a code change alters the trained weights for an unchanged config: old caches are then ignored.
FORMAT_VERSION = 1
KIND = "scene features (a small CNN trained on procedural scenes; not Inception, not CLIP)"
CACHE_SUBDIR = "scene-features"
#: The weights, as safetensors; ``info.json`` records their sha256, checked on every load.
WEIGHTS_NAME = "weights.safetensors"
#: What older versions wrote: a pickle, never loaded (the entry is trained again).
LEGACY_WEIGHTS_NAME = "weights.pt"
INFO_NAME = "info.json"
IMAGE_SIZES = (32, 64)


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
        with config_fields():
            check_choice("image_size", self.image_size, IMAGE_SIZES)
            if not isinstance(self.scenes, ProceduralConfig):
                raise ValueError(f"scenes: expected a ProceduralConfig, got {self.scenes!r}")
            if not isinstance(self.degradation, Degradation):
                raise ValueError(f"degradation: expected a Degradation, got {self.degradation!r}")
            for name, low in (("feature_dim", 8), ("steps", 1), ("batch", 8), ("heldout", 10), ("seed", 0)):
                check_int(name, getattr(self, name), low)
            check_int("threads", self.threads, 1, MAX_THREADS)
            if not (is_number(self.lr) and 0 < self.lr < 1):
                raise ValueError(f"lr: expected a number in (0, 1), got {self.lr!r}")
            if not (is_number(self.weight_decay) and 0 <= self.weight_decay < 1):
                raise ValueError(f"weight_decay: expected a number in [0, 1), got {self.weight_decay!r}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @property
    def hash(self) -> str:
        return config_hash(self._record())

    @property
    def key(self) -> str:
        """The name of this config's cache folder."""
        return cache_key(self._record())

    def _record(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "config": self.to_json()}


class SceneFeatures:
    """A trained extractor: ``features`` for scene-FID, ``predict`` for prompt following."""

    def __init__(self, net: SceneNet, config: SceneFeaturesConfig, info: dict[str, Any], path: Path | None = None) -> None:
        self.net = net.eval()
        self.config = config
        self.vocab = heads(config.scenes)
        self.info = info
        self.path = path

    @property
    def id(self) -> str:
        """Short config hash: two scores are comparable only if their extractors share it."""
        return self.config.key

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @classmethod
    def train(cls, config: SceneFeaturesConfig) -> "SceneFeatures":
        """Train now (no cache) and measure per-attribute accuracy on held-out scenes."""
        with torch_threads(config.threads):
            start = time.perf_counter()
            vocab = heads(config.scenes)
            net = train_net(config, vocab)
            train_s = time.perf_counter() - start
            extractor = cls(net, config, {})
            heldout = extractor._evaluate()
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

        ``overrides`` are ``SceneFeaturesConfig`` fields (``steps=...``, ``seed=...``). An entry
        :meth:`load` refuses (an older version's pickled ``weights.pt``, weights whose sha256 is not
        the one ``info.json`` records, NaN or infinite values, ...) is trained again and replaced,
        with a note on stderr naming the file and the problem: training is deterministic, so the
        rebuilt entry holds the weights the cache should have held.
        """
        check_fields(overrides, {f.name for f in fields(SceneFeaturesConfig)} - {"image_size"}, CONFIG_NAME, SceneFeaturesError)
        config = SceneFeaturesConfig(image_size=image_size, **overrides)
        final = Path(cache_dir) / CACHE_SUBDIR / config.key
        with locked(final):  # one process trains it; another waits, then loads it
            if final.exists():
                try:
                    return cls.load(final, config)
                except SceneFeaturesError as e:
                    print(f"note: {e}; training the scene-feature extractor again to replace that cache entry", file=sys.stderr)
            extractor = cls.train(config)
            with atomic_dir(final, replace_existing=True) as tmp:
                with writing(tmp / WEIGHTS_NAME):
                    save_file(extractor.net.state_dict(), str(tmp / WEIGHTS_NAME))
                extractor.info["weights_sha256"] = sha256_file(tmp / WEIGHTS_NAME)
                (tmp / INFO_NAME).write_text(json.dumps(extractor.info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        extractor.path = final
        return extractor

    @classmethod
    def load(cls, path: str | Path, config: SceneFeaturesConfig) -> "SceneFeatures":
        """The extractor cached at ``path``; anything but the weights ``load_or_train`` wrote for
        ``config`` raises :class:`SceneFeaturesError` naming the file. Nothing is unpickled: the
        weights are safetensors, checked against the sha256 in ``info.json``, then for the names,
        dtypes and shapes of the net's tensors and for NaN or infinite values."""
        path = Path(path)
        weights, record = path / WEIGHTS_NAME, path / INFO_NAME
        if not weights.is_file():
            legacy = (f" (its {LEGACY_WEIGHTS_NAME}, an older version's, is a pickle and is never loaded)"
                      if (path / LEGACY_WEIGHTS_NAME).exists() else "")
            raise SceneFeaturesError(f"{weights}: missing{legacy}")
        try:
            info = read_json_object(record)
        except OSError as e:
            raise SceneFeaturesError(f"{record}: not a readable JSON record ({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise SceneFeaturesError(f"{record}: not a readable JSON record ({str(e).removeprefix(f'{record}: ')})") from None
        if info.get("config_hash") != config.hash:
            raise SceneFeaturesError(f"{record}: cached config hash {info.get('config_hash')} != {config.hash}")
        try:
            actual = sha256_file(weights)
        except OSError as e:
            raise SceneFeaturesError(f"{weights}: unreadable ({e})") from None
        if actual != info.get("weights_sha256"):
            raise SceneFeaturesError(f"{weights}: sha256 {actual} is not the {info.get('weights_sha256')!r} {INFO_NAME} records")
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError) as e:
            raise SceneFeaturesError(f"{weights}: not a readable safetensors file ({e})") from None
        vocab = heads(config.scenes)
        net = SceneNet(config.image_size, config.feature_dim, {k: len(v) for k, v in vocab.items()})
        expected = net.state_dict()
        for name in sorted(expected.keys() | state.keys()):
            want, got = expected.get(name), state.get(name)
            if want is None or got is None:
                raise SceneFeaturesError(f"{weights}: {'holds an unknown' if want is None else 'lacks the'} tensor {name}")
            if (got.dtype, got.shape) != (want.dtype, want.shape):
                raise SceneFeaturesError(f"{weights}: tensor {name} is {got.dtype} {tuple(got.shape)}, "
                                         f"not {want.dtype} {tuple(want.shape)}")
            if non_finite([(name, got)]) is not None:
                raise SceneFeaturesError(f"{weights}: tensor {name} holds NaN or infinite values")
        net.load_state_dict(state)
        return cls(net, config, info, path)

    def _run(self, images: Sequence[Image.Image | np.ndarray], batch: int, want: str) -> list[Any]:
        images = list(images)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = to_batch(images[i:i + batch], self.image_size)
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
            count = object_count(pred["arrangement"])
            out.append({k: v for k, v in pred.items() if object_index(k) <= count})
        return out

    def _evaluate(self) -> dict[str, Any]:
        config = self.config
        result: dict[str, Any] = {"n": config.heldout}
        for name, degrade in (("clean", False), ("degraded", True)):
            images, labels = draw_scenes(config, config.heldout, [STREAM_TAG, config.seed, HELDOUT_STREAM], degrade=degrade)
            result[name] = accuracy(self.predict(images), labels)
        return result
