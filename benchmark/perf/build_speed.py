"""How fast is a build, next to the floor no builder can beat?

Measures, on the same source images (a folder of JPEGs with captions) and output size, the
samples/s of the full build path and of a plain decode-resize-encode-write pass, with 1 and 2
workers, and prints the ratios. Run: ``python -m benchmark.perf.build_speed [--images 1000]``.
Start-up (starting workers, indexing fonts) is included, as a user pays it. ``--profile`` adds where
a sample's time goes, stage by stage, and the ratio the build could reach if rendering were free.

Wall-clock rates are what a user sees on an idle machine; on a shared one they move with the
load, so the CPU time of the process and its workers is measured beside them: samples per
CPU-second is the rate per core, and the build's per-core rate over the floor's is the ratio that
does not depend on the neighbours.
"""
from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from functools import wraps
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np

from benchmark.perf import probe_cli
from builders import shard_builder
from builders.build import build_dataset
from builders.recipe import Recipe, parse_recipe
from builders.resizer import prepare_image
from implicit_concept.compositing import Composition
from implicit_concept.scene.grammar import ProceduralConfig, sample_scene
from implicit_concept.scene.render import render_scene
from implicit_concept.shard_writer import TarShardWriter
from implicit_concept.worker_processes import end_pool, pool_results, start_worker, workers_starting


def make_source_folder(folder: Path, count: int, side: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = ProceduralConfig(train=count, test=0)
    for i in range(count):
        scene = sample_scene(np.random.default_rng([0, i]), config)
        buffer = io.BytesIO()
        render_scene(scene, side).save(buffer, format="JPEG", quality=95)
        (folder / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
        (folder / f"{i:06d}.txt").write_text(scene.caption, encoding="utf-8")


def _floor_shard(args: tuple[list[Path], Path, int]) -> int:
    files, tar, size = args
    with TarShardWriter(tar) as writer:
        for i, path in enumerate(files):
            image = prepare_image(path.read_bytes(), size, 0)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95, subsampling=0)
            writer.write(f"{i:09d}", {"jpg": buffer.getvalue(), "txt": path.with_suffix(".txt").read_bytes()})
        writer.close()
    return len(files)


def floor_pass(folder: Path, out: Path, size: int, shard_size: int, workers: int) -> float:
    files = sorted(folder.glob("*.jpg"))
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(files[i : i + shard_size], out / f"{i // shard_size:05d}.tar", size) for i in range(0, len(files), shard_size)]
    start = time.perf_counter()
    if workers == 1:
        done = sum(_floor_shard(job) for job in jobs)
    else:
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with workers_starting():  # as the build starts its workers: Ctrl-C is the parent's
            pool = context.Pool(workers, initializer=start_worker)
        try:
            done = sum(pool_results(pool, _floor_shard, jobs))
        finally:
            end_pool(pool)
    return done / (time.perf_counter() - start)


def speed_recipe(folder: Path, size: int, shard_size: int, **options: Any) -> Recipe:
    """One subset, three-quarters contaminated, from ``folder``; ``options``: recipe keys beside
    the defaults (``write_clean=False``)."""
    return parse_recipe(
        {
            "name": "speed",
            "seed": 0,
            "image_size": size,
            "shard_size": shard_size,
            "source": {"kind": "folder", "path": str(folder), "test_fraction": 0.0},
            "subsets": [{"name": "mixed", "concepts": ["qrcode", "watermark", "text"], "fraction": 0.75}],
            **options,
        }
    )


def full_build(folder: Path, out: Path, size: int, shard_size: int, workers: int) -> float:
    start = time.perf_counter()
    report = build_dataset(speed_recipe(folder, size, shard_size), out, workers=workers, progress=False)
    return report.samples / (time.perf_counter() - start)


def stage_profile(folder: Path, out: Path, size: int, shard_size: int, **options: Any) -> dict[str, float]:
    """CPU milliseconds per sample of each stage of a one-worker build (in this process, so the
    neighbours' load does not count): the real code path, each stage timed where it is called;
    ``other`` is the rest (tar, tables, json, start-up)."""
    spent: dict[str, float] = defaultdict(float)

    def timed(stage: Callable[..., str], function: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[stage(*args)] += time.process_time() - start
        return wrapper

    stages = [
        (shard_builder.ShardBuilder, "__init__", "start-up"),
        (shard_builder.ShardBuilder, "screened", "read, decode, resize"),
        (shard_builder.ShardBuilder, "draw", "render, composite"),
        (Composition, "instances", "visible boxes"),
        (Composition, "mask", "mask"),
        (shard_builder, "_encode", None),
        (TarShardWriter, "write", "tar"),
        (TarShardWriter, "close", "tar"),
        (shard_builder, "write_table", "table"),
    ]
    with ExitStack() as patches:
        for owner, name, stage in stages:
            label = (lambda *a, stage=stage: stage) if stage else (lambda image, fmt, *a: f"encode {fmt}")
            patches.enter_context(mock.patch.object(owner, name, timed(label, getattr(owner, name))))
        start = time.process_time()
        report = build_dataset(speed_recipe(folder, size, shard_size, **options), out, workers=1, progress=False)
        total = time.process_time() - start
    profile = {stage: 1000 * seconds / report.samples for stage, seconds in sorted(spent.items())}
    profile["other"] = 1000 * total / report.samples - sum(profile.values())
    return profile


def print_profile(folder: Path, root: Path, size: int, shard_size: int) -> None:
    """Where a sample's time goes, and the build/floor ratio with rendering and compositing free:
    what no speed-up of the renderers can pass while the same members are written. A first build,
    not counted, pays the imports and caches."""
    stage_profile(folder, root / f"profile-warm-{size}", size, shard_size)
    start = time.process_time()
    floor_pass(folder, root / f"profile-floor-{size}", size, shard_size, 1)
    floor_ms = 1000 * (time.process_time() - start) / len(list(folder.glob("*.jpg")))
    print(f"\n{size} px, one worker, CPU ms per sample (the floor: {floor_ms:.2f})")
    formats = {"full (image, clean twin, mask)": {}, "image only (write_clean, write_mask off)": {"write_clean": False, "write_mask": False}}
    for i, (label, options) in enumerate(formats.items()):
        profile = stage_profile(folder, root / f"profile-{size}-{i}", size, shard_size, **options)
        total = sum(profile.values())
        stages = ", ".join(f"{stage} {ms:.2f}" for stage, ms in profile.items())
        print(f"  {label}: {total:.2f} = {stages}")
        print(f"    build/floor {floor_ms / total:.2f}; with rendering and compositing free {floor_ms / (total - profile['render, composite']):.2f}")


def measured(run: Callable[[], float]) -> tuple[float, float]:
    """``run``'s samples/s (wall clock) and its samples per CPU-second (this process and its children);
    NaN for a run too short for the CPU clock's ticks (10 ms) to see."""
    before, started = os.times(), time.perf_counter()
    rate = run()
    after, wall = os.times(), time.perf_counter() - started
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system"))
    return rate, rate * wall / cpu if cpu > 0 else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = probe_cli.parser("benchmark.perf.build_speed", __doc__)
    parser.add_argument("--images", type=probe_cli.count(1), default=1000, help="source images (default: %(default)s)")
    parser.add_argument("--source-side", type=probe_cli.count(8), default=512, help="their side in pixels (default: %(default)s)")
    parser.add_argument("--sizes", type=probe_cli.count(8), nargs="+", default=[64, 512], help="output sizes (default: 64 512)")
    parser.add_argument("--shard-size", type=probe_cli.count(1), default=100, help="samples per shard (default: %(default)s)")
    parser.add_argument("--profile", action="store_true", help="also print where a sample's time goes, per size")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_source_folder(root / "src", args.images, args.source_side)
        print(f"{args.images} source JPEGs at {args.source_side} px; samples/s, wall clock and per CPU-second (higher is better)")
        print(f"{'size':>5} {'workers':>7} {'floor':>8} {'build':>8} {'build/floor':>11} {'floor/cpu':>9} {'build/cpu':>9} {'per core':>8}")
        builds: dict[int, float] = {}
        for size in args.sizes:
            for workers in (1, 2):
                tag = f"{size}-{workers}"
                floor, floor_cpu = measured(lambda: floor_pass(root / "src", root / f"floor-{tag}", size, args.shard_size, workers))
                build, build_cpu = measured(lambda: full_build(root / "src", root / f"build-{tag}", size, args.shard_size, workers))
                builds[workers] = build
                print(f"{size:>5} {workers:>7} {floor:>8.0f} {build:>8.0f} {build / floor:>11.2f} {floor_cpu:>9.0f} {build_cpu:>9.0f} {build_cpu / floor_cpu:>8.2f}")
            print(f"{size:>5} 2 workers / 1 worker (build, wall clock): {builds[2] / builds[1]:.2f}x")
        if args.profile:
            for size in args.sizes:
                print_profile(root / "src", root, size, args.shard_size)
    return 0


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
