"""The Data Removal protocol, top to bottom: data -> base -> detector -> per subset and method:
fine-tune (cached) -> generate (resumable) -> score -> report.

Every stage is cached or resumable, so a killed ``make benchmark`` continues where it stopped; the
run folder records the track and refuses to continue under a changed one.

Under ``accelerate launch`` (several GPUs), the processes train together (the base, then every
fine-tune the methods declare) and the main process alone builds the data, trains the detector,
generates and scores; the others wait. The track's batch size is the global batch, so the models
are the ones a single process trains.
"""
from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.evaluation.scorecard import score_generated
from benchmark.failures import MethodFailed
from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images, pipeline_folders, pipeline_source
from benchmark.methods import NotImplementedMethod, get_method
from benchmark.methods.interface import FineTune, MethodContext, checked_generator, declared_finetunes
from benchmark.models.named_scenes import named_prompt
from benchmark.parallel_finetunes import train_all
from benchmark.prompts import Prompt, read_prompts, shard_prompts, write_prompts
from benchmark.published_models import is_published
from benchmark.report import plot_icr, results_markdown
from benchmark.results_page import write_results_page
from benchmark.sample_grid import method_grid
from benchmark.targets import Targets, check_targets
from benchmark.track import Track
from benchmark.track_check import check_track
from benchmark.training import processes as process_state
from implicit_concept.detector.inference import Detector
from implicit_concept.files import atomic_write_bytes, atomic_write_json, claim, locked, sha256_file
from implicit_concept.provenance import environment
from implicit_concept.scoring import CLEAN_REFERENCE_NAME, CleanReference, ScoreConfig, ScoreReport, score_images
from implicit_concept.stats import hierarchical_bootstrap


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

    # 2. The base model every method starts from (every process trains).
    with _timed(run, "base"):
        base = run.pretrained or stages.pretrain_base_model(run)

    # 3. The detector that scores everything (trained with the base's generations as background),
    #    and its false-positive floor on clean images.
    with _timed(run, "detector"), processes.main_process_first():
        detector = stages.detector(run, dataset, base)

    settings = GenerationSettings(**track.generation)
    # 4. Whether the base knows each concept by name, as the name-based baselines assume.
    named = {}
    if track.named_prompts and main:
        with _timed(run, "named prompts (base)"):
            named = _named_base(run, dataset / track.groups()[0][0], Path(base), detector, settings)

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
            threads=track.finetune.get("threads"),
        )
        specs = run.methods or track.methods
        if processes.num_processes > 1:
            # 5a. Every declared fine-tune, by all processes together; then the main process goes on alone.
            for ft in _declared_finetunes(track, specs, ctx):
                ctx.finetune(ft)
            if not main:
                continue
            ctx = replace(ctx, finetune=lambda ft, subset=subset: stages.finetune(run, base, subset, ft, detector, may_train=False))
        elif run.jobs > 1:
            # 5b. Every declared fine-tune, run.jobs at a time; the methods below then find them made.
            with _timed(run, f"finetunes ({subset_name}, {run.jobs} jobs)"):
                train_all(run, base, subset, _declared_finetunes(track, specs, ctx), detector, run.jobs)
        prompts = _prompts(run, subset)
        evaluation = Evaluation(subset_name, prompts, settings, detector, stages.reference_images(subset / "test", len(prompts)))
        for spec in specs:
            rows.extend(_run_seeds(run, spec, ctx, evaluation))
            _write_results(run, rows, detector, named)
    processes.wait_for_everyone()
    return _write_results(run, rows, detector, named) if main else {}


def _named_base(run: BenchmarkRun, subset: Path, base: Path, detector: Detector, settings: GenerationSettings) -> dict[str, Any]:
    """Per concept: the base's ICR of that concept on the first evaluation prompts with the concept
    named (", with a qr code"), their seeds, no negative prompt."""
    prompts = _prompts(run, subset)[: run.track.named_prompts]
    pipe = stages.load_pipeline(base)
    generate = diffusers_generate_fn(pipe, settings)
    results = {}
    for c in run.track.concepts:
        asked = [replace(p, prompt=named_prompt(p.prompt, c)) for p in prompts]
        paths = generate_images(generate, asked, run.root / "images" / "named-base" / c, settings=settings, progress=run.progress,
                                desc=f"base, named {c}", source=pipeline_source(pipe))
        report = score_images(paths, detector, ScoreConfig(conf=run.track.conf, seed=run.track.seed))
        report.write_json(run.root / "scores" / "named-base" / f"{c}.json")
        results[c] = {"icr": report.concepts[c].icr.to_json(), "prompt": named_prompt("<prompt>", c), "n_prompts": len(asked)}
    return results


def _declared_finetunes(track: Track, specs: tuple[str, ...], ctx: MethodContext) -> list[FineTune]:
    """Every fine-tune the methods declare (``finetunes(ctx)``), once per training seed."""
    return [
        replace(ft, seed=seed)
        for spec in specs
        for seed in _seeds(track, spec)
        for ft in declared_finetunes(get_method(spec), ctx)
    ]


def _seeds(track: Track, spec: str) -> tuple[int, ...]:
    """The training seeds of ``spec``: the track's ``seeds`` for its ``seed_methods``, else its one seed."""
    return tuple(track.seeds) if spec in track.seed_methods else (track.seed,)


def _run_seeds(run: BenchmarkRun, spec: str, ctx: MethodContext, evaluation: Evaluation) -> list[dict[str, Any]]:
    """One method fine-tuned once per training seed; with several seeds, each concept's row carries
    every seed's ICR and an interval that covers seeds and prompts (seeds resampled, then prompts)."""
    seeds = _seeds(run.track, spec)
    runs = []
    for seed in seeds:
        seeded = replace(ctx, seed=seed, finetune=lambda ft, finetune=ctx.finetune, seed=seed: finetune(replace(ft, seed=seed)))
        runs.append(_run_method(run, spec, seeded, evaluation, label="" if seed == run.track.seed else f"@seed{seed}"))
    if len(seeds) == 1:
        return runs[0][0]
    rows = []
    for i, row in enumerate(runs[0][0]):
        if row.get("status") != "ok":
            rows.append(row)
            continue
        per_seed = [(seed, seed_rows[i], report) for seed, (seed_rows, report) in zip(seeds, runs)]
        interval = hierarchical_bootstrap([report.flags(row["concept"]) for _, _, report in per_seed],
                                          resamples=ScoreConfig().resamples, seed=run.track.seed)
        rows.append({
            **row,
            "icr": {**interval.to_json(), "bootstrap": "hierarchical: seeds, then prompts", "n_seeds": len(seeds)},
            "seeds": {str(seed): {"icr": seed_row["icr"], "model": seed_row["model"]} for seed, seed_row, _ in per_seed},
        })
    return rows


def _run_method(
    run: BenchmarkRun, spec: str, ctx: MethodContext, evaluation: Evaluation, label: str = ""
) -> tuple[list[dict[str, Any]], ScoreReport | None]:
    """Build, generate and score one method on one training subset: a row per concept scored, and the
    detector's report. ``label`` tells apart the folders of a method's other training seeds."""
    subset_name, prompts, settings = evaluation.subset, evaluation.prompts, evaluation.settings
    method = get_method(spec)
    rows = [{"concept": c, "method": method.name, "subset": subset_name, "description": getattr(method, "description", "")} for c in ctx.concepts]
    ctx = replace(ctx, work_dir=ctx.work_dir / (method.name + label))
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        built = method.build(ctx)
    except NotImplementedMethod as e:
        return [{**row, "status": f"missing: {e}"} for row in rows], None
    except Exception as e:
        raise MethodFailed(f"{subset_name}/{method.name}{label}", "build(ctx)", e) from e
    generator = checked_generator(method, built)
    timings["build"] = time.perf_counter() - start
    images_dir = run.root / "images" / subset_name / (method.name + label)
    start = time.perf_counter()
    if hasattr(generator.pipeline, "set_progress_bar_config"):
        generator.pipeline.set_progress_bar_config(disable=True)
    paths = generate_images(
        diffusers_generate_fn(generator.pipeline, settings, **generator.call_kwargs),
        prompts,
        images_dir,
        negative_prompt=generator.negative_prompt,
        settings=settings,
        progress=run.progress,
        desc=f"{subset_name}/{method.name}{label}",
        source={**pipeline_source(generator.pipeline), "call_kwargs": generator.call_kwargs, "method_code": _code_sha256(method)},
    )
    timings["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    score = ScoreConfig(conf=run.track.conf, seed=run.track.seed)
    report, scores = score_generated(paths, prompts, evaluation.detector, score, run.track.quality, evaluation.reference, run.cache)
    report.write_json(run.root / "scores" / subset_name / f"{method.name}{label}.json")
    timings["score"] = time.perf_counter() - start
    for row in rows:
        row.update(
            status="ok",
            model=pipeline_folders(generator.pipeline),
            negative_prompt=generator.negative_prompt,
            timings={k: round(v / len(rows), 1) for k, v in timings.items()},
            **scores[row["concept"]],
        )
    method_grid(paths[:8], report.images[:8], run.root / "grids" / subset_name / f"{method.name}{label}.png", title=f"{subset_name} / {method.name}{label}")
    return rows, report


def _code_sha256(method: Any) -> str | None:
    """The file that defines the method's class: a plug-in edited since its images were made draws
    them anew, even when its pipeline has no weights to compare (a plain callable)."""
    try:
        path = inspect.getsourcefile(type(method))
    except TypeError:
        return None
    return sha256_file(Path(path)) if path and Path(path).is_file() else None


def _prompts(run: BenchmarkRun, subset: Path) -> list[Prompt]:
    """The track's prompts CSV, or (``prompts = "test-split"``) the captions of the subset's test split."""
    if run.track.prompts != "test-split":
        return read_prompts(run.track.prompts, limit=run.track.num_prompts)
    path = run.root / f"prompts-{subset.name}.csv"
    if not path.exists():
        write_prompts(path, shard_prompts(subset / "test", run.track.num_prompts))
    return read_prompts(path)


def _write_results(run: BenchmarkRun, rows: list[dict[str, Any]], detector: Detector, named: dict[str, Any]) -> dict[str, Any]:
    """Write results.json, .md, .html and the ICR plot. A run's results are the union of what it has
    scored: rows of methods not rerun this time are kept, a rerun method's rows replace its old ones."""
    rows = _union(run.root / "results.json", rows)
    reference = CleanReference.read(detector.path.parent / CLEAN_REFERENCE_NAME)
    config = ScoreConfig(conf=run.track.conf, seed=run.track.seed)
    results = {
        "name": run.name,
        "track": run.track.name,
        "note": run.track.note,
        "config": run.record(),
        "seeds": {"track": run.track.seed, "evaluation_prompts": run.track.prompts},
        "environment": environment(),
        "detector": {"path": str(detector.path), "sha256": sha256_file(detector.path), "conf": run.track.conf,
                     "thresholds": detector.thresholds if run.track.conf is None else {c: run.track.conf for c in run.track.concepts},
                     "published": is_published(detector.path)},
        "fp_rate": {c: reference.fp_rate(c, config, detector.thresholds).to_json() for c in run.track.concepts},
        "rows": rows,
        "named_base": named,
        "timings": dict(run.timings),
    }
    if run.track.targets:
        targets = Targets.from_dict(run.track.targets)
        results["targets"] = {"config": targets.to_dict(), "checks": check_targets(rows, results["fp_rate"], targets, named)}
    atomic_write_json(run.root / "results.json", results)
    atomic_write_bytes(run.root / "results.md", results_markdown(results).encode("utf-8"))
    if any(r.get("status") == "ok" for r in rows):
        plot_icr(results, run.root / "icr.png")
    write_results_page(results, run.root)
    return results


def _union(previous_file: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not previous_file.is_file():
        return rows
    fresh = {(r["subset"], r["method"]) for r in rows}
    kept = [r for r in json.loads(previous_file.read_text(encoding="utf-8"))["rows"] if (r["subset"], r["method"]) not in fresh]
    return kept + rows


class _timed:
    def __init__(self, run: BenchmarkRun, stage: str) -> None:
        self.run, self.stage = run, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.run.timings[self.stage] = round(time.perf_counter() - self.start, 1)
