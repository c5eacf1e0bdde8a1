"""Benchmark tracks: fixed, named protocol scales (like DataComp's), plain TOML in ``benchmark/tracks/``.

A track fixes the dataset recipe, the base model (or a ``--pretrained`` directory), fine-tuning,
generation, scoring and the methods run; its hash is recorded in every result, and a run folder
refuses to continue under a changed track.
"""
from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from diffusers import PNDMScheduler

from benchmark.generation import GenerationSettings
from benchmark.models.base_model import BaseModelConfig
from benchmark.models.named_scenes import NamedConcepts
from benchmark.models.pipelines import TinyPipelineConfig, build_scheduler
from benchmark.models.sd15 import SCHEDULER as SD15_SCHEDULER
from benchmark.prompts import PROMPTS_DIR, prompts_sha256, read_prompts
from benchmark.targets import Targets
from benchmark.training import TrainingConfig
from builders.recipe import load_recipe
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.provenance import config_hash
from implicit_concept.scoring import REFERENCE_FLOOR
from implicit_concept.scene.grammar import ProceduralConfig
from implicit_concept.validate import (
    MAX_SEED,
    check_choice,
    check_fields,
    check_finite,
    check_folder_name,
    check_int,
    check_str,
    check_unique,
    is_number,
    read_toml,
)
from manifests import RECIPES_DIR

TRACKS_DIR = Path(__file__).resolve().parent / "tracks"


#: per-subset: one fine-tune per concept subset and method (the paper's protocol). mixed: one
#: fine-tune per method on the mixed subset, ICR measured per concept on the same images (a third
#: of the cost; the CPU track's choice, said in its report).
PROTOCOLS = ("per-subset", "mixed")


#: The recipe's subset the track's detector learns every concept from (unless ``--detector`` is given).
DETECTOR_SUBSET = "icd-mixed"
#: The track's tables (TOML ``[table]`` sections), each a mapping.
TABLES = ("base", "finetune", "generation", "esd", "fmn", "geom_erasing", "quality", "targets")
#: The file a track is being read from, so its errors name it (set by :func:`load_track`).
_LOADING_FROM: ContextVar[Path | None] = ContextVar("track_file", default=None)


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
    #: covers seeds and prompts (a crossed bootstrap: seeds, and one set of prompts for all of them). Other methods train with ``seed``.
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
        object.__setattr__(self, "_file", _LOADING_FROM.get())
        try:
            self._check()
        except (TypeError, ValueError) as e:
            raise TrackError(f"{self.where}: {e}") from None

    @property
    def where(self) -> str:
        """What names this track in an error: the file it was read from, else its name."""
        file = getattr(self, "_file", None)
        return str(file) if file is not None else f"track {self.name!r}"

    def _check(self) -> None:
        """Every top-level field's type and range, each error naming the field (tables are checked
        whole by :func:`benchmark.track_check.check_track`)."""
        check_folder_name("name", self.name)
        check_str("recipe", self.recipe)
        check_str("prompts", self.prompts)
        check_str("note", self.note, empty=True)
        check_str("detector_scale", self.detector_scale)
        check_int("num_prompts", self.num_prompts, 1)
        check_int("seed", self.seed, 0, MAX_SEED)
        for name in ("concepts", "methods", "seeds", "seed_methods"):
            if not isinstance(getattr(self, name), (tuple, list)):
                raise ValueError(f"{name}: expected a list, got {getattr(self, name)!r}")
        for name in ("concepts", "methods", "seed_methods"):
            for value in getattr(self, name):
                check_str(name, value)
            check_unique(name, getattr(self, name))
        unknown = [c for c in self.concepts if c not in CONCEPT_NAMES]
        if not self.concepts or unknown:
            raise ValueError(f"concepts: must be among {CONCEPT_NAMES}, got {list(self.concepts)}")
        check_choice("protocol", self.protocol, PROTOCOLS)
        if not self.methods:
            raise ValueError("methods: must not be empty")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: must be distinct integers in [0, {MAX_SEED}], got {list(self.seeds)}")
        if self.seed_methods and len(set(self.seeds)) < 2:
            raise ValueError(f"seed_methods: need two or more distinct seeds, got seeds = {list(self.seeds)}")
        if not set(self.seed_methods) <= set(self.methods):
            raise ValueError(f"seed_methods: {sorted(set(self.seed_methods) - set(self.methods))} are not among its methods")
        for name in ("named_prompts", "detector_backgrounds", "detector_calibration"):
            check_int(name, getattr(self, name), 0)
        if self.named_prompts > self.num_prompts:
            # The named prompts are the first evaluation prompts: more would be scored silently as fewer.
            raise ValueError(f"named_prompts: {self.named_prompts} is more than num_prompts = {self.num_prompts}, "
                             "the evaluation prompts they are the first of")
        if self.conf is not None and not (is_number(self.conf) and REFERENCE_FLOOR <= self.conf < 1):
            # ScoreConfig's bound, checked here so that a track scoring would refuse never claims a run folder.
            raise ValueError(f"conf: expected a number in [{REFERENCE_FLOOR:g}, 1) (scoring keeps no clean-image confidence "
                             f"below {REFERENCE_FLOOR:g}), or no conf for the detector's thresholds; got {self.conf!r}")
        for name in TABLES:
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(f"[{name}]: expected a table, got {getattr(self, name)!r}")
        check_finite("", {f.name: getattr(self, f.name) for f in fields(self)})
        if "seed" in self.finetune:
            raise ValueError("[finetune].seed: set by the track's top-level seed (and seeds), not here")
        if self.targets:
            try:
                targets = Targets.from_dict(self.targets)
            except (TypeError, ValueError) as e:
                raise ValueError(f"[targets]: {e}") from None
            if targets.removal_method not in self.methods:
                raise ValueError(f"[targets].removal_method: {targets.removal_method!r} is not among its methods {list(self.methods)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The track as its sha256 and a run's record hold it: a recipe or prompts file named by path
        is named by its content (``sha256:`` and the recipe's sha256, or the prompts'), or by the
        shipped name whose content it holds; so one file at two paths, or typed two ways, is one
        track, and two files at one relative path from two working folders are two. Shipped names
        stay as written (their tracks' sha256 unchanged); a file not readable here stays as given
        (:func:`benchmark.track_check.check_track` refuses it before any run)."""
        return {**self.to_dict(), "recipe": _recipe_identity(self.recipe), "prompts": _prompts_identity(self.prompts, self.num_prompts)}

    def groups(self) -> list[tuple[str, tuple[str, ...]]]:
        """(training subset, concepts scored on its generations), in run order."""
        if self.protocol == "mixed":
            return [("icd-mixed", self.concepts)]
        return [(f"icd-{c}", (c,)) for c in self.concepts]

    def generation_settings(self) -> GenerationSettings:
        """The ``[generation]`` table. Sampling runs under the fine-tunes' torch threads unless the
        table names its own, so a track's images, like its weights, do not depend on the machine."""
        return GenerationSettings(**{"threads": self.finetune.get("threads"), **self.generation})

    @property
    def needs_pretrained(self) -> bool:
        """A track with no ``[base]`` table whose images are not the embedded base's size is meant
        for a base from disk (the paper track: SD v1.5 at 512 px, ``--pretrained``)."""
        size = self.generation.get("image_size")
        return not self.base and isinstance(size, int) and not isinstance(size, bool) and size != TinyPipelineConfig().image_size

    def sampler(self) -> Any:
        """The scheduler the track's images are drawn with, before a model's noise schedule and
        prediction type are put in (:func:`~benchmark.models.pipelines.track_sampler`): its embedded
        base's (DDIM, which its fine-tunes keep), or for a track run on ``--pretrained`` SD v1.5, the
        PNDM SD v1.5 ships. ``score-pipeline`` samples a handed-over folder with it, so a folder
        saved with another scheduler is judged as a benchmark method is."""
        if self.needs_pretrained:
            return PNDMScheduler(**SD15_SCHEDULER)
        return build_scheduler(self.base_model_config().pipeline)

    def base_model_config(self):
        """The embedded base model's config: ``[base]`` tables over the library's defaults."""
        raw = dict(self.base)
        default = BaseModelConfig()
        try:
            tables = {}
            for key, cls in (("pipeline", TinyPipelineConfig), ("scenes", ProceduralConfig), ("training", TrainingConfig), ("named", NamedConcepts)):
                tables[key] = raw.pop(key, {})
                if not isinstance(tables[key], Mapping):
                    raise ValueError(f"{key}: expected a table, got {tables[key]!r}")
                check_fields(tables[key], [f.name for f in fields(cls)], f"base.{key}")
            check_fields(raw, [f.name for f in fields(BaseModelConfig)], "base")
            return BaseModelConfig(
                pipeline=TinyPipelineConfig(**_tuples(tables["pipeline"])),
                scenes=ProceduralConfig(**{"train": 10_000, "test": 0, **_tuples(tables["scenes"])}),
                training=replace(default.training, **tables["training"]),
                named=NamedConcepts(**_tuples(tables["named"])),
                **raw,
            )
        except (TypeError, ValueError) as e:
            raise TrackError(f"{self.where}: [base]: {e}") from None

    @property
    def sha256(self) -> str:
        return config_hash(self.identity())


def load_track(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Track:
    """A shipped track by name (``debug``, ``tiny``, ...) or a track TOML file; every error names the file."""
    path = Path(name_or_path)
    as_file = path.suffix == ".toml" or len(path.parts) > 1 or (path.is_file() and not (TRACKS_DIR / f"{name_or_path}.toml").is_file())
    if not as_file:
        path = TRACKS_DIR / f"{name_or_path}.toml"
    if path.is_dir():
        raise TrackError(f"{path}: a folder, not a track file")
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in TRACKS_DIR.glob("*.toml")))
        raise TrackError(f"{name_or_path}: no such track file, nor a shipped track (known: {known})")
    raw = read_toml(path, TrackError, "track file")
    raw.update(overrides or {})
    check_fields(raw, [f.name for f in fields(Track)], str(path), TrackError)
    missing = [f.name for f in fields(Track) if f.default is MISSING and f.default_factory is MISSING and f.name not in raw]
    if missing:
        raise TrackError(f"{path}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    token = _LOADING_FROM.set(path)
    try:
        return Track(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except TypeError as e:
        raise TrackError(f"{path}: {e}") from None
    finally:
        _LOADING_FROM.reset(token)


def _recipe_identity(recipe: str) -> str:
    if Path(recipe).suffix != ".toml":
        return recipe
    try:
        digest = load_recipe(recipe, check_components=False).sha256
        shipped = {load_recipe(p.stem, check_components=False).sha256: p.stem for p in sorted(RECIPES_DIR.glob("*.toml"))}
    except (OSError, ValueError):
        return recipe
    return shipped.get(digest, f"sha256:{digest}")


def _prompts_identity(prompts: str, count: int) -> str:
    if Path(prompts).suffix != ".csv":
        return prompts
    try:
        digest = prompts_sha256(read_prompts(prompts, limit=count))
        shipped = {prompts_sha256(read_prompts(p, limit=count)): p.stem for p in sorted(PROMPTS_DIR.glob("*.csv"))}
    except (OSError, ValueError):
        return prompts
    return shipped.get(digest, f"sha256:{digest}")


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
