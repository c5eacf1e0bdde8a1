"""Methods evaluated side by side: built, sampled and scored in ``--jobs`` processes, one torch
thread each.

Sampling and scoring are forward passes whose results do not depend on the thread count (measured:
the tiny track's images are the same bytes on 1 and 2 threads), and what a method trains while it
is built runs under the track's threads (:attr:`MethodContext.threads`), so each method's rows are
the ones a serial run writes. A worker rebuilds what does not cross a process boundary (the
fine-tuning service, the detector, the reference images) from the run and paths, once.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from benchmark.benchmark_run import BenchmarkRun
from benchmark.method_evaluation import Evaluation, evaluate_method, evaluation_for, method_context, seeded
from benchmark.methods.interface import MethodContext
from implicit_concept.detector.inference import Detector
from implicit_concept.scoring import ScoreReport
from implicit_concept.worker_processes import start_worker, stopping_workers, workers_starting


@dataclass(frozen=True)
class MethodSeed:
    """One method fine-tuned with one training seed: the unit a worker evaluates."""

    spec: str
    seed: int
    label: str


Evaluated = tuple[list[dict[str, Any]], ScoreReport | None]


def evaluate_all(run: BenchmarkRun, base: Path, subset: Path, concepts: tuple[str, ...], detector: Detector,
                 tasks: list[MethodSeed], jobs: int) -> Iterator[Evaluated]:
    """Each task's rows and report, in the order of ``tasks``, as each is ready. When one raises,
    the tasks not started are dropped and those running finish (their images are cached for the
    rerun) before the error reaches the caller."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    with stopping_workers(ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker,
                                              initargs=(replace(run, progress=False), Path(base), subset, concepts, detector.path))) as pool:
        with workers_starting():
            futures = [pool.submit(_evaluate, task) for task in tasks]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


_worker: tuple[BenchmarkRun, MethodContext, Evaluation] | None = None


def _start_worker(run: BenchmarkRun, base: Path, subset: Path, concepts: tuple[str, ...], detector_path: Path) -> None:
    global _worker
    start_worker()
    torch.set_num_threads(1)
    detector = Detector.load(detector_path)
    _worker = (run, method_context(run, base, subset, concepts, detector), evaluation_for(run, subset, detector))


def _evaluate(task: MethodSeed) -> Evaluated:
    run, ctx, evaluation = _worker
    return evaluate_method(run, task.spec, seeded(ctx, task.seed), evaluation, task.label)
