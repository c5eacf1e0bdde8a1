"""Independent fine-tunes trained side by side, one process and one torch thread each.

On two cores two models train at once in about the time of one. Each fine-tune is a pure function
of its inputs (seeded data order, noise and timesteps, single-threaded arithmetic), so the weights
are the ones a serial run trains, and the cache holds them under the same keys: the protocol then
finds every fine-tune ready. A fine-tune that starts from another (Model Removal from ``sd``)
trains that one first, in the same worker, as :func:`benchmark.stages.finetune` does.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.methods.interface import FineTune
from implicit_concept.detector.inference import Detector
from implicit_concept.worker_processes import start_worker, stopping_workers, workers_starting


def train_all(run: BenchmarkRun, base: Path, subset: Path, finetunes: list[FineTune], detector: Detector, jobs: int) -> None:
    """Train the fine-tunes in ``finetunes`` not made yet, each folder once, over ``jobs`` processes.

    Those that start from the base train first, so one that starts from ``sd`` finds it made. The
    workers start only for a fine-tune left to train: a resume of a trained run starts none.
    """
    train = partial(_train_one, run, base, subset, detector.path)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    with ExitStack() as stack:
        pool = None
        for start in ("base", "sd"):
            todo = _not_made(run, base, subset, [ft for ft in finetunes if ft.start == start], detector)
            if not todo:
                continue
            if pool is None:
                pool = stack.enter_context(stopping_workers(ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=start_worker)))
            with workers_starting():
                trained = pool.map(train, todo)  # submits every task, starting the workers it needs
            list(trained)


def _not_made(run: BenchmarkRun, base: Path, subset: Path, finetunes: list[FineTune], detector: Detector) -> list[FineTune]:
    """``finetunes`` whose folders are not made, one per folder: two fine-tunes that differ only in
    how they were written (a default spelled out) are one folder, trained once."""
    todo: list[FineTune] = []
    seen: list[Path | FineTune] = []  # a folder, or the fine-tune where its folder is not known yet
    for ft in finetunes:
        folder = stages.finetune_folder(run, base, subset, ft, detector)
        if (folder or ft) not in seen and (folder is None or not stages.is_made(folder)):
            seen.append(folder or ft)
            todo.append(ft)
    return todo


def _train_one(run: BenchmarkRun, base: Path, subset: Path, detector_path: Path, finetune: FineTune) -> Path:
    return stages.finetune(run, base, subset, finetune, Detector.load(detector_path))
