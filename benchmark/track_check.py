"""Check a whole track, every sub-table and every method, before any stage runs.

diffusers' training scripts end ``parse_args`` with their sanity checks so every error surfaces in
the first second; a track does the same here: a typo in ``[esd]`` or a wrong method name fails
before the dataset, detector and base model are built (an hour on the tiny track), naming the
table and the field.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmark.evaluation.scene_features import SceneFeaturesConfig
from benchmark.generation import GenerationSettings
from benchmark.methods import REGISTRY, get_method
from benchmark.methods.esd import ESDConfig
from benchmark.methods.finetuned import FINETUNED, GEOM_SWITCHES
from benchmark.methods.forget_me_not import FMNConfig
from benchmark.prompts import read_prompts, resolve_prompts
from benchmark.track import DETECTOR_SUBSET, Track, TrackError
from benchmark.models.pipelines import TinyPipelineConfig, build_scheduler, check_size
from benchmark.training import TrainingConfig, launched_processes
from benchmark.training.data import batch_split_refusal
from benchmark.training.memory import mixed_precision_refusal
from builders.recipe import MAX_IMAGE_SIZE, Recipe, load_recipe, source_from_spec
from implicit_concept.detector.training import load_scale
from implicit_concept.geom_erasing.training_target import GeomErasingConfig
from implicit_concept.validate import check_fields, check_like_defaults, check_number, check_positive

QUALITY_KINDS = ("scene", "paper", "none")


def check_track(track: Track, methods: Sequence[str] = (), source: str | None = None, pretrained: Path | None = None,
                detector: Path | None = None) -> None:
    """Raise :class:`TrackError` naming the first bad table or field of ``track`` (and its file);
    ``methods`` are the command line's ``--method`` values (registered names or
    ``package.module:Class``), ``source`` its ``--source`` (which replaces the recipe's source),
    ``pretrained`` its ``--pretrained`` (which replaces the track's embedded base) and ``detector``
    its ``--detector`` (which replaces the detector trained on the recipe's icd-mixed)."""
    unregistered = [m for m in track.methods if m not in REGISTRY]
    if unregistered:
        raise TrackError(
            f"{track.where}: methods: {unregistered} are not registered methods (known: {', '.join(REGISTRY)}); "
            "a plug-in is named on the command line with --method package.module:Class"
        )
    names = [_flag(lambda: get_method(spec).name) for spec in methods]
    folded = [name.casefold() for name in names]  # one folder on a case-insensitive filesystem (macOS, Windows)
    twice = sorted({name for name, key in zip(names, folded) if folded.count(key) > 1})
    if twice:
        raise TrackError(f"--method: {twice} named more than once (names differing in case only are one folder on macOS "
                         "and Windows); a run holds one method per name")
    if pretrained is None:
        _needs_pretrained(track)
    for name, suffix in (("recipe", ".toml"), ("prompts", ".csv")):
        _read_from_here(track, name, suffix)
    recipe = _table(track, "recipe", lambda: load_recipe(track.recipe, {"source": source_from_spec(source)} if source else None))
    _table(track, "recipe", lambda: _subsets_read(track, recipe, trains_detector=detector is None))
    _table(track, "detector_scale", lambda: load_scale(track.detector_scale))
    _table(track, "prompts", lambda: _prompts(track))
    base = _table(track, "[base]", track.base_model_config)
    if pretrained is None:
        _table(track, "[base.pipeline]", lambda: check_size(base.pipeline))
    _table(track, "[base.training]", lambda: _training(base.training, on_this_machine=pretrained is None))
    _table(track, "[finetune]", lambda: check_fields(track.finetune, [f.name for f in fields(TrainingConfig) if f.name != "seed"], "finetune"))
    _table(track, "[finetune]", lambda: _training(TrainingConfig(**{**track.finetune, "seed": track.seed})))
    generation = _table(track, "[generation]", lambda: _config(GenerationSettings, track.generation, "generation"))
    _table(track, "[generation]", lambda: _image_size(generation, None if pretrained else base.pipeline))
    esd = _table(track, "[esd]", lambda: _config(ESDConfig, track.esd, "esd", positive=("steps", "lr", "ddim_steps"), non_negative=("negative_guidance", "sample_guidance")))
    if pretrained is None:
        _table(track, "[generation]", lambda: _within_timesteps("steps", generation.steps, base.pipeline))
        _table(track, "[esd]", lambda: _within_timesteps("ddim_steps", esd.ddim_steps, base.pipeline))
    _table(track, "[fmn]", lambda: _config(FMNConfig, track.fmn, "fmn", positive=("steps", "lr", "batch_size", "max_images")))
    _table(track, "[geom_erasing]", lambda: _geom_erasing(track))
    _table(track, "[quality]", lambda: _quality(track.quality))


def _read_from_here(track: Track, name: str, suffix: str) -> None:
    """A track's file paths are read from the current folder, as a recipe's are: one written relative
    to the track file's folder, found there but not here, is refused saying so and where it is."""
    value, file = getattr(track, name), getattr(track, "_file", None)
    path = Path(value)
    if file is None or path.suffix != suffix or path.is_absolute() or path.exists():
        return
    beside = Path(file).parent / path
    if beside.exists():
        raise TrackError(f"{track.where}: {name}: {value}: not in the current folder, {Path.cwd()}, which a relative path "
                         f"in a track is read from (not the track file's folder, which holds {beside}); give that path")


def _subsets_read(track: Track, recipe: Recipe, trains_detector: bool) -> None:
    """The recipe holds every subset the run reads, each drawing the concepts it is read for: the
    subsets fine-tuned on and scored (:meth:`Track.groups`), and icd-mixed, which the detector
    learns every concept from. A subset missing was found only once the base and detector stages had
    run; one without its concept made a detector blind to it, or a fine-tune with nothing to erase."""
    needs = {name: set(concepts) for name, concepts in track.groups()}
    if trains_detector:
        needs.setdefault(DETECTOR_SUBSET, set()).update(track.concepts)
    held = {s.name: s for s in recipe.subsets}
    for name, concepts in needs.items():
        subset = held.get(name)
        if subset is None:
            raise ValueError(f"{track.recipe!r} has no subset {name!r}, which this track reads (its subsets: {', '.join(held)})")
        lacking = sorted(concepts - set(subset.concepts)) if subset.fraction > 0 else sorted(concepts)
        if lacking:
            raise ValueError(f"{track.recipe!r}: subset {name!r} draws {list(subset.concepts)} on a fraction {subset.fraction:g} "
                             f"of its images, and this track reads it for {lacking}")


def _table(track: Track, where: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except TrackError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise TrackError(f"{track.where}: {where}: {e}") from None


def _flag(build: Callable[[], Any]) -> Any:
    """A command-line flag's value (``--method``): its errors name the flag, not the track file,
    which is not where the problem lies."""
    try:
        return build()
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        said = str(e).removeprefix("--method ")
        raise TrackError(f"--method: {said}") from None


def _config(cls: type, options: dict[str, Any], where: str, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> Any:
    """``cls`` from a track table: no unknown field, each field of its default's type, the named ones in range."""
    check_fields(options, [f.name for f in fields(cls)], where)
    check_like_defaults(cls, options, where)
    check_positive(where, options, positive)
    for key in non_negative:
        if key in options:
            check_number(f"{where}.{key}", options[key], 0, math.inf)
    return cls(**options)


def _prompts(track: Track) -> None:
    """The prompts CSV exists, parses, and holds at least ``num_prompts`` rows: a run never scores
    fewer prompts than its track records (``test-split`` is counted once the dataset is built)."""
    if track.prompts == "test-split":
        return
    try:
        available = len(read_prompts(track.prompts, limit=track.num_prompts))
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    if available < track.num_prompts:
        raise ValueError(
            f"num_prompts = {track.num_prompts}, but {resolve_prompts(track.prompts)} holds only {available} prompts; "
            "lower num_prompts or use a longer prompts file"
        )


def _needs_pretrained(track: Track) -> None:
    """A track meant for a base from disk (:attr:`Track.needs_pretrained`) run without ``--pretrained``:
    say so, rather than compare its size with a base it never meant to use."""
    if track.needs_pretrained:
        raise TrackError(
            f"{track.where}: track {track.name!r} needs --pretrained (a local Stable Diffusion diffusers folder, "
            f"e.g. SD v1.5): it has no [base] table, and its [generation] image_size = {track.generation['image_size']} is not the embedded "
            f"base's {TinyPipelineConfig().image_size} px"
        )


def _training(config: TrainingConfig, on_this_machine: bool = True) -> None:
    """The numbers of a training table, and (``on_this_machine``: it will train here) its mixed
    precision on this machine and its global batch over this launch's processes: "fp16" without a
    GPU, or a batch_size N processes cannot share, fails at the first step otherwise, after the
    dataset and detector stages."""
    if on_this_machine:
        refusal = mixed_precision_refusal(config.mixed_precision)
        if refusal:
            raise ValueError(f"mixed_precision = {refusal}")
        split = batch_split_refusal(config.batch_size, launched_processes())
        if split:
            raise ValueError(f"batch_size = {split}")
    if config.warmup_steps > config.steps:
        raise ValueError(f"warmup_steps = {config.warmup_steps} is more than steps = {config.steps}: the learning rate would never warm up")
    check_number("learning_rate", config.learning_rate, 0, math.inf, open_lo=True)
    check_number("weight_decay", config.weight_decay, 0, math.inf)


def _within_timesteps(name: str, steps: int, pipeline: TinyPipelineConfig) -> None:
    """Sampling steps the embedded base's scheduler can take, as it spaces them: too many failed in
    the first method's sampling (or ESD's edit), after every fine-tune had trained."""
    scheduler = build_scheduler(pipeline)
    try:
        scheduler.set_timesteps(steps)
        fits = int(scheduler.timesteps.max()) < pipeline.num_train_timesteps
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} = {steps}: too many for the embedded base's scheduler, trained on {pipeline.num_train_timesteps} "
                         "timesteps ([base.pipeline] num_train_timesteps); take fewer steps")


def _image_size(settings: GenerationSettings, pipeline: Any) -> None:
    """Images the base can sample: the embedded base's own size; a ``--pretrained`` pipeline's a
    multiple of 8 (its VAE), no larger than a recipe's images."""
    if pipeline is not None and settings.image_size != pipeline.image_size:
        raise ValueError(f"image_size = {settings.image_size}, but the embedded base model ([base.pipeline]) makes "
                         f"{pipeline.image_size} px images; set [base.pipeline] image_size, or run with --pretrained")
    if pipeline is None and settings.image_size % 8:
        raise ValueError(f"image_size = {settings.image_size}: a diffusers pipeline needs a multiple of 8")
    if settings.image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size = {settings.image_size}: at most {MAX_IMAGE_SIZE}, the largest image a recipe makes")


def _geom_erasing(track: Track) -> None:
    """Shared choices, and sub-tables named after the fine-tuned methods they set alone. A method's
    switches (which parts of Geom-Erasing it runs) are its own, and the concepts the track's: in
    the shared table they were silently overridden, so they are refused there."""
    choices = [f.name for f in fields(GeomErasingConfig) if f.name not in ("concepts", *GEOM_SWITCHES)]
    for name, value in track.geom_erasing.items():
        if isinstance(value, dict) and name not in FINETUNED:
            raise ValueError(f"[geom_erasing.{name}]: not a fine-tuned method (known: {', '.join(FINETUNED)})")
        if isinstance(value, dict):
            check_fields(value, [*choices, *GEOM_SWITCHES], f"geom_erasing.{name}")
        elif name == "concepts":
            raise ValueError("geom_erasing.concepts: the track's concepts, set by its top-level concepts, not here")
        elif name in GEOM_SWITCHES:
            raise ValueError(f"geom_erasing.{name}: a method's own switch (ge-name, ge-geometry and ge-full differ in it), "
                             f"not a shared choice; set it in a method's sub-table, [geom_erasing.<method>]")
        else:
            check_fields([name], choices, "geom_erasing")
    for method in FINETUNED.values():
        method.geom_config(track.geom_erasing, track.concepts)


def _quality(options: dict[str, Any]) -> None:
    kind = options.get("kind", "scene")
    if not isinstance(kind, str) or kind not in QUALITY_KINDS:
        raise ValueError(f"kind must be one of {QUALITY_KINDS}, got {kind!r}")
    if kind == "scene":
        scene_options = {k: v for k, v in options.items() if k != "kind"}
        check_fields(scene_options, [f.name for f in fields(SceneFeaturesConfig)], "quality")
        SceneFeaturesConfig(**scene_options)
    elif kind == "paper":
        check_fields(options, ("kind", "fid_weights", "clip_weights"), "quality")
        missing = [k for k in ("fid_weights", "clip_weights") if not options.get(k)]
        if missing:
            raise ValueError(f"kind 'paper' needs local weight paths for {missing} (torch-fidelity's "
                             "weights-inception-2015-12-05-6726825d.pth, a transformers CLIPModel folder; never downloaded): "
                             "set them in a copy of this track file and pass the copy to --track, or kind = \"none\" for ICR alone")
        for key in ("fid_weights", "clip_weights"):
            if not isinstance(options[key], str) or not Path(options[key]).exists():
                raise ValueError(f"{key}: {options[key]!r}: no such file or folder (the weights are read locally, never downloaded)")
    else:
        check_fields(options, ("kind",), "quality")
