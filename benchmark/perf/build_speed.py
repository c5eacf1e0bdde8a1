"""How fast is a build, next to the floor no builder can beat?

Measures, on the same source images (a folder of JPEGs with captions) and output size, the
samples/s of the full build path and of a plain decode-resize-encode-write pass, with 1 and 2
workers, and prints the ratios. Run: ``python -m benchmark.perf.build_speed [--images 1000]``.
Start-up (spawning workers, indexing fonts) is included, as a user pays it.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

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
        with mp.get_context("spawn").Pool(workers) as pool:
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
        print(f"{args.images} source JPEGs at {args.source_side} px; samples/s (higher is better)")
        print(f"{'size':>5} {'workers':>7} {'floor':>8} {'build':>8} {'build/floor':>11}")
        for size in args.sizes:
            for workers in (1, 2):
                tag = f"{size}-{workers}"
                floor = floor_pass(root / "src", root / f"floor-{tag}", size, args.shard_size, workers)
                build = full_build(root / "src", root / f"build-{tag}", size, args.shard_size, workers)
                print(f"{size:>5} {workers:>7} {floor:>8.0f} {build:>8.0f} {build / floor:>11.2f}")


if __name__ == "__main__":
    main()
