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

import json
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images
from benchmark.method_evaluation import evaluate_method, evaluation_for, evaluation_prompts, method_context, seeded
from benchmark.methods import get_method
from benchmark.methods.interface import FineTune, MethodContext, declared_finetunes
from benchmark.models.named_scenes import named_prompt
from benchmark.models.pipeline_identity import pipeline_source
from benchmark.parallel_finetunes import train_all
from benchmark.parallel_methods import MethodSeed, evaluate_all
from benchmark.published_models import is_published
from benchmark.report import plot_icr, results_markdown
from benchmark.results_page import write_results_page
from benchmark.targets import Targets, check_targets
from benchmark.track import Track
from benchmark.training import processes as process_state
from implicit_concept.detector.inference import Detector
from implicit_concept.files import atomic_write_bytes, atomic_write_json, claim, locked, sha256_file
from implicit_concept.provenance import environment
from implicit_concept.scoring import CleanReference, ScoreConfig, ScoreReport, score_images
from implicit_concept.stats import hierarchical_bootstrap


def run_benchmark(run: BenchmarkRun) -> dict[str, Any]:
    """The results (``results.json``'s content) on the main process; ``{}`` on the others.

    The main process holds the run folder's lock throughout, and a second run of the same name fails
    at once, naming the folder and the first one's pid: it would only redo the first one's work and
    overwrite its results. (Runs of other names share the data and the cache, whose entries they
    wait for and reuse.)
    """
    run.check_start()  # the name, every path and the whole track, before any stage runs or the folder is claimed
    if not process_state().is_main_process:
        return _run_protocol(run)
    run.root.mkdir(parents=True, exist_ok=True)
    with locked(run.root, wait=False, refusal="wait for it to finish or use another --name", inside=True):
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

    settings = track.generation_settings()
    # 4. Whether the base knows each concept by name, as the name-based baselines assume.
    named = {}
    if track.named_prompts and main:
        with _timed(run, "named prompts (base)"):
            named = _named_base(run, dataset / track.groups()[0][0], Path(base), detector, settings)

    rows = []
    for subset_name, concepts in track.groups():
        subset = dataset / subset_name
        ctx = method_context(run, Path(base), subset, concepts, detector)
        specs = run.methods or track.methods
        if processes.num_processes > 1:
            # 5a. Every declared fine-tune, by all processes together; then the main process goes on alone.
            for ft in _declared_finetunes(track, specs, ctx):
                ctx.finetune(ft)
            if not main:
                continue
            ctx = replace(ctx, finetune=lambda ft, subset=subset: stages.finetune(run, base, subset, ft, detector, may_train=False))
        elif run.jobs > 1:
            # 5b. Every declared fine-tune, then every method, run.jobs at a time.
            with _timed(run, f"finetunes ({subset_name}, {run.jobs} jobs)"):
                train_all(run, base, subset, _declared_finetunes(track, specs, ctx), detector, run.jobs)
            per_spec = [[MethodSeed(spec, seed, _label(track, seed)) for seed in _seeds(track, spec)] for spec in specs]
            with _timed(run, f"methods ({subset_name}, {run.jobs} jobs)"), \
                    closing(evaluate_all(run, Path(base), subset, concepts, detector, sum(per_spec, []), run.jobs)) as done:
                for tasks in per_spec:
                    rows.extend(_over_seeds(run, [(task.seed, next(done)) for task in tasks]))
                    _write_results(run, rows, detector, named)
            continue
        # 6. Each method: build, generate, score.
        evaluation = evaluation_for(run, subset, detector)
        for spec in specs:
            evaluated = [(seed, evaluate_method(run, spec, seeded(ctx, seed), evaluation, _label(track, seed))) for seed in _seeds(track, spec)]
            rows.extend(_over_seeds(run, evaluated))
            _write_results(run, rows, detector, named)
    processes.wait_for_everyone()
    return _write_results(run, rows, detector, named) if main else {}


def _named_base(run: BenchmarkRun, subset: Path, base: Path, detector: Detector, settings: GenerationSettings) -> dict[str, Any]:
    """Per concept: the base's ICR of that concept on the first evaluation prompts with the concept
    named (", with a qr code"), their seeds, no negative prompt."""
    prompts = evaluation_prompts(run, subset)[: run.track.named_prompts]
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
        ft.under_seed(seed)
        for spec in specs
        for seed in _seeds(track, spec)
        for ft in declared_finetunes(get_method(spec), ctx)
    ]


def _seeds(track: Track, spec: str) -> tuple[int, ...]:
    """The training seeds of ``spec``: the track's ``seeds`` for its ``seed_methods``, else its one seed."""
    return tuple(track.seeds) if spec in track.seed_methods else (track.seed,)


def _label(track: Track, seed: int) -> str:
    """What tells apart the folders of a method's other training seeds."""
    return "" if seed == track.seed else f"@seed{seed}"


def _over_seeds(run: BenchmarkRun, evaluated: list[tuple[int, tuple[list[dict[str, Any]], ScoreReport | None]]]) -> list[dict[str, Any]]:
    """One method's rows from its evaluation under each training seed; with several seeds, each
    concept's row carries every seed's ICR and an interval that covers seeds and prompts (seeds
    resampled, with one set of resampled prompts shared by all of them: every seed is scored on the same prompts)."""
    first_rows = evaluated[0][1][0]
    if len(evaluated) == 1:
        return first_rows
    rows = []
    for i, row in enumerate(first_rows):
        if row.get("status") != "ok":
            rows.append(row)
            continue
        per_seed = [(seed, seed_rows[i], report) for seed, (seed_rows, report) in evaluated]
        interval = hierarchical_bootstrap([report.flags(row["concept"]) for _, _, report in per_seed],
                                          resamples=ScoreConfig().resamples, seed=run.track.seed)
        rows.append({
            **row,
            "icr": {**interval.to_json(), "bootstrap": "crossed: seeds, and one set of prompts for all of them", "n_seeds": len(evaluated)},
            "seeds": {str(seed): {"icr": seed_row["icr"], "model": seed_row["model"]} for seed, seed_row, _ in per_seed},
        })
    return rows


def _write_results(run: BenchmarkRun, rows: list[dict[str, Any]], detector: Detector, named: dict[str, Any]) -> dict[str, Any]:
    """Write results.json, .md, .html and the ICR plot. A run's results are the union of what it has
    scored: rows of methods not rerun this time are kept, a rerun method's rows replace its old ones."""
    rows = _union(run.root / "results.json", rows)
    reference = CleanReference.beside(detector)
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
                     "clean_reference_sha256": detector.clean_reference_sha256,
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
