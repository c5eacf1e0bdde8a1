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

import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.evaluation.scorecard import PER_IMAGE
from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images
from benchmark.method_evaluation import evaluate_method, evaluation_for, evaluation_prompts, method_context, seeded
from benchmark.methods import get_method
from benchmark.methods.interface import FineTune, MethodContext, declared_finetunes
from benchmark.models.named_scenes import named_prompt
from benchmark.models.pipeline_identity import pipeline_source, weights_sha256
from benchmark.models.pretrained_check import base_sampler_difference
from benchmark.parallel_finetunes import train_all
from benchmark.parallel_methods import MethodSeed, evaluate_all
from benchmark.published_models import is_published
from benchmark.report import plot_icr, results_markdown
from benchmark.results_file import read_results
from benchmark.results_page import write_results_page
from benchmark.targets import Targets, check_targets
from benchmark.track import Track
from benchmark.training import processes as process_state
from implicit_concept.content_hashes import sha256_file
from implicit_concept.detector.inference import Detector
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_write_bytes, atomic_write_json
from implicit_concept.provenance import environment
from implicit_concept.scoring import CleanReference, ScoreConfig, ScoreReport, score_images
from implicit_concept.stats import CROSSED_AT_LEAST_BINOMIAL, CROSSED_MEAN, crossed_mean, crossed_share


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
        run.claim()
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
    base_record = _base_record(run, Path(base)) if main else {}

    # 3. The detector that scores everything (trained with the base's generations as background),
    #    and its false-positive floor on clean images.
    with _timed(run, "detector"), processes.main_process_first():
        detector = stages.detector(run, dataset, base)
    if main:
        _check_same_evaluator(run, detector)

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
                    _write_results(run, rows, detector, named, base_record)
            continue
        # 6. Each method: build, generate, score.
        evaluation = evaluation_for(run, subset, detector)
        for spec in specs:
            evaluated = [(seed, evaluate_method(run, spec, seeded(ctx, seed), evaluation, _label(track, seed))) for seed in _seeds(track, spec)]
            rows.extend(_over_seeds(run, evaluated))
            _write_results(run, rows, detector, named, base_record)
    processes.wait_for_everyone()
    return _write_results(run, rows, detector, named, base_record) if main else {}


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


#: The fields of a seeded row that are combined over its seeds (results.json's ``over_seeds``); a
#: seeded row from before lacks the field, and its quality, cross-checks and timings are its first seed's.
OVER_SEEDS = ("icr", "quality", "quality_detail", "fid_x_icr", "crosscheck", "timings", "blank_images")
#: What each seed keeps of its own row in ``seeds``.
SEED_FIELDS = ("icr", "model", "quality", "quality_detail", "fid_x_icr", "crosscheck", "timings", "blank_images")


def _over_seeds(run: BenchmarkRun, evaluated: list[tuple[int, tuple[list[dict[str, Any]], ScoreReport | None]]]) -> list[dict[str, Any]]:
    """One method's rows from its evaluation under each training seed. With several seeds, each
    concept's row carries every seed's own row (``seeds``) and, combined over seeds (``over_seeds``):
    the ICR, with an interval over seeds and prompts (:func:`crossed_share`); quality, as the mean
    over seeds of each measure (prompt following with the same crossed interval over its per-image
    values); FID x ICR, as the mean of each seed's product; the cross-checks, as the ICR; and the
    timings and blank images, summed over seeds (every evaluation's time and image is in the row)."""
    for _, (seed_rows, _) in evaluated:
        for row in seed_rows:
            row["jobs"] = run.jobs
    per_image = [[row.pop(PER_IMAGE, {}) for row in seed_rows] for _, (seed_rows, _) in evaluated]
    first_rows = evaluated[0][1][0]
    if len(evaluated) == 1:
        return first_rows
    rows = []
    resample = dict(resamples=ScoreConfig().resamples, seed=run.track.seed)
    for i, row in enumerate(first_rows):
        if row.get("status") != "ok":
            rows.append(row)
            continue
        per_seed = [(seed, seed_rows[i], report) for seed, (seed_rows, report) in evaluated]
        concept = row["concept"]
        icr = crossed_share([report.flags(concept) for _, _, report in per_seed], **resample)
        counts = [seed_row["icr"]["count"] for _, seed_row, _ in per_seed]
        n = [seed_row["icr"]["n"] for _, seed_row, _ in per_seed]
        rows.append({
            **row,
            "icr": {**icr.to_json(), "count": sum(counts), "n": sum(n), "interval": CROSSED_AT_LEAST_BINOMIAL, "n_seeds": len(evaluated)},
            **_quality_over_seeds([seed_row for _, seed_row, _ in per_seed], [images[i] for images in per_image], resample),
            "crosscheck": _crosschecks_over_seeds([seed_row for _, seed_row, _ in per_seed], [r for _, _, r in per_seed], resample),
            "timings": _summed([seed_row.get("timings", {}) for _, seed_row, _ in per_seed]),
            "blank_images": sum(seed_row.get("blank_images", 0) for _, seed_row, _ in per_seed),
            "over_seeds": list(OVER_SEEDS),
            "seeds": {str(seed): {k: seed_row[k] for k in SEED_FIELDS if k in seed_row} for seed, seed_row, _ in per_seed},
        })
    return rows


def _quality_over_seeds(seed_rows: list[dict[str, Any]], per_image: list[dict[str, list[float]]], resample: dict[str, int]) -> dict[str, Any]:
    """``quality``, ``quality_detail`` and ``fid_x_icr`` over the seeds: each measure's mean over
    seeds; a measure with per-image values (prompt following) gets the crossed interval over seeds
    and prompts, like the ICR's; FID x ICR is the mean of each seed's own product."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in seed_rows for k in r.get("quality", {})))
    if "quality" in seed_rows[0]:
        out["quality"] = {k: _mean([r.get("quality", {}).get(k) for r in seed_rows]) for k in keys}
    if "quality_detail" in seed_rows[0]:
        detail = {}
        for k, first in seed_rows[0]["quality_detail"].items():
            entries = [r.get("quality_detail", {}).get(k, {}) for r in seed_rows]
            combined = {**first, "n_seeds": len(seed_rows)}
            if "value" in first:
                combined["value"] = _mean([e.get("value") for e in entries])
            for part in ("exact",):
                if part in first:
                    combined[part] = _mean([e.get(part) for e in entries])
            if isinstance(first.get("per_attribute"), dict):
                combined["per_attribute"] = {a: _mean([e.get("per_attribute", {}).get(a) for e in entries]) for a in first["per_attribute"]}
            if isinstance(first.get("mean"), dict):
                values = [images.get(k) for images in per_image]
                if all(values) and len({len(v) for v in values}) == 1:
                    combined["mean"] = {**crossed_mean(values, **resample).to_json(), "interval": CROSSED_MEAN}
                else:  # no per-image values: the mean over seeds, with no interval that could be read as one over seeds
                    combined.pop("mean")
                    combined["mean_over_seeds"] = _mean([e.get("mean", {}).get("value") for e in entries])
            detail[k] = combined
        out["quality_detail"] = detail
    products = [r.get("fid_x_icr") for r in seed_rows]
    if any(p is not None for p in products):
        out["fid_x_icr"] = _mean(products)
    return out


def _crosschecks_over_seeds(seed_rows: list[dict[str, Any]], reports: list[ScoreReport], resample: dict[str, int]) -> dict[str, Any]:
    """Each independent checker's ICR over the seeds, with the ICR's interval, and its agreement with
    the detector averaged over seeds."""
    out = {}
    for checker in seed_rows[0].get("crosscheck", {}):
        entries = [r.get("crosscheck", {}).get(checker) for r in seed_rows]
        if any(e is None for e in entries):
            continue
        flags = [[bool(im.get("checkers", {}).get(checker)) for im in report.images] for report in reports]
        icr = crossed_share(flags, **resample)
        out[checker] = {"icr": {**icr.to_json(), "count": sum(e["icr"]["count"] for e in entries), "n": sum(e["icr"]["n"] for e in entries),
                                "interval": CROSSED_AT_LEAST_BINOMIAL, "n_seeds": len(seed_rows)},
                        "agreement": _mean([e.get("agreement") for e in entries])}
    return out


def _mean(values: list[Any]) -> float | None:
    """The mean of ``values``; None when any is missing."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def _summed(timings: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in timings:
        for stage, seconds in t.items():
            out[stage] = round(out.get(stage, 0.0) + seconds, 1)
    return out


def _base_record(run: BenchmarkRun, base: Path) -> dict[str, Any]:
    """The base every method started from, by its weights (runs on other bases are not comparable,
    whatever their track), and the scheduler its methods sample with where that is not the track's:
    fine-tunes keep their base's, while ``score-pipeline`` judges a handed-over folder with the
    track's, so a ``--pretrained`` base on a track with an embedded one samples off the protocol."""
    record = {"from": "--pretrained" if run.pretrained else "track", "weights_sha256": weights_sha256(base)}
    try:
        sampler = base_sampler_difference(base, run.track.sampler())
    except ValueError as e:  # the track's sampler cannot even step this model
        sampler = str(e)
    if sampler is not None:
        record["sampler"] = sampler
    return record


def _write_results(run: BenchmarkRun, rows: list[dict[str, Any]], detector: Detector, named: dict[str, Any],
                   base: dict[str, Any]) -> dict[str, Any]:
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
        "base": base,
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


def _check_same_evaluator(run: BenchmarkRun, detector: Detector) -> None:
    """Refuse to score into a run folder whose rows another detector scored: the rows of methods not
    rerun are kept beside the new ones (:func:`_union`) under one evaluator record. The weights at a
    ``--detector`` path change (retrained, a link moved), and so does the published evaluator."""
    if not (run.root / "results.json").is_file():
        return
    earlier = read_results(run.root)
    recorded, now = earlier["detector"].get("sha256"), sha256_file(detector.path)
    if earlier["rows"] and recorded != now:
        raise ValueError(f"{detector.path}: this run's evaluator (sha256 {now[:12]}) is not the one that scored the rows of "
                         f"{run.root / 'results.json'} ({str(recorded)[:12]}); use another --name or remove the folder")


def _union(previous_file: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` and the rows of ``previous_file`` (a run's results.json) that they do not replace, the
    file read as the report reads it (:func:`read_results`): one edited by hand is refused, never half-merged."""
    try:
        previous = read_results(previous_file.parent)["rows"]
    except FileNotFoundError:
        return rows
    fresh = {(r["subset"], r["method"]) for r in rows}
    return [r for r in previous if (r.get("subset"), r["method"]) not in fresh] + rows


class _timed:
    def __init__(self, run: BenchmarkRun, stage: str) -> None:
        self.run, self.stage = run, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.run.timings[self.stage] = round(time.perf_counter() - self.start, 1)
