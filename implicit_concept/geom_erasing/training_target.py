"""Geom-Erasing as switches: what a training sample's caption and loss weights become.

Each switch is one of the paper's ablation steps, so ``sd`` (all off), ``ge-name``, ``ge-geometry``
and ``ge-full`` are the same code with different configs:

- ``concept_name``: append the concept's word ("qr code") or, with ``concept_token``, a new token
  ("<qrcode>") to the caption of an image where the concept is present;
- ``geometry``: append the location tokens of every grid bin the concept's box touches;
- ``reweight``: weight the loss on the latent grid by ``a`` outside the concept's region (see
  :mod:`implicit_concept.geom_erasing.loss_weights`).

Where the boxes come from is ``geometry_source``: the shard's ground truth, a detector, ground truth
moved to a chosen IoU ("degraded"), or "existence" (a classifier's view: the concept's name, no box).
Choices the paper leaves open are recorded fields: ``alpha`` (2.0), ``grid`` (4), ``concept_token``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.concepts import concept as concept_by_name
from implicit_concept.geom_erasing.degraded_boxes import degrade_box
from implicit_concept.geom_erasing.location_tokens import (
    DEFAULT_GRID,
    GeometricCaption,
    bins_for_box,
    check_grid,
    geometric_caption,
    location_tokens,
    negative_prompt,
)
from implicit_concept.geom_erasing.loss_weights import DEFAULT_ALPHA, check_alpha, weight_map
from implicit_concept.json_records import read_json_object
from implicit_concept.sample import Box, covering_box

GEOMETRY_SOURCES = ("ground_truth", "detector", "existence", "degraded")
SETTINGS = ("data_removal", "model_removal")
#: Written into a trained pipeline's directory, so its negative prompt can be rebuilt from it alone.
METADATA_FILE = "geom_erasing.json"

#: ``detect(image) -> [(concept, confidence, (x1, y1, x2, y2)), ...]``; objects with those attributes also do.
DetectFn = Callable[[Image.Image], Iterable[Any]]


@dataclass(frozen=True)
class GeomErasingConfig:
    """Which parts of Geom-Erasing are on, and the choices the paper leaves open."""

    concept_name: bool = True
    geometry: bool = True
    reweight: bool = True
    alpha: float = DEFAULT_ALPHA
    grid: int = DEFAULT_GRID
    geometry_source: str = "ground_truth"
    degrade_iou: float | None = None
    setting: str = "data_removal"
    concept_token: bool = False
    concepts: tuple[str, ...] = CONCEPT_NAMES
    #: The confidence a detector's box must reach to count (``geometry_source`` "detector"): one value,
    #: or one per concept (:meth:`at_thresholds`).
    detector_confidence: float | dict[str, float] = 0.25

    def __post_init__(self) -> None:
        for name in ("concept_name", "geometry", "reweight", "concept_token"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_alpha(self.alpha)
        check_grid(self.grid)
        if self.geometry_source not in GEOMETRY_SOURCES:
            raise ValueError(f"geometry_source must be one of {GEOMETRY_SOURCES}, got {self.geometry_source!r}")
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        object.__setattr__(self, "concepts", tuple(self.concepts))
        unknown = [c for c in self.concepts if c not in CONCEPT_NAMES]
        if not self.concepts or unknown:
            raise ValueError(f"concepts must name ICD concepts {CONCEPT_NAMES}, got {self.concepts!r}")
        if self.geometry_source == "degraded":
            iou = self.degrade_iou
            if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
                raise ValueError(f"degrade_iou must be in (0, 1] when geometry_source is 'degraded', got {iou!r}")
        elif self.degrade_iou is not None:
            raise ValueError("degrade_iou is only used with geometry_source 'degraded'")
        if self.geometry_source == "existence" and (self.geometry or self.reweight):
            raise ValueError("geometry_source 'existence' has no boxes: geometry and reweight must be off")
        conf = self.detector_confidence
        if isinstance(conf, dict) and sorted(conf) != sorted(self.concepts):
            raise ValueError(f"detector_confidence per concept must name the concepts {self.concepts!r}, got {sorted(conf)!r}")
        values = list(conf.values()) if isinstance(conf, dict) else [conf]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in values):
            raise ValueError(f"detector_confidence must be in [0, 1] (one value, or one per concept), got {conf!r}")
        if self.setting == "model_removal" and not self.new_tokens():
            raise ValueError("setting 'model_removal' trains only new tokens: turn on geometry or concept_token")

    @classmethod
    def plain(cls) -> "GeomErasingConfig":
        """Every switch off: a plain fine-tune (the benchmark's ``sd``)."""
        return cls(concept_name=False, geometry=False, reweight=False)

    @property
    def active(self) -> bool:
        return self.concept_name or self.geometry or self.reweight

    def term(self, concept: str) -> str:
        """How captions name ``concept``: its word, or its new token."""
        return f"<{concept}>" if self.concept_token else concept_by_name(concept).word

    def new_tokens(self) -> list[str]:
        """Tokens the tokenizer must learn: concept tokens, then the G*G location tokens."""
        tokens = [self.term(c) for c in self.concepts] if self.concept_token and self.concept_name else []
        return tokens + (location_tokens(self.grid) if self.geometry else [])

    def negative_prompt(self) -> str:
        """Every concept's term and all location tokens (where the concept would appear is unknown)."""
        terms = [self.term(c) for c in self.concepts] if self.concept_name else []
        return negative_prompt(terms, self.grid if self.geometry else None)

    def confidence(self, concept: str) -> float:
        """The confidence a detector's box of ``concept`` must reach to count."""
        conf = self.detector_confidence
        return float(conf[concept] if isinstance(conf, dict) else conf)

    def at_thresholds(self, thresholds: dict[str, float]) -> "GeomErasingConfig":
        """This config taking a detector's boxes at its calibrated per-concept ``thresholds``, never
        below the configured confidence: it trains on the boxes the detector's scoring counts, not on
        ones scoring rejects as false positives. One value when every concept has the same, so a
        detector calibrated at the floor gives the config (and cached fine-tune) it always gave."""
        per_concept = {c: max(float(thresholds[c]), self.confidence(c)) for c in self.concepts}
        shared = set(per_concept.values())
        return replace(self, detector_confidence=shared.pop() if len(shared) == 1 else per_concept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingTarget:
    """A sample as Geom-Erasing trains on it."""

    caption: GeometricCaption
    weights: torch.Tensor
    boxes: tuple[tuple[str, Box], ...]

    @property
    def present(self) -> bool:
        """Whether the geometry source says a handled concept is in the image."""
        return bool(self.boxes)


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on (seed, sample key): degraded boxes survive resumes and reorderings."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big")])


def concept_boxes(
    image: Image.Image,
    instances: Sequence[tuple[str, Box]],
    config: GeomErasingConfig,
    detect: DetectFn | None = None,
    rng: np.random.Generator | None = None,
) -> list[tuple[str, Box]]:
    """The (concept, box) pairs the configured geometry source reports for ``image``.

    With "existence" the boxes are the ground truth's, but only presence is used downstream.
    """
    width, height = image.size
    if config.geometry_source == "detector":
        if detect is None:
            raise ValueError("geometry_source 'detector' needs a detect function")
        found = []
        for det in detect(image):
            concept, confidence, box = _detection_fields(det)
            clipped = covering_box(box, width, height)
            if concept in config.concepts and confidence >= config.confidence(concept) and clipped is not None:
                found.append((concept, clipped))
        return found
    kept = [(c, b) for c, b in instances if c in config.concepts]
    if config.geometry_source == "degraded":
        if rng is None:
            raise ValueError("geometry_source 'degraded' needs an rng")
        return [(c, degrade_box(b, float(config.degrade_iou), rng, width, height)) for c, b in kept]
    return kept


def _detection_fields(det: Any) -> tuple[str, float, Sequence[float]]:
    if hasattr(det, "concept"):
        return det.concept, float(det.confidence), det.box
    concept, confidence, box = det
    return concept, float(confidence), box


def training_target(
    image: Image.Image,
    caption: str,
    instances: Sequence[tuple[str, Box]],
    config: GeomErasingConfig,
    tokenizer: Any,
    latent_hw: tuple[int, int],
    detect: DetectFn | None = None,
    rng: np.random.Generator | None = None,
) -> TrainingTarget:
    """Caption and ``latent_hw`` loss weights for ``image`` (boxes in its pixels) under ``config``."""
    width, height = image.size
    boxes = concept_boxes(image, instances, config, detect, rng) if config.active else []
    terms = []
    for concept in config.concepts:
        mine = [box for c, box in boxes if c == concept]
        if not mine:
            continue
        bins = {mn for box in mine for mn in bins_for_box(box, width, height, config.grid)} if config.geometry else set()
        term = config.term(concept) if config.concept_name else ""
        if term or bins:
            terms.append((term, sorted(bins, key=lambda mn: (mn[1], mn[0]))))
    text = geometric_caption(caption, terms, tokenizer)
    grid_h, grid_w = latent_hw
    region = [b for _, b in boxes] if config.reweight else []
    weights = weight_map(region, width, height, grid_w, grid_h, config.alpha)
    return TrainingTarget(caption=text, weights=weights, boxes=tuple(boxes))


def write_metadata(pipeline_dir: str | Path, config: GeomErasingConfig) -> None:
    """Record the config beside a trained pipeline, with the negative prompt it implies."""
    record = {"config": config.to_dict(), "negative_prompt": config.negative_prompt()}
    Path(pipeline_dir, METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def negative_prompt_for(pipeline_dir: str | Path) -> str:
    """The negative prompt a Geom-Erasing pipeline needs at sampling; "" for a pipeline trained without
    it. The record is read by the one rule for JSON records (:func:`read_json_object`): a FIFO in its
    place, a damaged or hand-edited one is refused, naming it, never sampled without its prompt."""
    path = Path(pipeline_dir, METADATA_FILE)
    try:
        negative = read_json_object(path).get("negative_prompt")
    except FileNotFoundError:
        return ""
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, where Geom-Erasing's metadata (JSON) was expected") from None
    if not isinstance(negative, str):
        raise ValueError(f"{path}: not Geom-Erasing metadata (no negative_prompt text in it)")
    return negative
