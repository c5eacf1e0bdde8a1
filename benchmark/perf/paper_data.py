"""A small icd-v1 at 512 px without a lab's images: procedural scenes written as a folder source.

The paper-scale probes (the dry run, the full-size step timing, the GPU probe) need what the paper
track trains on: icd-v1's recipe, 512 px, boxes. The embedded procedural scenes stand in for the
lab's images, written as a folder of ``name.jpg`` + ``name.txt`` so the recipe reads them exactly
as it reads ``--source /data/images``.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from builders.build import build_dataset
from builders.recipe import load_recipe, source_from_spec
from builders.sources import ProceduralConfig, ProceduralSource
from builders.sources.folder import file_split
from implicit_concept.files import atomic_dir

SOURCE_SIZE = 512
RECIPE = "icd-v1"
DONE = ".complete"


def procedural_folder(folder: Path, train: int, seed: int = 0) -> Path:
    """``train`` procedural scenes that the folder reader puts in the train split, and one it puts in
    the test split (it splits by a hash of the file's key), at 512 px as JPEG with caption files.
    The folder appears whole (a killed run leaves none), and one made before is used again only if
    it was made with the same ``train`` and ``seed`` (its marker records them): a dry run rerun with
    another ``--images`` measured the last run's images and reported them as its own."""
    folder = Path(folder)
    made_for = json.dumps({"seed": seed, "train": train}, sort_keys=True)
    if folder.exists():
        recorded = (folder / DONE).read_text(encoding="utf-8", errors="replace").strip() if (folder / DONE).is_file() else ""
        if recorded != made_for:
            raise ValueError(f"{folder}: holds {_described(recorded)}, not {train} procedural train images with seed "
                             f"{seed}; use another work folder, or remove this one")
        return folder
    pool = 100 * (train + 1)
    scenes = ProceduralSource(ProceduralConfig(train=pool, test=0), image_size=SOURCE_SIZE, shard_size=pool, seed=seed)
    wanted = {"train": train, "test": 1}
    with atomic_dir(folder) as tmp:
        test_fraction = source_from_spec(str(tmp))["test_fraction"]  # as the recipe will read the folder
        for item in scenes.read("train", 0):
            name = f"scene-{item.meta['index']:06d}"
            split = file_split(f"{name}.jpg", test_fraction)
            if wanted[split]:
                wanted[split] -= 1
                buffer = io.BytesIO()
                item.image.save(buffer, format="JPEG", quality=95)
                (tmp / f"{name}.jpg").write_bytes(buffer.getvalue())
                (tmp / f"{name}.txt").write_text(item.caption, encoding="utf-8")
            if not any(wanted.values()):
                break
        (tmp / DONE).write_text(made_for, encoding="utf-8")
    return folder


def _described(marker: str) -> str:
    try:
        made = json.loads(marker)
        return f"the procedural images of another run ({made['train']} train images with seed {made['seed']})"
    except (ValueError, TypeError, KeyError):
        return "no procedural images of this version's making"


def small_icd_v1(work: Path, train: int, seed: int = 0) -> Path:
    """icd-v1 built from :func:`procedural_folder` under ``work``; returns the dataset's folder."""
    source = procedural_folder(Path(work) / "source", train, seed)
    out = Path(work) / RECIPE
    build_dataset(load_recipe(RECIPE, {"source": source_from_spec(str(source))}), out, workers=1, progress=False)
    return out
