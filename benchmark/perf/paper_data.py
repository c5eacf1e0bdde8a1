"""A small icd-v1 at 512 px without a lab's images: procedural scenes written as a folder source.

The paper-scale probes (the dry run, the full-size step timing, the GPU probe) need what the paper
track trains on: icd-v1's recipe, 512 px, boxes. The embedded procedural scenes stand in for the
lab's images, written as a folder of ``name.jpg`` + ``name.txt`` so the recipe reads them exactly
as it reads ``--source /data/images``.
"""
from __future__ import annotations

import io
from pathlib import Path

from builders.build import build_dataset
from builders.recipe import load_recipe, source_from_spec
from builders.sources import ProceduralConfig, ProceduralSource
from builders.sources.folder import file_split
from implicit_concept.files import atomic_write_bytes, atomic_write_text

SOURCE_SIZE = 512
RECIPE = "icd-v1"
DONE = ".complete"


def procedural_folder(folder: Path, train: int, seed: int = 0) -> Path:
    """``train`` procedural scenes that the folder reader puts in the train split, and one it puts in
    the test split (it splits by a hash of the file's key), at 512 px as JPEG with caption files."""
    folder = Path(folder)
    if (folder / DONE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    pool = 100 * (train + 1)
    scenes = ProceduralSource(ProceduralConfig(train=pool, test=0), image_size=SOURCE_SIZE, shard_size=pool, seed=seed)
    test_fraction = source_from_spec(str(folder))["test_fraction"]
    wanted = {"train": train, "test": 1}
    for item in scenes.read("train", 0):
        name = f"scene-{item.meta['index']:06d}"
        split = file_split(f"{name}.jpg", test_fraction)
        if wanted[split]:
            wanted[split] -= 1
            buffer = io.BytesIO()
            item.image.save(buffer, format="JPEG", quality=95)
            atomic_write_bytes(folder / f"{name}.jpg", buffer.getvalue())
            atomic_write_text(folder / f"{name}.txt", item.caption)
        if not any(wanted.values()):
            break
    atomic_write_text(folder / DONE, "")
    return folder


def small_icd_v1(work: Path, train: int, seed: int = 0) -> Path:
    """icd-v1 built from :func:`procedural_folder` under ``work``; returns the dataset's folder."""
    source = procedural_folder(Path(work) / "source", train, seed)
    out = Path(work) / RECIPE
    build_dataset(load_recipe(RECIPE, {"source": source_from_spec(str(source))}), out, workers=1, progress=False)
    return out
