"""Turns a benchmark's results.json into the table and plots people read.

results.md puts our ICR beside the paper's (the paper's numbers are anchors from a digest, and the
table says so); plots show ICR with its 95% interval per method and concept, with the detector's
false-positive rate drawn as the floor no method can go under.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.toml"


def paper_icr(table: str = "icr") -> dict[str, dict[str, float]]:
    with open(PAPER_NUMBERS, "rb") as f:
        return tomllib.load(f)[table]


#: The paper's Model Removal comparison: methods applied to the model that already draws the concept.
MODEL_REMOVAL = ("sd", "np", "esd", "sld", "ge-model-removal")


def cell(text: str) -> str:
    """Text for a Markdown table cell: a ``|`` in a name must not split the row."""
    return text.replace("|", "\\|")


def pct(ratio: dict[str, Any] | None) -> str:
    if not ratio:
        return "–"
    low, high = ratio["ci"]
    return f"{100 * ratio['value']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def results_markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_key = {(r["concept"], r["method"]): r for r in rows}
    lines = [f"# Implicit concept removal: {results['name']} (track `{results['track']}`)", "", results.get("note", ""), ""]
    lines += _evaluator_lines(results.get("detector", {}))
    lines += [
        "## Implicit concept ratio (ICR %, 95% interval; paper's number in parentheses)",
        "",
        "Rows trained with several seeds carry an interval over seeds and prompts (seeds resampled, with one set of resampled prompts shared by all seeds, as every seed is scored on the same prompts); the others over prompts.",
        "",
    ]
    fp_row = "| detector FP, clean test images | " + " | ".join(pct(results["fp_rate"].get(c)) for c in concepts) + " |"
    lines += _icr_table(methods, concepts, by_key, paper_icr(), first=fp_row)
    seeded = [r for r in rows if r.get("seeds") and r.get("status") == "ok"]
    if seeded:
        lines += ["## Every seed (ICR %)", "", "| method | concept | " + " | ".join(f"seed {s}" for s in seeded[0]["seeds"]) + " |"]
        lines.append("|---|---|" + "---|" * len(seeded[0]["seeds"]))
        lines += [f"| {cell(r['method'])} | {cell(r['concept'])} | " + " | ".join(pct(v["icr"]) for v in r["seeds"].values()) + " |" for r in seeded]
        lines.append("")
    named = results.get("named_base") or {}
    if named:
        lines += ["## The base, asked by name", "", "ICR of each concept on the evaluation prompts with the concept named, no negative prompt: "
                  "the name-based baselines assume the model knows the word.", "", "| concept | prompt | ICR % | prompts |", "|---|---|---|---|"]
        lines += [f"| {cell(c)} | `{cell(v['prompt'])}` | {pct(v['icr'])} | {v['n_prompts']} |" for c, v in named.items()] + [""]
    removal = [m for m in MODEL_REMOVAL if m in methods]
    if "ge-model-removal" in removal:
        lines += ["## Model Removal (the paper's Table 2)", "", "Every method applied to `sd`, the model that learned the concept; "
                  "`ge-model-removal` freezes it and learns only the new token embeddings. Paper: SD v1.5, watermark.", ""]
        lines += _icr_table(removal, concepts, by_key, paper_icr("model_removal"))
    lines += ["", "## Quality", ""]
    columns = _quality_columns(rows)
    if columns or any(r.get("fid_x_icr") is not None for r in rows):
        lines += [_row(["concept", "method", *map(cell, columns), "FID x ICR"]), "|" + "---|" * (len(columns) + 3)]
        for r in rows:
            if r.get("status") != "ok":
                continue
            q = r.get("quality", {})
            values = [_num(q.get(k)) + _interval(r.get("quality_detail", {}).get(k, {}).get("mean")) for k in columns]
            lines.append(_row([cell(r["concept"]), cell(r["method"]), *values, _num(r.get("fid_x_icr"))]))
        lines.append("")
    kinds = sorted({q for r in rows for q in r.get("quality_kinds", [])})
    lines += ["Quality measures: " + ("; ".join(kinds) or "none"), ""]
    checks = results.get("targets", {}).get("checks", [])
    if checks:
        lines += ["## Targets", "", "| concept | target | measured | met |", "|---|---|---|---|"]
        mark = {True: "yes", False: "**no**", None: "not run"}
        lines += [f"| {cell(str(t['concept']))} | {cell(str(t['target']))} | {cell(str(t['measured']))} | {mark[t['met']]} |" for t in checks] + [""]
    missing = [r for r in rows if r.get("status") != "ok"]
    if missing:
        lines += ["## Not run", ""] + [f"- `{r['method']}` on {r['concept']}: {r.get('status')}" for r in missing] + [""]
    stages = dict(results.get("timings", {}))
    for r in rows:
        for stage, seconds in r.get("timings", {}).items():
            stages[f"methods: {stage}"] = stages.get(f"methods: {stage}", 0.0) + seconds
    lines += ["## Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {cell(k)} | {v:.0f} |" for k, v in stages.items()]
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    """A Markdown table row: one ``|``-separated cell per entry, never an empty one for an empty list."""
    return "| " + " | ".join(cells) + " |"


def _evaluator_lines(detector: dict[str, Any]) -> list[str]:
    if not detector:
        return []
    which = "the published evaluator" if detector.get("published") else "**not the published evaluator**: its ICRs compare only with runs that used the same detector"
    thresholds = detector.get("thresholds")
    said = ", ".join(f"{c} {t:.3g}" for c, t in thresholds.items()) if isinstance(thresholds, dict) else f"{detector.get('conf')}"
    return [f"Detector `{str(detector.get('sha256', ''))[:12]}`: {which}. Confidence thresholds: {said}.", ""]


def _icr_table(methods: list[str], concepts: list[str], by_key: dict, paper: dict[str, dict[str, float]], first: str | None = None) -> list[str]:
    lines = ["| method | " + " | ".join(map(cell, concepts)) + " |", "|---|" + "---|" * len(concepts), *([first] if first else [])]
    for m in methods:
        cells = []
        for c in concepts:
            r = by_key.get((c, m))
            text = pct(r.get("icr")) if r and r.get("status") == "ok" else "missing" if r else "–"
            if m in paper.get(c, {}):
                text += f" ({paper[c][m]:.1f})"
            cells.append(text)
        seeds = next((len(by_key[(c, m)]["seeds"]) for c in concepts if by_key.get((c, m), {}).get("seeds")), 0)
        lines.append(f"| {cell(m)}{f' ({seeds} seeds)' if seeds else ''} | " + " | ".join(cells) + " |")
    return lines + [""]


def _quality_columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k in r.get("quality", {})})


def _interval(estimate: dict[str, Any] | None) -> str:
    return f" [{estimate['ci'][0]:.3g}, {estimate['ci'][1]:.3g}]" if estimate else ""


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def plot_icr(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("status") == "ok"]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, axes = plt.subplots(1, len(concepts), figsize=(4.5 * len(concepts), 4), squeeze=False)
    for ax, c in zip(axes[0], concepts):
        rs = [r for r in rows if r["concept"] == c]
        values = [100 * r["icr"]["value"] for r in rs]
        err = [[100 * (r["icr"]["value"] - r["icr"]["ci"][0]) for r in rs], [100 * (r["icr"]["ci"][1] - r["icr"]["value"]) for r in rs]]
        ax.bar(range(len(rs)), values, yerr=err, capsize=3, color="#4c72b0")
        fp = results["fp_rate"].get(c)
        if fp:
            ax.axhline(100 * fp["value"], color="#c44e52", linestyle="--", label="detector FP rate")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xticks(range(len(rs)), [r["method"] for r in rs], rotation=45, ha="right")
        ax.set_title(c)
        ax.set_ylabel("ICR % (95% CI)")
        ax.set_ylim(0, 100)
    fig.suptitle(f"{results['name']} ({results['track']} track)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
