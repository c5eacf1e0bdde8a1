"""The dataset card (README.md in the output folder) and its checksum list.

The card is a Hugging Face dataset card: its YAML front matter names the license and task
categories, and declares one config per subset, each split's tars as its data files, and every
field of a sample with its type (``KEY.json``'s from :data:`implicit_concept.sample.JSON_SHAPE`),
so ``datasets.load_dataset(root, "icd-qrcode")`` gives images and boxes, streamed or not, without
guessing a schema from the first records. Written from the shards' stats files and tables alone,
so it can be regenerated at any time after a build.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from builders.recipe import Recipe, portable_detector
from implicit_concept.files import write_unless_same
from implicit_concept.provenance import TRACKED_PACKAGES, canonical_json, environment
from implicit_concept.sample import JSON_SHAPE, SPLITS

if TYPE_CHECKING:
    from builders.build import SourceSummary

CHECKSUMS = "checksums.sha256"
CARD = "README.md"
TASK_CATEGORIES = ["object-detection", "text-to-image"]


def checksum_lines(units: list, stats: list[dict[str, Any]]) -> list[str]:
    return [f"{s['sha256']}  {u.subset}/{u.split}/{u.name}.tar" for u, s in zip(units, stats)]


def hf_features(recipe: Recipe) -> list[dict[str, Any]]:
    """A sample's members as ``datasets`` declares features in a card (the webdataset builder's
    column names: one per member extension, then ``__key__`` and ``__url__``)."""
    members = [{"name": "jpg", "dtype": "image"}, {"name": "txt", "dtype": "string"}, {"name": "json", **_feature(JSON_SHAPE)}]
    members += [{"name": "clean.jpg", "dtype": "image"}] if recipe.write_clean else []
    members += [{"name": "mask.png", "dtype": "image"}] if recipe.write_mask else []
    return members + [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]


def _feature(shape: Any) -> dict[str, Any]:
    if isinstance(shape, dict):
        return {"struct": [{"name": name, **_feature(inner)} for name, inner in shape.items()]}
    if isinstance(shape, list):
        inner = _feature(shape[0])
        return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner.get("struct", inner)}
    return {"dtype": shape}


def front_matter(recipe: Recipe, units: list) -> dict[str, Any]:
    splits = {s.name: [split for split in SPLITS if any(u.subset == s.name and u.split == split for u in units)] for s in recipe.subsets}
    return {
        "license": recipe.license,
        "task_categories": TASK_CATEGORIES,
        "pretty_name": f"Implicit Concept Dataset ({recipe.name})",
        "tags": ["webdataset", "implicit-concept", "concept-erasure"],
        "configs": [
            {
                "config_name": subset,
                "data_files": [{"split": split, "path": f"{subset}/{split}/*.tar"} for split in names],
                **({"default": True} if i == 0 else {}),
            }
            for i, (subset, names) in enumerate(splits.items())
        ],
        "dataset_info": [{"config_name": subset, "features": hf_features(recipe)} for subset in splits],
    }


def write_dataset_card(
    recipe: Recipe, out: Path, units: list, stats: list[dict[str, Any]], summary: "SourceSummary", env: dict[str, Any] | None = None
) -> None:
    lines = checksum_lines(units, stats)
    write_unless_same(out / CHECKSUMS, ("\n".join(lines) + "\n").encode())
    write_unless_same(out / CARD, card_bytes(recipe, units, stats, summary, env))


def _in_tracked_order(packages: dict[str, Any]) -> list[tuple[str, Any]]:
    """``packages`` in :data:`TRACKED_PACKAGES`' order (others after, by name), whether fresh or read
    back from ``recipe.json`` (which sorts them): a finished build rerun writes the same card."""
    rank = {name: i for i, name in enumerate(TRACKED_PACKAGES)}
    return sorted(packages.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def card_bytes(
    recipe: Recipe, units: list, stats: list[dict[str, Any]], summary: "SourceSummary", env: dict[str, Any] | None = None
) -> bytes:
    """The card of a build: a function of its recipe, plan, stats, manifest summary and environment
    (``verify`` rebuilds it to check the one on disk)."""
    lines = checksum_lines(units, stats)
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for u, s in zip(units, stats):
        t = totals.setdefault((u.subset, u.split), {"shards": 0, "samples": 0, "contaminated": 0, "failed": 0})
        t["shards"] += 1
        t["samples"] += s["successes"]
        t["contaminated"] += s["contaminated"]
        t["failed"] += s["failed"]
    env = env or environment()
    card = [
        "---",
        yaml.safe_dump(front_matter(recipe, units), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        f"# {recipe.name}: Implicit Concept Dataset build",
        "",
        "Synthesized by `implicit-concept build`. Every concept instance's box is in `KEY.json`: the box",
        "of its pixels still visible in the final image (pixels, x2/y2 exclusive, and normalised).",
        "",
        f"- recipe sha256: `{recipe.sha256}`",
        f"- seed: {recipe.seed}; image size: {recipe.image_size} px; source: `{recipe.source.get('kind')}`; license: {recipe.license}",
        f"- python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in _in_tracked_order(env["packages"]) if v),
        "",
        "| subset | split | shards | samples | contaminated | failed |",
        "|---|---|---|---|---|---|",
    ]
    for (subset, split), t in totals.items():
        card.append(f"| {subset} | {split} | {t['shards']} | {t['samples']} | {t['contaminated']} | {t['failed']} |")
    members = [m["name"] for m in hf_features(recipe) if not m["name"].startswith("__")]
    card += ["", "## Screens", *_screens(recipe, summary), "", "## Loading",
             f"Check a copy you downloaded before loading it: `implicit-concept verify path/to/{recipe.name}` (checksums, schema, boxes).",
             "```python",
             "import datasets",
             f'ds = datasets.load_dataset("path/to/{recipe.name}", "{recipe.subsets[0].name}")            # or streaming=True',
             "import webdataset as wds                        # decode only a sample's members: webdataset's default decoders",
             f"members = {json.dumps(members)}  # would unpickle a KEY.pyd or torch.load a KEY.pth slipped into a shard",
             f'ds = wds.WebDataset("path/to/{recipe.name}/{recipe.subsets[0].name}/train/{{00000..00000}}.tar", shardshuffle=False).decode("pil", only=members)',
             "```",
             "In `KEY.json`, `instances[*].params` and `source.meta` are JSON text (`json.loads` them): their",
             "fields differ between concepts and sources, and a record of one shape reads the same everywhere."]
    card += [
        "",
        "## Layout",
        "`SUBSET/SPLIT/00000.tar` holds `KEY.jpg`, `KEY.txt`, `KEY.json` and, when the recipe asks,",
        "`KEY.clean.jpg` (the image before compositing) and `KEY.mask.png` (concept alpha). Beside each",
        "tar: `00000.parquet`, one row per source item the shard read (img2dataset's per-sample status:",
        "`status` is `success` for a sample, with the `sha256` of its `KEY.jpg`, or why the item was",
        "skipped, with `reason` and `error_message`) and `00000_stats.json` (written last).",
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
    return "\n".join(card).encode("utf-8")


def _screens(recipe: Recipe, summary: "SourceSummary") -> list[str]:
    """What the screens found, per source item (an item read by several subsets counts once)."""
    named = ", ".join(f"{c} {n}" for c, n in summary.caption_names.items()) or "none"
    shown = ", ".join(f"{c} {n}" for c, n in summary.source_shows.items()) or "none"
    caption = {
        "drop": "they are dropped, and captions never name a concept",
        "strip": "those words are taken out (the item dropped when nothing is left), and captions never name a concept",
        "flag": "they are kept as they are and flagged (`screen.caption_names` in `KEY.json`): such captions name a concept",
    }[recipe.caption_screen.policy]
    skipped = sum(summary.skipped.values())
    lines = [
        f"{summary.items} source items (each counted once, whatever the subsets that read it): {summary.used} made samples, "
        f"{skipped} skipped" + (" (" + ", ".join(f"{r} {n}" for r, n in summary.skipped.items()) + ")" if skipped else "")
        + "; every one is a row of each subset's parquet tables, with its reason.",
        "",
        f"- Caption screen: source captions naming a concept, by concept: {named} "
        f"(policy `{recipe.caption_screen.policy}`: {caption}).",
    ]
    screen = recipe.source_screen
    if screen.active:
        detector = f"the detector `{portable_detector(screen.detector)}` at conf {screen.conf}" if screen.detector else ""
        tools = " and ".join(t for t in (detector, "a QR decoder" if screen.qr_decode else "") if t)
        action = "they are dropped" if screen.policy == "drop" else "they are kept and flagged (`screen.source_shows` in `KEY.json`)"
        lines.append(f"- Source screen with {tools}: source images already showing a concept, by concept: {shown} "
                     f"(policy `{screen.policy}`: {action}).")
    else:
        lines.append("- Source screen: off (the recipe names no detector and no QR decoder); source images were not screened.")
    return lines
