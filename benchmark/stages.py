"""The benchmark's cached stages: each returns what a later stage needs, building it only when
its inputs (named by content) have not built it before.

dataset -> detector -> base model -> fine-tunes; the protocol (:mod:`benchmark.protocol`) only
sequences them. A killed run resumes because every stage's output is renamed into place whole.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

from benchmark.benchmark_run import BenchmarkRun
from benchmark.generation import pipeline_sha256
from benchmark.methods.interface import FineTune
from benchmark.models.base_model import pretrain_base
from benchmark.models.pipelines import load_pipeline as _load
from benchmark.track import Track
from benchmark.training import PIPELINE_DIR, TrainingConfig, processes, train
from builders.build import build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe, source_from_spec
from builders.verify import require_verified
from implicit_concept.detector.inference import Detector
from implicit_concept.detector.training import load_scale, train_detector
from implicit_concept.detector.weights import FORMAT as DETECTOR_FORMAT
from implicit_concept.detector.weights import RECORD_NAME
from implicit_concept.detector.yolo_env import use_cache
from implicit_concept.files import locked, sha256_file
from implicit_concept.geom_erasing.training_target import GeomErasingConfig
from implicit_concept.provenance import cache_key
from implicit_concept.scoring import clean_images


def dataset(run: BenchmarkRun, build: bool = True) -> Path:
    """The track's ICD shards under ``data_root`` (built, or resumed, and verified on the main
    process): data that does not verify is refused, naming its first problems."""
    recipe = load_recipe(run.track.recipe, {"source": source_from_spec(run.source)} if run.source else None)
    out = run.data_root / recipe.name
    if build:
        build_dataset(recipe, out, workers=run.workers, progress=run.progress)
        require_verified(out)
    return out


def detector(run: BenchmarkRun, dataset: Path) -> Detector:
    """``--detector``, or the track's scale trained on icd-mixed, cached by scale and shard checksums.

    A cached detector is loaded only once its weights match the sha256 its record holds
    (:meth:`Detector.load` checks it); ultralytics' own files go under the run's cache folder.
    """
    use_cache(run.cache)
    if run.detector:
        return Detector.load(run.detector)
    out = detector_dir(run, dataset)
    with locked(out):
        if not (out / RECORD_NAME).is_file():
            train_detector(dataset / "icd-mixed", out, load_scale(run.track.detector_scale))
    return Detector.load(out)


def detector_dir(run: BenchmarkRun, dataset: Path) -> Path:
    """Where the track's detector is cached: named by its scale, the data and the detector's file format."""
    scale = load_scale(run.track.detector_scale)
    checksums = (dataset / CHECKSUMS).read_text()
    key = cache_key({"scale": scale.__dict__, "data": checksums, "format": DETECTOR_FORMAT})
    return run.cache / "detectors" / f"{scale.name}-{key}"


def pretrain_base_model(run: BenchmarkRun) -> Path:
    """The embedded base model (a tiny pipeline pre-trained on clean scenes), cached by its config."""
    return pretrain_base(run.track.base_model_config(), run.cache / "bases", progress=run.progress)


def finetune(run: BenchmarkRun, base: Path, subset: Path, ft: FineTune, detector: Detector, may_train: bool = True) -> Path:
    """The fine-tune ``ft`` on ``subset``'s train split, from ``base`` or from the plain fine-tune
    (``ft.start``), cached under :func:`finetune_key`."""
    if ft.start == "sd":
        base = finetune(run, base, subset, FineTune(seed=ft.seed), detector, may_train)
    config = finetune_config(run.track, ft)
    out = run.root / "models" / subset.name / f"{ft.data}-{finetune_key(base, subset, config, detector)}"
    if not may_train and not (out / PIPELINE_DIR / "model_index.json").is_file():
        raise RuntimeError(
            f"a method asked for a fine-tune it does not declare in finetunes() ({ft}): over several "
            "processes only declared fine-tunes are trained, by all processes together"
        )
    if (out / PIPELINE_DIR / "model_index.json").is_file():
        return out / PIPELINE_DIR  # named by content: made from this base, even one loaded from another path
    detect = detector.detect if config.geom.geometry_source == "detector" else None
    state = processes()
    # Every process of a multi-GPU run trains it, while the main process holds its lock.
    with locked(out, holder=state.is_main_process):
        state.wait_for_everyone()
        return train(base, subset / "train", out, config, detect=detect, progress=run.progress)


def finetune_config(track: Track, ft: FineTune) -> TrainingConfig:
    """The config :func:`finetune` trains ``ft`` with: the track's ``[finetune]`` table, the seed, the
    fine-tune's own overrides and Geom-Erasing switches (one place, so the paper dry run checks the same)."""
    return TrainingConfig(
        **{**track.finetune, "seed": track.seed if ft.seed is None else ft.seed, **ft.training},
        geom=ft.geom or GeomErasingConfig.plain(),
        image_field="clean" if ft.data == "clean" else "image",
    )


def finetune_key(base: Path, subset: Path, config: Any, detector: Any) -> str:
    """What names a cached fine-tune: its inputs by content (the base pipeline's files, so changed
    weights at the same path train anew and a moved copy does not; the training shards, so a rebuilt
    dataset at the same path trains anew), and the detector's weights when its boxes are the geometry."""
    listing = subset.parent / CHECKSUMS
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: missing; the dataset's checksums name the data a fine-tune is cached under")
    train = sorted(line for line in listing.read_text().splitlines() if line.split("  ")[-1].startswith(f"{subset.name}/train/"))
    inputs = {"base": pipeline_sha256(base), "data": subset.name, "train_shards": train, "config": config.to_dict()}
    if config.geom.geometry_source == "detector":
        inputs["detector"] = sha256_file(detector.path)
    return cache_key(inputs)


def load_pipeline(path: Path) -> Any:
    """A saved pipeline, quiet (no per-step progress bars)."""
    pipe = _load(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(test_shards: Path, count: int) -> list:
    """Clean test images, in the order of the evaluation prompts (the test split's captions)."""
    return [image for _, image in islice(clean_images(test_shards), count)]
