"""Builds a whole dataset from a recipe: plan, skip finished shards, run the rest, write the card.

Resumable: a rerun after a kill skips shards whose stats file exists and whose tar still has the
sha256 it records, rebuilds the rest from scratch, and produces the same bytes as a build that
never stopped. An output folder remembers the recipe that made it and refuses to mix in shards of
another. One build at a time writes into
a folder: a second waits for the first, then finds its shards finished (two benchmarks share one
data folder, so waiting is what lets the second go on).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from builders.dataset_card import write_dataset_card
from builders.distributor import run_units
from builders.recipe import Recipe
from builders.shard_builder import MANIFEST_COLUMNS, ShardBuilder, is_complete, read_stats, shard_dir, stats_path
from implicit_concept.files import TEMPORARY_MARK, FolderClaimError, abandoned, atomic_write_json, atomic_write_parquet, claim, locked
from implicit_concept.provenance import environment

RECIPE_RECORD = "recipe.json"
MANIFEST = "manifest.parquet"


@dataclass
class BuildReport:
    out: Path
    built: int
    skipped: int
    samples: int
    failures: dict[str, int]


def build_dataset(
    recipe: Recipe,
    out: Path,
    workers: int = 1,
    progress: bool = True,
    distributor: str = "multiprocessing",
    ray_address: str | None = None,
) -> BuildReport:
    """Build (or finish building) ``recipe`` into ``out``; see ``run_units`` for the distributors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        _claim_output(recipe, out)
        units = ShardBuilder(recipe).plan()
        _remove_stale_temporaries(out)
        todo = [u for u in units if not is_complete(out, u)]
        run_units(recipe, todo, out, workers=workers, progress=progress, distributor=distributor, ray_address=ray_address)
        stats = [json.loads(stats_path(out, u).read_text()) for u in units]
        _write_manifest(out, units)
        atomic_write_json(out / RECIPE_RECORD, _recipe_record(recipe))
        write_dataset_card(recipe, out, units, stats)
    failures: dict[str, int] = {}
    for s in stats:
        for reason, n in s["failures"].items():
            failures[reason] = failures.get(reason, 0) + n
    return BuildReport(out, len(todo), len(units) - len(todo), sum(s["successes"] for s in stats), failures)


def _recipe_record(recipe: Recipe) -> dict[str, Any]:
    return {"recipe": recipe.to_dict(), "recipe_sha256": recipe.sha256, "environment": environment()}


def _claim_output(recipe: Recipe, out: Path) -> None:
    """Refuse a folder that holds another recipe's build, by its record or by any shard's stats
    (an unreadable stats file marks an unfinished shard, rebuilt)."""
    mismatched = [p for p in out.rglob("*_stats.json") if _of_another_recipe(read_stats(p), recipe)]
    if mismatched:
        raise FolderClaimError(f"{mismatched[0]}: shard of another recipe in {out}; choose another --out or remove the folder")
    claim(out / RECIPE_RECORD, _recipe_record(recipe), "choose another --out or remove the folder", keys=("recipe_sha256",))


def _of_another_recipe(stats: dict[str, Any] | None, recipe: Recipe) -> bool:
    return stats is not None and stats.get("recipe_sha256") != recipe.sha256


def _remove_stale_temporaries(out: Path) -> None:
    """Remove what killed writers left; a live writer's temporary is never touched."""
    for tmp in out.rglob(f".*{TEMPORARY_MARK}*"):
        if abandoned(tmp):
            tmp.unlink(missing_ok=True)


def _write_manifest(out: Path, units: list) -> None:
    frames = [pd.read_parquet(shard_dir(out, u) / f"{u.name}.parquet") for u in units]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MANIFEST_COLUMNS)
    atomic_write_parquet(out / MANIFEST, frame)
