"""Image quality beside ICR: a Fréchet distance to clean test images, and prompt following.

Two families, never mixed in one column:
- `tiny` track: scene-FID and prompt following from ``SceneFeatures``, a small CNN we train on the
  procedural scenes. They are NOT Inception FID or CLIP score, and every result's ``kind`` says so.
- `paper` track: torchmetrics' FID and CLIP score, with weights read from a local path (nothing is
  downloaded). torchmetrics is an optional dependency, imported only when these are called. CLIP
  is read from a folder's safetensors only; the FID-Inception weights are a pickle (torch-fidelity's
  ``.pth``), read with ``torch.load`` forced to weights-only, which builds tensors and nothing else.

FID is biased upwards for small samples, so compare only scores computed with the same numbers of
images (and, for scene-FID, the same extractor id).
"""
from __future__ import annotations

import importlib
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from benchmark.evaluation.scene_attributes import caption_attributes, scene_attributes
from benchmark.evaluation.scene_features import SceneFeatures
from benchmark.evaluation.scene_features_errors import SceneFeaturesError
from benchmark.models.part_bars import part_bars_dropped
from implicit_concept.scene.grammar import Scene
from implicit_concept.stats import Interval, bootstrap_mean

SCENE_FID_KIND = "scene-FID (features of a CNN trained on procedural scenes; not Inception FID)"
PROMPT_FOLLOWING_KIND = (
    "prompt following (share of prompt attributes a CNN trained on procedural scenes reads back "
    "from the image; not CLIP score)"
)

ImageLike = Image.Image | np.ndarray


# ---- Fréchet distance ----

def _feature_matrix(feats: Any, name: str) -> np.ndarray:
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: want an (n, d) feature matrix, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or infinity")
    return x


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix; round-off negative eigenvalues become 0."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(feats_a: Any, feats_b: Any) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets.

    tr (S_a S_b)^(1/2) is computed as tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): the inner matrix is
    symmetric PSD, so symmetric eigen-decompositions suffice (no complex round-off, no scipy), and
    singular covariances (fewer images than dimensions) need no epsilon.
    """
    a, b = _feature_matrix(feats_a, "feats_a"), _feature_matrix(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = a.mean(axis=0) - b.mean(axis=0)
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(value, 0.0)


@dataclass(frozen=True)
class FrechetScore:
    """A Fréchet distance and what it was computed from; ``kind`` names the feature extractor."""

    value: float
    n_generated: int
    n_reference: int
    kind: str
    #: What identifies the features: the scene extractor's config hash, or the weights path.
    extractor: str

    def to_json(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 4), "n_generated": self.n_generated, "n_reference": self.n_reference,
            "kind": self.kind, "extractor": self.extractor,
        }


def scene_fid(generated_images: Sequence[ImageLike], reference_images: Sequence[ImageLike], extractor: SceneFeatures) -> FrechetScore:
    """scene-FID between generated images and clean reference images (e.g. the ICD test split)."""
    generated, reference = list(generated_images), list(reference_images)
    _enough_for_fid("scene-FID", generated, reference)
    value = frechet_distance(extractor.features(generated), extractor.features(reference))
    return FrechetScore(value, len(generated), len(reference), SCENE_FID_KIND, _extractor_name(extractor))


def _enough_for_fid(kind: str, generated: list[Any], reference: list[Any]) -> None:
    """Refuse a Fréchet distance over fewer than 2 images a side, saying so: a covariance needs two
    (the error was 'feats_a: need at least 2 feature vectors', scoring one prompt)."""
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(f"{kind} needs at least 2 generated and 2 reference images, got {len(generated)} generated and "
                         f"{len(reference)} reference: score more prompts or images per prompt, or --no-quality for the ICR alone")


def _extractor_name(extractor: SceneFeatures) -> str:
    return f"scene-features/{extractor.id} ({extractor.image_size} px)"


# ---- prompt following ----

@dataclass(frozen=True)
class PromptFollowing:
    """How much of each prompt the extractor reads back from its image.

    ``mean``: per image, the share of its prompt's attributes read back, averaged over images (with
    a bootstrap interval over images); ``exact``: share of images with every attribute right;
    ``per_attribute``: share right per attribute, over the prompts that ask for it. ``ceiling`` is
    ``mean`` for clean renders of held-out scenes: what flawless images would get from this extractor.
    """

    mean: Interval
    exact: float
    per_attribute: dict[str, float]
    per_attribute_n: dict[str, int]
    n: int
    ceiling: float | None
    kind: str
    extractor: str
    #: Per image, the share of its prompt's attributes read back (what ``mean`` averages); not written
    #: to JSON: the protocol reads it to put an interval over training seeds and prompts.
    per_image: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean.to_json(), "exact": round(self.exact, 5),
            "per_attribute": {k: round(v, 5) for k, v in self.per_attribute.items()},
            "per_attribute_n": self.per_attribute_n, "n": self.n, "ceiling": self.ceiling,
            "kind": self.kind, "extractor": self.extractor,
        }


def prompt_attributes(prompt: Scene | str) -> dict[str, str]:
    """What a prompt asks for: from a ``Scene``, or parsed from its templated caption."""
    if isinstance(prompt, Scene):
        return scene_attributes(prompt)
    if isinstance(prompt, str):
        return caption_attributes(prompt)
    raise SceneFeaturesError(f"want a Scene or a caption, got {type(prompt).__name__}")


def prompt_following(
    images: Sequence[ImageLike],
    scenes_or_captions: Sequence[Scene | str],
    extractor: SceneFeatures,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PromptFollowing:
    """Compare the extractor's reading of each image with what its prompt asked for."""
    images, prompts = list(images), list(scenes_or_captions)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    expected = [prompt_attributes(p) for p in prompts]
    for i, wanted in enumerate(expected):
        for name, value in wanted.items():
            if value not in extractor.vocab.get(name, ()):
                raise SceneFeaturesError(
                    f"prompt {i}: {name} = {value!r} is outside the extractor's vocabulary "
                    f"({extractor.vocab.get(name, 'no such attribute')}); train it on this prompt's scene config"
                )
    predicted = extractor.predict(images)
    hits = [{name: got.get(name) == value for name, value in wanted.items()} for got, wanted in zip(predicted, expected)]
    names = [name for name in extractor.vocab if any(name in h for h in hits)]
    per_attribute_n = {name: sum(name in h for h in hits) for name in names}
    per_attribute = {name: sum(h[name] for h in hits if name in h) / per_attribute_n[name] for name in names}
    per_image = [float(np.mean(list(h.values()))) for h in hits]
    ceiling = extractor.info.get("heldout", {}).get("clean", {}).get("mean_per_image")
    return PromptFollowing(
        mean=bootstrap_mean(per_image, resamples, seed, level),
        exact=float(np.mean([all(h.values()) for h in hits])),
        per_attribute=per_attribute,
        per_attribute_n=per_attribute_n,
        n=len(images),
        ceiling=ceiling,
        kind=PROMPT_FOLLOWING_KIND,
        extractor=_extractor_name(extractor),
        per_image=tuple(per_image),
    )


# ---- paper track: torchmetrics, weights from a local path ----

class MissingDependencyError(ImportError):
    """An optional package is not installed; the message says how to install it."""


def _torchmetrics(module: str, name: str, extra: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise MissingDependencyError(
            f"the paper track's {name} needs torchmetrics, which is optional and not installed ({e}). "
            f"Install it with: pip install 'torchmetrics[{extra}]>=1.7'"
        ) from None


def _local_path(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: {p} does not exist (weights are read locally, never downloaded)")
    return p


#: torch's switches that force ``torch.load`` to weights-only (or off it), whatever its caller passes.
FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def weights_only_loads(path: Path) -> Iterator[None]:
    """While the block runs, every ``torch.load`` is weights-only (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``,
    which overrides a caller's ``weights_only=False``; a ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` in the
    environment is set aside): unpickling ``path`` builds tensors and containers, never other
    objects. A pickle holding anything else raises ``ValueError`` naming ``path``."""
    saved = {name: os.environ.get(name) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
    try:
        yield
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: a pickle holding objects other than tensors, which is never loaded "
                         "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth holds only tensors)") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def safetensors_clip_folder(model: Path) -> Path:
    """``model``, a transformers ``CLIPModel`` save, once it is sure transformers reads its weights
    from safetensors: ``model.safetensors``, or a shard index naming only safetensors files beside
    it, and no ``config.json`` field naming another file. Without them transformers falls back to
    ``pytorch_model.bin``, a pickle: refused, naming the folder."""
    from benchmark.models.pipelines import PICKLED_SUFFIXES, SAFETENSORS_INDEX, check_safetensors_index, check_weights_config

    if not model.is_dir():
        raise ValueError(f"clip_model: {model} is not a folder (want a transformers CLIPModel save, with model.safetensors)")
    check_weights_config(model)
    for index in sorted(p for p in model.iterdir() if SAFETENSORS_INDEX.search(p.name)):
        check_safetensors_index(index)
    if not ((model / "model.safetensors").is_file() or (model / "model.safetensors.index.json").is_file()):
        pickled = sorted(p.name for p in model.iterdir() if p.suffix in PICKLED_SUFFIXES)
        found = f"only {', '.join(pickled)}, a pickle, which is never loaded" if pickled else "found no weights"
        raise ValueError(f"{model}: no model.safetensors ({found}); save it with "
                         "CLIPModel.from_pretrained(...).save_pretrained(folder, safe_serialization=True) where you trust the file")
    return model


def _uint8_chw(images: Sequence[ImageLike]) -> list[Any]:
    out = []
    for i, image in enumerate(images):
        if isinstance(image, Image.Image):
            a = np.asarray(image.convert("RGB"))
        elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            a = image
        else:
            raise ValueError(f"image {i}: want a PIL image or an HxWx3 uint8 array")
        out.append(torch.from_numpy(np.array(a)).permute(2, 0, 1))  # a copy: PIL's array is read-only, which torch warns of
    return out


def _batches(tensors: list[Any], batch: int) -> Any:
    """Stacked batches; a batch of mixed sizes is fed one image at a time (the metrics resize each)."""
    for i in range(0, len(tensors), batch):
        chunk = tensors[i:i + batch]
        if len({t.shape for t in chunk}) == 1:
            yield torch.stack(chunk)
        else:
            yield from (t[None] for t in chunk)


def paper_fid(
    generated_images: Sequence[ImageLike],
    reference_images: Sequence[ImageLike],
    inception_weights: str | Path,
    device: str = "cpu",
    batch: int = 32,
) -> FrechetScore:
    """Inception FID (torchmetrics, 2048-d pool features), the FID-Inception weights read from a local file
    (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``). That file is a pickle: torch-fidelity
    reads it with ``torch.load``, which :func:`weights_only_loads` keeps to tensors."""
    FrechetInceptionDistance = _torchmetrics("torchmetrics.image.fid", "FrechetInceptionDistance", "image")
    weights = _local_path(inception_weights, "inception_weights")
    try:
        with weights_only_loads(weights):  # torch-fidelity reads the file with torch.load
            metric = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(weights))
    except TypeError as e:
        raise MissingDependencyError(
            f"this torchmetrics cannot load Inception weights from a path ({e}); "
            "pip install 'torchmetrics[image]>=1.7'"
        ) from None
    metric = metric.to(device)
    generated, reference = _uint8_chw(list(generated_images)), _uint8_chw(list(reference_images))
    _enough_for_fid("FID", generated, reference)
    for tensors, real in ((reference, True), (generated, False)):
        for x in _batches(tensors, batch):
            metric.update(x.to(device), real=real)
    kind = f"FID (torchmetrics FrechetInceptionDistance, 2048-d Inception pool features, weights {weights.name})"
    return FrechetScore(float(metric.compute()), len(generated), len(reference), kind, str(weights))


@dataclass(frozen=True)
class ClipScore:
    """torchmetrics CLIP score: mean of max(100 cos(image, caption), 0) over images."""

    value: float
    n: int
    kind: str
    model: str

    def to_json(self) -> dict[str, Any]:
        return {"value": round(self.value, 4), "n": self.n, "kind": self.kind, "model": self.model}


def paper_clip_score(
    images: Sequence[ImageLike],
    captions: Sequence[str],
    clip_model: str | Path,
    device: str = "cpu",
    batch: int = 32,
) -> ClipScore:
    """CLIP score with a CLIP model read from a local directory (a transformers ``CLIPModel`` save,
    its weights in safetensors: see :func:`safetensors_clip_folder`)."""
    CLIPScore = _torchmetrics("torchmetrics.multimodal.clip_score", "CLIPScore", "multimodal")
    model = safetensors_clip_folder(_local_path(clip_model, "clip_model"))
    images, captions = list(images), list(captions)
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    with weights_only_loads(model), part_bars_dropped():  # belt and braces: transformers reads model.safetensors, checked above
        metric = CLIPScore(model_name_or_path=str(model))
    metric = metric.to(device)
    tensors = _uint8_chw(images)
    for i in range(0, len(tensors), batch):
        metric.update([t.to(device) for t in tensors[i:i + batch]], captions[i:i + batch])
    kind = f"CLIP score (torchmetrics CLIPScore, model {model.name})"
    return ClipScore(float(metric.compute()), len(images), kind, str(model))
