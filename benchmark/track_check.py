"""Check a whole track, every sub-table and every method, before any stage runs.

diffusers' training scripts end ``parse_args`` with their sanity checks so every error surfaces in
the first second; a track does the same here: a typo in ``[esd]`` or a wrong method name fails
before the dataset, detector and base model are built (an hour on the tiny track), naming the
table and the field.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Sequence

from benchmark.evaluation.scene_features import SceneFeaturesConfig
from benchmark.generation import GenerationSettings
from benchmark.methods import REGISTRY, get_method
from benchmark.methods.esd import ESDConfig
from benchmark.methods.finetuned import FINETUNED
from benchmark.methods.forget_me_not import FMNConfig
from benchmark.track import Track, TrackError
from benchmark.training import TrainingConfig
from builders.recipe import load_recipe, source_from_spec
from implicit_concept.detector.training import load_scale
from implicit_concept.validate import check_fields

QUALITY_KINDS = ("scene", "paper", "none")


def check_track(track: Track, methods: Sequence[str] = (), source: str | None = None) -> None:
    """Raise :class:`TrackError` naming the first bad table or field of ``track``; ``methods`` are
    the command line's ``--method`` values (registered names or ``package.module:Class``) and
    ``source`` its ``--source`` (which replaces the recipe's source)."""
    unregistered = [m for m in track.methods if m not in REGISTRY]
    if unregistered:
        raise TrackError(
            f"track {track.name}: methods: {unregistered} are not registered methods (known: {', '.join(REGISTRY)}); "
            "a plug-in is named on the command line with --method package.module:Class"
        )
    names = [_table(track, "--method", lambda: get_method(spec).name) for spec in methods]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TrackError(f"track {track.name}: --method: {twice} named more than once; a run holds one method per name")
    _table(track, "recipe", lambda: load_recipe(track.recipe, {"source": source_from_spec(source)} if source else None))
    _table(track, "detector_scale", lambda: load_scale(track.detector_scale))
    _table(track, "[base]", track.base_model_config)
    _table(track, "[finetune]", lambda: TrainingConfig(**{**track.finetune, "seed": track.seed}))
    _table(track, "[generation]", lambda: _config(GenerationSettings, track.generation, "generation"))
    _table(track, "[esd]", lambda: _config(ESDConfig, track.esd, "esd"))
    _table(track, "[fmn]", lambda: _config(FMNConfig, track.fmn, "fmn"))
    _table(track, "[geom_erasing]", lambda: _geom_erasing(track))
    _table(track, "[quality]", lambda: _quality(track.quality))


def _table(track: Track, where: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except TrackError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise TrackError(f"track {track.name}: {where}: {e}") from None


def _config(cls: type, options: dict[str, Any], where: str) -> Any:
    check_fields(options, [f.name for f in fields(cls)], where)
    return cls(**options)


def _geom_erasing(track: Track) -> None:
    """Shared choices, and sub-tables named after the fine-tuned methods they set alone."""
    for name, value in track.geom_erasing.items():
        if isinstance(value, dict) and name not in FINETUNED:
            raise ValueError(f"[geom_erasing.{name}]: not a fine-tuned method (known: {', '.join(FINETUNED)})")
    for method in FINETUNED.values():
        method.geom_config(track.geom_erasing, track.concepts)


def _quality(options: dict[str, Any]) -> None:
    kind = options.get("kind", "scene")
    if kind not in QUALITY_KINDS:
        raise ValueError(f"kind must be one of {QUALITY_KINDS}, got {kind!r}")
    if kind == "scene":
        scene_options = {k: v for k, v in options.items() if k != "kind"}
        check_fields(scene_options, [f.name for f in fields(SceneFeaturesConfig)], "quality")
        SceneFeaturesConfig(**scene_options)
    elif kind == "paper":
        check_fields(options, ("kind", "fid_weights", "clip_weights"), "quality")
        missing = [k for k in ("fid_weights", "clip_weights") if not options.get(k)]
        if missing:
            raise ValueError(f"kind 'paper' needs local weight paths for {missing}")
