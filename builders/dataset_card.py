"""The dataset card (README.md in the output folder) and its checksum list.

Written from the shards' stats files alone, so it can be regenerated at any time after a build.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from builders.recipe import Recipe
from implicit_concept.files import atomic_write_bytes
from implicit_concept.provenance import canonical_json, environment

CHECKSUMS = "checksums.sha256"
CARD = "README.md"


def checksum_lines(units: list, stats: list[dict[str, Any]]) -> list[str]:
    return [f"{s['sha256']}  {u.subset}/{u.split}/{u.name}.tar" for u, s in zip(units, stats)]


def write_dataset_card(recipe: Recipe, out: Path, units: list, stats: list[dict[str, Any]]) -> None:
    lines = checksum_lines(units, stats)
    atomic_write_bytes(out / CHECKSUMS, ("\n".join(lines) + "\n").encode())
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for u, s in zip(units, stats):
        t = totals.setdefault((u.subset, u.split), {"shards": 0, "samples": 0, "contaminated": 0, "failed": 0})
        t["shards"] += 1
        t["samples"] += s["successes"]
        t["contaminated"] += s["contaminated"]
        t["failed"] += s["failed"]
    env = environment()
    card = [
        f"# {recipe.name}: Implicit Concept Dataset build",
        "",
        "Synthesized by `implicit-concept build`. Captions never name the concept; every concept",
        "instance's tight box is in `KEY.json` (pixels, x2/y2 exclusive, and normalised).",
        "",
        f"- recipe sha256: `{recipe.sha256}`",
        f"- seed: {recipe.seed}; image size: {recipe.image_size} px; source: `{recipe.source.get('kind')}`",
        f"- python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v),
        "",
        "| subset | split | shards | samples | contaminated | failed |",
        "|---|---|---|---|---|---|",
    ]
    for (subset, split), t in totals.items():
        card.append(f"| {subset} | {split} | {t['shards']} | {t['samples']} | {t['contaminated']} | {t['failed']} |")
    card += [
        "",
        "## Layout",
        "`SUBSET/SPLIT/00000.tar` holds `KEY.jpg`, `KEY.txt`, `KEY.json` and, when the recipe asks,",
        "`KEY.clean.jpg` (the image before compositing) and `KEY.mask.png` (concept alpha). Beside each",
        "tar: `00000.parquet` (per-sample metadata) and `00000_stats.json` (written last).",
        "`manifest.parquet` concatenates every shard's table.",
        "",
        "## Recipe",
        "```json",
        canonical_json(recipe.to_dict()),
        "```",
        "",
        f"## Checksums (`{CHECKSUMS}`)",
        "```",
        *lines,
        "```",
        "",
    ]
    atomic_write_bytes(out / CARD, "\n".join(card).encode("utf-8"))
