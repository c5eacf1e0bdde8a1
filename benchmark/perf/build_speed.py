"""How fast is a build, next to the floor no builder can beat?

Measures, on the same source images (a folder of JPEGs with captions) and output size, the
samples/s of the full build path and of a plain decode-resize-encode-write pass, with 1 and 2
workers, and prints the ratios. Run: ``python -m benchmark.perf.build_speed [--images 1000]``.
Start-up (starting workers, indexing fonts) is included, as a user pays it.

Wall-clock rates are what a user sees on an idle machine; on a shared one they move with the
load, so the CPU time of the process and its workers is measured beside them: samples per
CPU-second is the rate per core, and the build's per-core rate over the floor's is the ratio that
does not depend on the neighbours.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from builders.build import build_dataset
from builders.recipe import parse_recipe
from builders.resizer import prepare_image
from implicit_concept.scene.grammar import ProceduralConfig, sample_scene
from implicit_concept.scene.render import render_scene
from implicit_concept.shard_writer import TarShardWriter


def make_source_folder(folder: Path, count: int, side: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = ProceduralConfig(train=count, test=0)
    for i in range(count):
        scene = sample_scene(np.random.default_rng([0, i]), config)
        buffer = io.BytesIO()
        render_scene(scene, side).save(buffer, format="JPEG", quality=95)
        (folder / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
        (folder / f"{i:06d}.txt").write_text(scene.caption)


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
        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:  # as the build starts its workers
            done = sum(pool.map(_floor_shard, jobs))
    return done / (time.perf_counter() - start)


def full_build(folder: Path, out: Path, size: int, shard_size: int, workers: int) -> float:
    recipe = parse_recipe(
        {
            "name": "speed",
            "seed": 0,
            "image_size": size,
            "shard_size": shard_size,
            "source": {"kind": "folder", "path": str(folder), "test_fraction": 0.0},
            "subsets": [{"name": "mixed", "concepts": ["qrcode", "watermark", "text"], "fraction": 0.75}],
        }
    )
    start = time.perf_counter()
    report = build_dataset(recipe, out, workers=workers, progress=False)
    return report.samples / (time.perf_counter() - start)


def measured(run: Callable[[], float]) -> tuple[float, float]:
    """``run``'s samples/s (wall clock) and its samples per CPU-second (this process and its children)."""
    before = os.times()
    rate = run()
    after = os.times()
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system"))
    wall = after.elapsed - before.elapsed
    return rate, rate * wall / max(cpu, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--source-side", type=int, default=512)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
