"""Many runs' ``results.json`` in one table, and whether their numbers can be compared at all.

Two ICRs are comparable only when they come from the same track (data, prompts, seeds, settings)
and the same evaluator (the detector's weights). The leaderboard checks both and says which runs
differ and how, in the page itself, rather than silently ranking numbers that mean different things.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.report import pct
from benchmark.results_page import STYLE, markdown_html
from implicit_concept.files import atomic_write_text, read_json_object

#: What must agree for two runs' numbers to share a table, and where results.json keeps it.
COMPARABLE = {
    "track": lambda r: r.get("config", {}).get("track_sha256"),
    "evaluator": lambda r: r.get("detector", {}).get("sha256"),
    "prompts": lambda r: (r.get("seeds", {}).get("evaluation_prompts"), r.get("config", {}).get("track", {}).get("num_prompts")),
}


@dataclass(frozen=True)
class Leaderboard:
    markdown: str
    #: Human-readable lines, one per way in which the runs cannot be compared; empty when they can.
    differences: list[str]


def read_results(run_dir: Path) -> dict[str, Any]:
    """A run's ``results.json``, checked to have the shape the report and the leaderboard read: a
    folder handed over by another lab fails here, naming the file and the field, not in a table."""
    path = Path(run_dir) / "results.json"
    try:
        results = read_json_object(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no results.json (is {run_dir} a benchmark run folder?)") from None
    problem = _shape_problem(results)
    if problem:
        raise ValueError(f"{path}: {problem}; not a benchmark results.json")
    return results


def _shape_problem(results: dict[str, Any]) -> str | None:
    for key, kind in (("name", str), ("track", str), ("rows", list), ("fp_rate", dict)):
        if not isinstance(results.get(key), kind):
            return f"{key!r} is {'missing' if key not in results else type(results[key]).__name__}, not a {kind.__name__}"
    for key in ("config", "detector", "seeds", "targets", "timings", "named_base"):
        if results.get(key) is not None and not isinstance(results[key], dict):
            return f"{key!r} is a {type(results[key]).__name__}, not an object"
    for i, row in enumerate(results["rows"]):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("method", "concept")):
            return f"rows[{i}] is not an object with a method and a concept"
        if row.get("status") == "ok" and not _is_ratio(row.get("icr")):
            return f"rows[{i}] ({row['method']}, {row['concept']}): 'icr' is not {{'value': 0..1, 'ci': [low, high]}}"
    return None


def _is_ratio(ratio: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0

    return (isinstance(ratio, dict) and number(ratio.get("value")) and isinstance(ratio.get("ci"), list)
            and len(ratio["ci"]) == 2 and all(number(v) for v in ratio["ci"]))


def differences(runs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per comparability key on which the runs disagree, naming each run's value."""
    lines = []
    for key, get in COMPARABLE.items():
        values = {name: get(r) for name, r in runs.items()}
        unrecorded = [name for name, v in values.items() if v is None]
        if unrecorded:
            lines.append(f"{key} not recorded in: {', '.join(unrecorded)} (a results.json from an older version)")
        elif len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            lines.append(f"{key} differs: " + "; ".join(f"{name} = {v}" for name, v in values.items()))
    return lines


def leaderboard(run_dirs: list[Path]) -> Leaderboard:
    runs = {str(d): read_results(d) for d in run_dirs}
    concepts = list(dict.fromkeys(r["concept"] for res in runs.values() for r in res["rows"]))
    diff = differences(runs)
    lines = ["# Leaderboard", ""]
    if diff:
        lines += ["**These runs are not comparable:**", ""] + [f"- {d}" for d in diff] + [""]
    else:
        lines += ["Every run shares the track, the evaluator (detector weights) and the prompts.", ""]
    lines += ["| run | method | " + " | ".join(f"{c} ICR %" for c in concepts) + " | mean ICR % |", "|---|---|" + "---|" * (len(concepts) + 1)]
    entries = []
    for name, res in runs.items():
        by_method: dict[str, dict[str, Any]] = {}
        for row in res["rows"]:
            if row.get("status") == "ok":
                by_method.setdefault(row["method"], {})[row["concept"]] = row["icr"]
        for method, icrs in by_method.items():
            mean = sum(v["value"] for v in icrs.values()) / len(icrs)
            entries.append((mean, name, method, icrs))
    for mean, name, method, icrs in sorted(entries, key=lambda e: e[0]):
        lines.append(f"| {name} | {method} | " + " | ".join(pct(icrs.get(c)) for c in concepts) + f" | {100 * mean:.1f} |")
    return Leaderboard("\n".join(lines) + "\n", diff)


def write_leaderboard(run_dirs: list[Path], out: Path) -> Leaderboard:
    board = leaderboard(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.md", board.markdown)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Leaderboard</title><style>{STYLE}</style>"
            f"</head><body>{markdown_html(board.markdown)}</body></html>\n")
    atomic_write_text(out / "leaderboard.html", page)
    return board
