"""Benchmark tracks: fixed, named protocol scales (like DataComp's), plain TOML in ``benchmark/tracks/``.

A track fixes the dataset recipe, the base model (or a ``--pretrained`` directory), fine-tuning,
generation, scoring and the methods run; its hash is recorded in every result, and a run folder
refuses to continue under a changed track.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from benchmark.generation import GenerationSettings
from benchmark.models.base_model import BaseModelConfig
from benchmark.models.named_scenes import NamedConcepts
from benchmark.models.pipelines import TinyPipelineConfig
from benchmark.targets import Targets
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.provenance import config_hash
from implicit_concept.scene.grammar import ProceduralConfig
from implicit_concept.validate import check_fields

TRACKS_DIR = Path(__file__).resolve().parent / "tracks"


#: per-subset: one fine-tune per concept subset and method (the paper's protocol). mixed: one
#: fine-tune per method on the mixed subset, ICR measured per concept on the same images (a third
#: of the cost; the CPU track's choice, said in its report).
PROTOCOLS = ("per-subset", "mixed")


class TrackError(ValueError):
    """A track file or field is wrong; the message names it."""


@dataclass(frozen=True)
class Track:
    name: str
    recipe: str
    concepts: tuple[str, ...]
    methods: tuple[str, ...]
    prompts: str
    num_prompts: int
    seed: int = 0
    note: str = ""
    protocol: str = "per-subset"
    detector_scale: str = "cpu"
    #: One confidence threshold for every concept; None: the detector's calibrated per-concept thresholds.
    conf: float | None = None
    base: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    esd: dict[str, Any] = field(default_factory=dict)
    fmn: dict[str, Any] = field(default_factory=dict)
    geom_erasing: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    #: Training seeds for ``seed_methods``: each is fine-tuned once per seed, and its ICR interval
    #: covers seeds and prompts (a hierarchical bootstrap). Other methods train with ``seed``.
    seeds: tuple[int, ...] = ()
    seed_methods: tuple[str, ...] = ()
    #: Evaluation prompts asked again with each concept named ("..., with a qr code"), for the base
    #: alone: it must know the names the baselines erase. 0: not measured.
    named_prompts: int = 0
    #: The base's images for clean prompts (icd-mixed's train captions) the detector trains on as
    #: background, and the held-out ones its per-concept thresholds are calibrated on. 0: none.
    detector_backgrounds: int = 0
    detector_calibration: int = 0
    #: Claims the results are checked against (benchmark.targets.Targets); empty: no check.
    targets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [c for c in self.concepts if c not in CONCEPT_NAMES]
        if not self.concepts or unknown:
            raise TrackError(f"track {self.name}: concepts must be among {CONCEPT_NAMES}, got {list(self.concepts)}")
        if self.protocol not in PROTOCOLS:
            raise TrackError(f"track {self.name}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.methods:
            raise TrackError(f"track {self.name}: methods must not be empty")
        if self.num_prompts < 1:
            raise TrackError(f"track {self.name}: num_prompts must be >= 1, got {self.num_prompts}")
        if self.seed_methods and len(set(self.seeds)) < 2:
            raise TrackError(f"track {self.name}: seed_methods need two or more distinct seeds, got seeds = {list(self.seeds)}")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise TrackError(f"track {self.name}: seeds must be distinct integers >= 0, got {list(self.seeds)}")
        if not set(self.seed_methods) <= set(self.methods):
            raise TrackError(f"track {self.name}: seed_methods {sorted(set(self.seed_methods) - set(self.methods))} are not among its methods")
        for name in ("named_prompts", "detector_backgrounds", "detector_calibration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TrackError(f"track {self.name}: {name} must be an integer >= 0, got {value!r}")
        if self.conf is not None and not (isinstance(self.conf, (int, float)) and 0 < self.conf < 1):
            raise TrackError(f"track {self.name}: conf must be in (0, 1), got {self.conf}")
        if self.targets:
            try:
                Targets.from_dict(self.targets)
            except (TypeError, ValueError) as e:
                raise TrackError(f"track {self.name}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """(training subset, concepts scored on its generations), in run order."""
        if self.protocol == "mixed":
            return [("icd-mixed", self.concepts)]
        return [(f"icd-{c}", (c,)) for c in self.concepts]

    def generation_settings(self) -> GenerationSettings:
        """The ``[generation]`` table. Sampling runs under the fine-tunes' torch threads unless the
        table names its own, so a track's images, like its weights, do not depend on the machine."""
        return GenerationSettings(**{"threads": self.finetune.get("threads"), **self.generation})

    def base_model_config(self):
        """The embedded base model's config: ``[base]`` tables over the library's defaults."""
        raw = dict(self.base)
        default = BaseModelConfig()
        try:
            return BaseModelConfig(
                pipeline=TinyPipelineConfig(**_tuples(raw.pop("pipeline", {}))),
                scenes=ProceduralConfig(**{"train": 10_000, "test": 0, **_tuples(raw.pop("scenes", {}))}),
                training=replace(default.training, **raw.pop("training", {})),
                named=NamedConcepts(**_tuples(raw.pop("named", {}))),
                **raw,
            )
        except (TypeError, ValueError) as e:
            raise TrackError(f"track {self.name}: [base]: {e}") from None

    @property
    def sha256(self) -> str:
        return config_hash(self.to_dict())


def load_track(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Track:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = TRACKS_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in TRACKS_DIR.glob("*.toml")))
        raise TrackError(f"{name_or_path}: no such track file, nor a shipped track (known: {known})")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise TrackError(f"{path}: not valid TOML: {e}") from None
    raw.update(overrides or {})
    check_fields(raw, [f.name for f in fields(Track)], str(path), TrackError)
    try:
        return Track(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except TypeError as e:
        raise TrackError(f"{path}: {e}") from None


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
