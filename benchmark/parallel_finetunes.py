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
from functools import partial
from pathlib import Path

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.methods.interface import FineTune
from implicit_concept.detector.inference import Detector
from implicit_concept.worker_processes import start_worker, stopping_workers, workers_starting


def train_all(run: BenchmarkRun, base: Path, subset: Path, finetunes: list[FineTune], detector: Detector, jobs: int) -> list[Path]:
    """Train every fine-tune in ``finetunes`` (each once) over ``jobs`` processes; their folders.

    Those that start from the base train first, so one that starts from ``sd`` finds it made.
    """
    unique: list[FineTune] = []
    for ft in finetunes:
        if ft not in unique:
            unique.append(ft)
    train = partial(_train_one, run, base, subset, detector.path)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    with stopping_workers(ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=start_worker)) as pool:
        done: list[Path] = []
        for stage in ([ft for ft in unique if ft.start == "base"], [ft for ft in unique if ft.start != "base"]):
            with workers_starting():
                trained = pool.map(train, stage)  # submits every task, starting the workers it needs
            done += list(trained)
    return done


def _train_one(run: BenchmarkRun, base: Path, subset: Path, detector_path: Path, finetune: FineTune) -> Path:
    return stages.finetune(run, base, subset, finetune, Detector.load(detector_path))
