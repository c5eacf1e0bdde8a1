"""Runs shard work units in worker processes (spawn, one builder per worker) with a progress bar.

Scheduling never changes bytes: every unit is a pure function of the recipe and its id.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from builders.recipe import Recipe
from builders.shard_builder import ShardBuilder, WorkUnit

_worker: ShardBuilder | None = None


def _init_worker(recipe: Recipe) -> None:
    import cv2

    cv2.setNumThreads(1)
    global _worker
    _worker = ShardBuilder(recipe)


def _run(args: tuple[WorkUnit, Path]) -> dict[str, Any]:
    assert _worker is not None
    return _worker.build(*args)


def run_units(
    recipe: Recipe,
    units: list[WorkUnit],
    out: Path,
    workers: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Build ``units`` with ``workers`` processes; returns each unit's stats in completion order."""
    start = time.perf_counter()
    bar = tqdm(total=len(units), unit="shard", disable=not progress, desc=recipe.name)
    results: list[dict[str, Any]] = []
    samples = 0

    def record(stats: dict[str, Any]) -> None:
        nonlocal samples
        results.append(stats)
        samples += stats["successes"]
        bar.update(1)
        bar.set_postfix(samples=str(samples), samples_per_s=f"{samples / max(time.perf_counter() - start, 1e-9):.0f}")

    if workers <= 1 or len(units) <= 1:
        builder = ShardBuilder(recipe)
        for unit in units:
            record(builder.build(unit, out))
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes=min(workers, len(units)), initializer=_init_worker, initargs=(recipe,)) as pool:
            for stats in pool.imap_unordered(_run, [(u, out) for u in units]):
                record(stats)
    bar.close()
    return results

