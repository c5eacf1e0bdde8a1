"""The Data Removal protocol, top to bottom: data -> detector -> base -> per subset and method:
fine-tune (cached) -> generate (resumable) -> score -> report.

Every stage is cached or resumable, so a killed ``make benchmark`` continues where it stopped; the
run folder records the track and refuses to continue under a changed one.

Under ``accelerate launch`` (several GPUs), the processes train together (the base, then every
fine-tune the methods declare) and the main process alone builds the data, trains the detector,
generates and scores; the others wait. The track's batch size is the global batch, so the models
are the ones a single process trains.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.evaluation.quality import paper_clip_score, paper_fid, prompt_following, scene_fid
from benchmark.evaluation.scene_features import SceneFeatures
from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images, pipeline_source
from benchmark.methods import NotImplementedMethod, get_method
from benchmark.methods.interface import MethodContext
from benchmark.prompts import Prompt, read_prompts, shard_prompts, write_prompts
from benchmark.report import plot_icr, results_markdown
from benchmark.sample_grid import method_grid
from benchmark.targets import Targets, check_targets
from benchmark.track_check import check_track
from benchmark.training import processes as process_state
from implicit_concept.detector.inference import Detector
from implicit_concept.files import atomic_write_bytes, atomic_write_json, claim, locked
from implicit_concept.provenance import environment
from implicit_concept.scene.grammar import Scene
from implicit_concept.scoring import CLEAN_REFERENCE_NAME, CleanReference, ScoreConfig, score_images


@dataclass(frozen=True)
class Evaluation:
    """What every method on one training subset is judged with: the same prompts, sampler settings,
    detector and clean reference images."""

    subset: str
    prompts: list[Prompt]
    settings: GenerationSettings
    detector: Detector
    reference: list[Image.Image]

def run_benchmark(run: BenchmarkRun) -> dict[str, Any]:
    """The results (``results.json``'s content) on the main process; ``{}`` on the others.

    The main process holds the run folder's lock throughout, and a second run of the same name fails
    at once, naming the folder and the first one's pid: it would only redo the first one's work and
    overwrite its results. (Runs of other names share the data and the cache, whose entries they
    wait for and reuse.)
    """
    check_track(run.track, run.methods, run.source)
    if not process_state().is_main_process:
        return _run_protocol(run)
    run.root.mkdir(parents=True, exist_ok=True)
    with locked(run.root, wait=False, refusal="wait for it to finish or use another --name"):
        claim(run.root / "run.json", run.record(), "use another --name or remove the folder")
        return _run_protocol(run)


def _run_protocol(run: BenchmarkRun) -> dict[str, Any]:
    """The stages in order, once the main process holds and has claimed the run folder."""
    track = run.track
    processes = process_state()
    main = processes.is_main_process

    # 1. The ICD shards (built once; resumable).
    with _timed(run, "dataset"), processes.main_process_first():
        dataset = stages.dataset(run, build=main)

    # 2. The detector that scores everything, and its false-positive floor on clean images.
    with _timed(run, "detector"), processes.main_process_first():
        detector = stages.detector(run, dataset)

    # 3. The base model every method starts from (every process trains).
    with _timed(run, "base"):
        base = run.pretrained or stages.pretrain_base_model(run)

    settings = GenerationSettings(**track.generation)
    rows = []
    for subset_name, concepts in track.groups():
        subset = dataset / subset_name
        ctx = MethodContext(
            concepts=concepts,
            work_dir=run.root / "methods" / subset_name,
            seed=track.seed,
            finetune=lambda ft, subset=subset: stages.finetune(run, base, subset, ft, detector),
            load_pipeline=stages.load_pipeline,
            train_shards=subset / "train",
            settings={"esd": track.esd, "fmn": track.fmn, "geom_erasing": track.geom_erasing},
            detector=detector,
            base=Path(base),
        )
        specs = run.methods or track.methods
        if processes.num_processes > 1:
            # 4a. Every declared fine-tune, by all processes together; then the main process goes on alone.
            for spec in specs:
                for ft in getattr(get_method(spec), "finetunes", lambda ctx: [])(ctx):
                    ctx.finetune(ft)
            if not main:
                continue
            ctx = replace(ctx, finetune=lambda ft, subset=subset: stages.finetune(run, base, subset, ft, detector, may_train=False))
        prompts = _prompts(run, subset)
        evaluation = Evaluation(subset_name, prompts, settings, detector, stages.reference_images(subset / "test", len(prompts)))
        for spec in specs:
            rows.extend(_run_method(run, spec, ctx, evaluation))
            _write_results(run, rows, detector)
    processes.wait_for_everyone()
    return _write_results(run, rows, detector) if main else {}


def _run_method(run: BenchmarkRun, spec: str, ctx: MethodContext, evaluation: Evaluation) -> list[dict[str, Any]]:
    """Build, generate and score one method on one training subset: a row per concept scored."""
    subset_name, prompts, settings = evaluation.subset, evaluation.prompts, evaluation.settings
    method = get_method(spec)
    rows = [{"concept": c, "method": method.name, "subset": subset_name, "description": getattr(method, "description", "")} for c in ctx.concepts]
    ctx = replace(ctx, work_dir=ctx.work_dir / method.name)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        generator = method.build(ctx)
    except NotImplementedMethod as e:
        return [{**row, "status": f"missing: {e}"} for row in rows]
    timings["build"] = time.perf_counter() - start
    images_dir = run.root / "images" / subset_name / method.name
    start = time.perf_counter()
    generator.pipeline.set_progress_bar_config(disable=True)
    paths = generate_images(
        diffusers_generate_fn(generator.pipeline, settings, **generator.call_kwargs),
        prompts,
        images_dir,
        negative_prompt=generator.negative_prompt,
        settings=settings,
        progress=run.progress,
        desc=f"{subset_name}/{method.name}",
        source={**pipeline_source(generator.pipeline), "call_kwargs": generator.call_kwargs},
    )
    timings["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    report = score_images(paths, evaluation.detector, ScoreConfig(conf=run.track.conf, seed=run.track.seed))
    report.write_json(run.root / "scores" / subset_name / f"{method.name}.json")
    quality = _quality(run, paths, prompts, evaluation.reference)
    timings["score"] = time.perf_counter() - start
    for row in rows:
        score = report.concepts[row["concept"]]
        row.update(
            status="ok",
            negative_prompt=generator.negative_prompt,
            icr=score.icr.to_json(),
            fp_rate=score.fp_rate.to_json(),
            crosscheck={x.checker: {"icr": x.icr.to_json(), "agreement": x.agreement} for x in report.crosschecks if x.concept == row["concept"]},
            timings={k: round(v / len(rows), 1) for k, v in timings.items()},
            **quality,
        )
        if "scene_fid" in quality["quality"]:
            row["fid_x_icr"] = quality["quality"]["scene_fid"] * 100 * score.icr.value
    method_grid(paths[:8], report.images[:8], run.root / "grids" / subset_name / f"{method.name}.png", title=f"{subset_name} / {method.name}")
    return rows


def _prompts(run: BenchmarkRun, subset: Path) -> list[Prompt]:
    """The track's prompts CSV, or (``prompts = "test-split"``) the captions of the subset's test split."""
    if run.track.prompts != "test-split":
        return read_prompts(run.track.prompts, limit=run.track.num_prompts)
    path = run.root / f"prompts-{subset.name}.csv"
    if not path.exists():
        write_prompts(path, shard_prompts(subset / "test", run.track.num_prompts))
    return read_prompts(path)


def _quality(run: BenchmarkRun, paths: list[Path], prompts: list[Prompt], reference: list) -> dict[str, Any]:
    kind = run.track.quality.get("kind", "scene")
    if kind == "none":
        return {"quality": {}, "quality_kinds": []}
    images = [Image.open(p).convert("RGB") for p in paths]
    if kind == "scene":
        options = {k: v for k, v in run.track.quality.items() if k not in ("kind", "image_size")}
        extractor = SceneFeatures.load_or_train(run.cache, image_size=run.track.quality.get("image_size", 64), **options)
        fid = scene_fid(images, reference, extractor)
        scenes = [Scene.from_json(p.scene) if p.scene else p.prompt for p in prompts]
        follow = prompt_following(images, scenes, extractor, seed=run.track.seed)
        return {
            "quality": {"scene_fid": fid.value, "prompt_following": follow.mean.value},
            "quality_detail": {"scene_fid": fid.to_json(), "prompt_following": follow.to_json()},
            "quality_kinds": [fid.kind, follow.kind],
        }
    weights = {k: run.track.quality.get(k) for k in ("fid_weights", "clip_weights")}
    if not all(weights.values()):
        raise ValueError(f"track {run.track.name}: [quality] needs fid_weights and clip_weights (local paths) for kind 'paper'")
    fid = paper_fid(images, reference, weights["fid_weights"])
    clip = paper_clip_score(images, [p.prompt for p in prompts], weights["clip_weights"])
    return {
        "quality": {"fid": fid.value, "clip_score": clip.value},
        "quality_detail": {"fid": fid.to_json(), "clip_score": clip.to_json()},
        "quality_kinds": [fid.kind, clip.kind],
    }


def _write_results(run: BenchmarkRun, rows: list[dict[str, Any]], detector: Detector) -> dict[str, Any]:
    reference = CleanReference.read(detector.path.parent / CLEAN_REFERENCE_NAME)
    config = ScoreConfig(conf=run.track.conf, seed=run.track.seed)
    results = {
        "name": run.name,
        "track": run.track.name,
        "note": run.track.note,
        "config": run.record(),
        "seeds": {"track": run.track.seed, "evaluation_prompts": run.track.prompts},
        "environment": environment(),
        "detector": {"path": str(detector.path), "conf": run.track.conf},
        "fp_rate": {c: reference.fp_rate(c, config).to_json() for c in run.track.concepts},
        "rows": rows,
        "timings": dict(run.timings),
    }
    if run.track.targets:
        targets = Targets.from_dict(run.track.targets)
        results["targets"] = {"config": targets.to_dict(), "checks": check_targets(rows, results["fp_rate"], targets)}
    atomic_write_json(run.root / "results.json", results)
    atomic_write_bytes(run.root / "results.md", results_markdown(results).encode("utf-8"))
    if any(r.get("status") == "ok" for r in rows):
        plot_icr(results, run.root / "icr.png")
    return results


class _timed:
    def __init__(self, run: BenchmarkRun, stage: str) -> None:
        self.run, self.stage = run, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.run.timings[self.stage] = round(time.perf_counter() - self.start, 1)
