"""Scoring what another lab already has: an erased diffusers pipeline, or a folder of images.

Both use the same prompts, seeds, detector, scores and report as the benchmark itself, so their
numbers sit in the same table as ours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images, image_name
from benchmark.models.pipelines import load_pipeline
from benchmark.prompts import read_prompts
from implicit_concept.detector.inference import Detector
from implicit_concept.files import atomic_write_json
from implicit_concept.provenance import environment
from implicit_concept.scoring import ScoreConfig, score_images


def score_pipeline(
    pipeline_dir: Path,
    out: Path,
    detector_path: Path,
    prompts: str,
    num_prompts: int,
    negative_prompt: str = "",
    settings: GenerationSettings = GenerationSettings(),
    conf: float = 0.25,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate from the evaluation prompts with ``pipeline_dir`` (resumable), then score."""
    detector = Detector.load(detector_path)  # a detector that cannot be used fails before generation, not after
    pipe = load_pipeline(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    rows = read_prompts(prompts, limit=num_prompts)
    paths = generate_images(diffusers_generate_fn(pipe, settings), rows, Path(out) / "images", negative_prompt, settings, progress)
    return _score(paths, Path(out), detector, conf, seed, {"pipeline": str(pipeline_dir), "negative_prompt": negative_prompt, "prompts": prompts, "num_prompts": num_prompts, "generation": settings.__dict__})


def score_image_folder(
    folder: Path, out: Path, detector_path: Path, prompts: str, num_prompts: int, images_per_prompt: int = 1, conf: float = 0.25, seed: int = 0
) -> dict[str, Any]:
    """Score images named ``{case_number}_{i}.png`` after the prompts CSV; every one must exist."""
    rows = read_prompts(prompts, limit=num_prompts)
    paths = [Path(folder) / image_name(p, i) for p in rows for i in range(images_per_prompt)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} of {len(paths)} images named by {prompts} are missing, first {missing[0].name}")
    return _score(paths, Path(out), Detector.load(detector_path), conf, seed, {"images": str(folder), "prompts": prompts, "num_prompts": num_prompts})


def _score(paths: list[Path], out: Path, detector: Detector, conf: float, seed: int, inputs: dict[str, Any]) -> dict[str, Any]:
    report = score_images(paths, detector, ScoreConfig(conf=conf, seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "scores.json")
    summary = {
        "inputs": inputs,
        "environment": environment(),
        "concepts": {c: s.to_json() for c, s in report.concepts.items()},
        "table": report.table(),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
