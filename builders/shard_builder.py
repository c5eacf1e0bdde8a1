"""Builds one output shard: a pure function of (recipe, subset, split, shard id).

Reader -> resizer -> concept compositing -> writer, per sample. Nothing here depends on which
worker, process or machine runs the shard, so any distributor can schedule it.
"""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from PIL import Image

from builders.recipe import Recipe, Subset
from builders.resizer import SampleError, prepare_image
from builders.sources import make_source
from builders.sources.base import RawItem
from implicit_concept.compositing import Composition
from implicit_concept.concepts import Layer, make_renderer
from implicit_concept.files import atomic_write_json, atomic_write_parquet, sha256_file
from implicit_concept.provenance import version
from implicit_concept.sample import SPLITS, Instance, SampleMeta
from implicit_concept.shard_writer import TarShardWriter


@dataclass(frozen=True, order=True)
class WorkUnit:
    subset: str
    split: str
    shard_id: int

    @property
    def name(self) -> str:
        return f"{self.shard_id:05d}"


def shard_dir(out: Path, unit: WorkUnit) -> Path:
    return Path(out) / unit.subset / unit.split


def tar_path(out: Path, unit: WorkUnit) -> Path:
    return shard_dir(out, unit) / f"{unit.name}.tar"


def stats_path(out: Path, unit: WorkUnit) -> Path:
    return shard_dir(out, unit) / f"{unit.name}_stats.json"


def parquet_path(out: Path, unit: WorkUnit) -> Path:
    return shard_dir(out, unit) / f"{unit.name}.parquet"


def read_stats(path: Path) -> dict[str, Any] | None:
    """A shard's stats, or None when the file is missing or is not a JSON object."""
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return stats if isinstance(stats, dict) else None


def is_complete(out: Path, unit: WorkUnit) -> bool:
    """The stats file is written last: its presence marks a finished shard (img2dataset's rule),
    if the tar is still the one it describes (its sha256) and the parquet is there."""
    stats = read_stats(stats_path(out, unit))
    tar = tar_path(out, unit)
    if stats is None or not tar.is_file() or not parquet_path(out, unit).is_file():
        return False
    return stats.get("sha256") == sha256_file(tar)


def sample_key(recipe: Recipe, unit: WorkUnit, index: int) -> str:
    """Item ``index`` of the source shard: the shard id, then the index in at least 4 digits."""
    return f"{unit.shard_id:05d}{index:0{max(4, len(str(recipe.shard_size - 1)))}d}"


def plan_units(recipe: Recipe, shard_ids: dict[str, list[int]]) -> list[WorkUnit]:
    """Every shard of a build, in the order of the checksum listing: subsets, splits, shard ids."""
    return [WorkUnit(subset.name, split, shard_id) for subset in recipe.subsets for split in SPLITS for shard_id in shard_ids[split]]


class ShardBuilder:
    """Holds the source and renderers made once per worker, and builds shards on demand."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.source = make_source(recipe.source, image_size=recipe.image_size, shard_size=recipe.shard_size, seed=recipe.seed)
        concepts = sorted({c for s in recipe.subsets for c in s.concepts})
        self.renderers = {
            (c, split): make_renderer(c, recipe.concepts.get(c, {}), split, system_fonts=recipe.system_fonts)
            for c in concepts
            for split in SPLITS
        }
        self.version = version()

    def plan(self) -> list[WorkUnit]:
        return plan_units(self.recipe, {split: self.source.shard_ids(split) for split in SPLITS})

    def build(self, unit: WorkUnit, out: Path) -> dict[str, Any]:
        """Write the shard's tar, parquet and (last) stats; return the stats."""
        start = time.perf_counter()
        subset = self.recipe.subset(unit.subset)
        directory = shard_dir(out, unit)
        directory.mkdir(parents=True, exist_ok=True)
        failures: Counter[str] = Counter()
        per_concept: Counter[str] = Counter()
        rows: list[dict[str, Any]] = []
        count = 0
        with TarShardWriter(tar_path(out, unit)) as writer:
            for index, item in enumerate(self.source.read(unit.split, unit.shard_id)):
                count += 1
                key = sample_key(self.recipe, unit, index)
                try:
                    members, meta = self.make_sample(subset, unit, index, key, item)
                except SampleError as e:
                    failures[e.reason] += 1
                    continue
                writer.write(key, members)
                per_concept.update(i.concept for i in meta.instances)
                rows.append(manifest_row(meta, unit))
            sha = writer.close()
        atomic_write_parquet(parquet_path(out, unit), pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
        stats = {
            "shard": unit.name,
            "subset": unit.subset,
            "split": unit.split,
            "count": count,
            "successes": len(rows),
            "failed": count - len(rows),
            "failures": dict(sorted(failures.items())),
            "contaminated": int(sum(r["contaminated"] for r in rows)),
            "instances": dict(sorted(per_concept.items())),
            "sha256": sha,
            "recipe_sha256": self.recipe.sha256,
            "duration_s": round(time.perf_counter() - start, 3),
        }
        atomic_write_json(stats_path(out, unit), stats)
        return stats

    def make_sample(
        self, subset: Subset, unit: WorkUnit, index: int, key: str, item: RawItem
    ) -> tuple[dict[str, bytes], SampleMeta]:
        if item.error:
            raise SampleError(item.error)
        if item.caption is None or not item.caption.strip():
            raise SampleError("missing_caption")
        size = self.recipe.image_size
        clean = prepare_image(item.image, size, self.recipe.min_side, self.source.max_pixels)
        seed = self.sample_seed(unit, index)
        image, instances, mask = self.contaminate(clean, subset, unit.split, np.random.default_rng(seed))
        meta = SampleMeta(
            key=key,
            caption=item.caption.strip(),
            width=size,
            height=size,
            split=unit.split,
            subset=subset.name,
            source={"kind": self.source.kind, "id": item.source_id, **item.meta},
            instances=instances,
            seed=seed,
            recipe=self.recipe.name,
            recipe_sha256=self.recipe.sha256,
            version=self.version,
        )
        members = {
            "jpg": _encode(image, "JPEG", self.recipe.jpeg_quality),
            "txt": meta.caption.encode("utf-8"),
            "json": json.dumps(meta.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"),
        }
        if self.recipe.write_clean:
            members["clean.jpg"] = _encode(clean, "JPEG", self.recipe.jpeg_quality)
        if self.recipe.write_mask:
            members["mask.png"] = _encode(mask, "PNG")
        return members, meta

    def sample_seed(self, unit: WorkUnit, index: int) -> list[int]:
        """The seed of item ``index`` of ``unit``'s source shard: everything drawn for it starts here."""
        subset_index = [s.name for s in self.recipe.subsets].index(unit.subset)
        return [self.recipe.seed, subset_index, SPLITS.index(unit.split), unit.shard_id, index]

    def contaminate(
        self, clean: Image.Image, subset: Subset, split: str, rng: np.random.Generator
    ) -> tuple[Image.Image, list[Instance], Image.Image]:
        """The image, its labels (what stays visible, see ``compositing``) and the concepts' mask."""
        composition = self.draw(clean, subset, split, rng)
        return composition.image, composition.instances(self.recipe.min_visible), composition.mask()

    def draw(self, clean: Image.Image, subset: Subset, split: str, rng: np.random.Generator) -> Composition:
        """With probability ``subset.fraction``, composite one to ``subset.instances`` events, each
        of a drawn concept; each renderer sees the image composited so far."""
        composition = Composition(clean)
        if rng.random() < subset.fraction:
            lo, hi = subset.instances
            for _ in range(int(rng.integers(lo, hi + 1))):
                concept = subset.concepts[int(rng.integers(len(subset.concepts)))]
                renderer = self.renderers[(concept, split)]
                composition.add(renderer.render(rng, clean.size, background=composition.image), concept)
        return composition

    def layers(self, unit: WorkUnit) -> Iterator[tuple[int, list[tuple[str, Layer]]]]:
        """(item index, ordered (concept, layer) list) of every usable item of ``unit``, as ``build``
        composites them: a shard is a pure function of the recipe, so its labels can be re-derived."""
        subset = self.recipe.subset(unit.subset)
        for index, item in enumerate(self.source.read(unit.split, unit.shard_id)):
            if item.error:
                continue
            try:
                clean = prepare_image(item.image, self.recipe.image_size, self.recipe.min_side)
            except SampleError:
                continue
            rng = np.random.default_rng(self.sample_seed(unit, index))
            yield index, self.draw(clean, subset, unit.split, rng).layers


MANIFEST_COLUMNS = [
    "subset",
    "split",
    "shard",
    "key",
    "caption",
    "contaminated",
    "concepts",
    "num_instances",
    "instances",
    "source_id",
    "width",
    "height",
]


def manifest_row(meta: SampleMeta, unit: WorkUnit) -> dict[str, Any]:
    return {
        "subset": unit.subset,
        "split": unit.split,
        "shard": unit.name,
        "key": meta.key,
        "caption": meta.caption,
        "contaminated": meta.contaminated,
        "concepts": ",".join(meta.concepts),
        "num_instances": len(meta.instances),
        "instances": json.dumps([i.to_json(meta.width, meta.height) for i in meta.instances], sort_keys=True),
        "source_id": meta.source["id"],
        "width": meta.width,
        "height": meta.height,
    }


def _encode(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, subsampling=0, optimize=False)
    else:
        image.save(buffer, format=fmt, optimize=False)
    return buffer.getvalue()
