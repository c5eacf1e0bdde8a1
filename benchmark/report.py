"""Turns a benchmark's results.json into the table and plots people read.

results.md puts our ICR beside the paper's (the paper's numbers are anchors from a digest, and the
table says so); plots show ICR with its 95% interval per method and concept, with the detector's
false-positive rate drawn as the floor no method can go under.
"""
from __future__ import annotations

import io
import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

from benchmark.results_file import seed_zero_quality
from implicit_concept.files import atomic_write_bytes

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.toml"


def paper_icr(table: str = "icr") -> dict[str, dict[str, float]]:
    with open(PAPER_NUMBERS, "rb") as f:
        return tomllib.load(f)[table]


#: The paper's Model Removal comparison: methods applied to the model that already draws the concept.
MODEL_REMOVAL = ("sd", "np", "esd", "sld", "ge-model-removal")
#: What the paper's tables are called where their numbers are printed.
PAPER_TABLES = {
    "icr": "the paper's main Data Removal table",
    "ablation": "the paper's ICD-Watermark ablation, where full Geom-Erasing is 7.23 (not the main table's 5.02)",
    "model_removal": "the paper's Model Removal table (SD v1.5, watermark)",
}
#: Methods that frame the others rather than compete: the model before fine-tuning and the one
#: fine-tuned on clean twins. The leaderboard lists them apart from the ranked methods.
CONTROLS = ("base", "oracle")

#: Characters that change a Markdown line's formatting or a table's shape wherever they are.
_MARKDOWN_SPECIAL = set("\\`*_[]<>|~&")


def md_text(text: Any) -> str:
    """``text`` as literal Markdown inline text: every character that could format it (``*``, ``_``,
    backticks, ``<``, ``[``...) or split a table cell (``|``) backslash-escaped, line breaks and other
    control characters as spaces (a newline would end a table row and start another), and a leading
    character that would start a heading, list or quote escaped. Nothing in it can add a row or change
    formatting; :func:`benchmark.results_page.markdown_html` shows it as the text it was."""
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in shown_name(text))
    # "_" between letters or digits never emphasises (GFM), so names like ge_full and paths stay readable
    out = "".join("\\" + ch if ch in _MARKDOWN_SPECIAL and not (ch == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum()
                                                              and text[i + 1].isalnum()) else ch
                  for i, ch in enumerate(text))
    if out[:1] in ("#", "+", "-", "=", ">"):
        out = "\\" + out
    numbered = re.match(r"\d+(?=[.)])", out)  # "1. x" would start a numbered list: "1\. x"
    if numbered:
        out = out[: numbered.end()] + "\\" + out[numbered.end():]
    return out


def shown_name(text: Any) -> str:
    """``text`` with each lone surrogate (a byte of a file name that is not UTF-8, as Python reads
    one: ``r\\udce9sultats``) shown as that byte's escape (``r\\xe9sultats``), as errors show it: the
    page is UTF-8, which holds no such character."""
    return "".join((f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else f"\\u{ord(ch):04x}")
                   if unicodedata.category(ch) == "Cs" else ch for ch in str(text))


def cell(text: Any) -> str:
    """Text for a Markdown table cell, escaped by :func:`md_text`."""
    return md_text(text)


def code(text: Any) -> str:
    """``text`` as an inline code span where it can be one (no backtick, backslash, pipe or line break), else escaped text."""
    text = str(text)
    if any(ch in "`\\|" or unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs") for ch in text) or not text.strip():
        return md_text(text)
    return "`" + text + "`"


def pct(ratio: dict[str, Any] | None) -> str:
    if not ratio:
        return "–"
    return f"{100 * ratio['value']:.1f} {pct_interval(ratio['ci'])}"


def pct_interval(ci: list[float]) -> str:
    """A recorded interval in percent, as every table and target prints it: ``[8.2, 21.4]``."""
    low, high = ci
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


#: Interval kinds of rows that do not name theirs (results.json from before rows recorded ``interval``).
OLD_SINGLE = "percentile bootstrap over images (recorded before rows named their interval)"


def interval_kind(ratio: dict[str, Any], seeded: bool) -> str:
    """The interval a ratio carries, as it records it (``interval``, or ``bootstrap`` in older files)."""
    kind = ratio.get("interval") or ratio.get("bootstrap")
    if kind:
        return str(kind)
    return "over seeds and prompts (kind not recorded)" if seeded else OLD_SINGLE


def _intervals_lines(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """One line per interval kind in the table, naming the rows that carry it: read from each row."""
    kinds: dict[str, list[str]] = {}
    for r in rows:
        if r.get("status") == "ok":
            kinds.setdefault(interval_kind(r["icr"], bool(r.get("seeds"))), []).append(f"{r['method']} / {r['concept']}")
    fp_kinds = {interval_kind(v, False) for v in results.get("fp_rate", {}).values() if isinstance(v, dict)}
    lines = ["95% intervals, as each row records them:", ""]
    for kind, where in kinds.items():
        methods = list(dict.fromkeys(w.split(" / ")[0] for w in where))
        lines.append(f"- {md_text(kind)}: {', '.join(code(m) for m in methods)}")
    for kind in sorted(fp_kinds):
        lines.append(f"- {md_text(kind)}: the detector's FP rate on clean test images")
    return lines + [""]


def _seeds_label(row: dict[str, Any]) -> str:
    """What a seeded row's quality and timings are: a mean over its seeds, or its first seed's."""
    if not row.get("seeds"):
        return ""
    if seed_zero_quality(row):
        return f" (seed {next(iter(row['seeds']))} only)"
    return f" (mean of {len(row['seeds'])} seeds)"


def results_markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_key = {(r["concept"], r["method"]): r for r in rows}
    lines = [f"# Implicit concept removal: {md_text(results['name'])} (track {code(results['track'])})", "",
             md_text(results.get("note", "")), ""]
    lines += _evaluator_lines(results.get("detector", {}), concepts)
    lines += _base_lines(results.get("base", {}))
    lines += [
        f"## Implicit concept ratio (ICR %, 95% interval; in parentheses, {PAPER_TABLES['icr']})",
        "",
        "Rows of methods trained with several seeds give the mean over seeds; their other figures (quality, FID x ICR, "
        "timings) are labelled with what they are.",
        "",
    ]
    lines += _intervals_lines(results, rows)
    fp_row = "| detector FP, clean test images | " + " | ".join(pct(results["fp_rate"].get(c)) for c in concepts) + " |"
    lines += _icr_table(methods, concepts, by_key, paper_icr(), first=fp_row)
    ablation = paper_icr("ablation")
    in_ablation = [m for m in methods if any(m in ablation.get(c, {}) for c in concepts)]
    if in_ablation and any(m not in ("sd", "ge-full", "oracle") for m in in_ablation):
        lines += [f"## The ablation (ICR %; in parentheses, {PAPER_TABLES['ablation']})", "",
                  "Compare each step with the ablation's own numbers, not the main table's.", ""]
        lines += _icr_table(in_ablation, [c for c in concepts if c in ablation], by_key, ablation)
    seeded = [r for r in rows if r.get("seeds") and r.get("status") == "ok"]
    if seeded:
        seeds = _seed_columns(seeded)
        lines += ["## Every seed (ICR %)", "", _row(["method", "concept", *[f"seed {cell(s)}" for s in seeds]])]
        lines.append("|---|---|" + "---|" * len(seeds))
        lines += [_row([cell(r["method"]), cell(r["concept"]), *[pct((r["seeds"].get(s) or {}).get("icr")) for s in seeds]]) for r in seeded]
        lines.append("")
    named = results.get("named_base") or {}
    if named:
        lines += ["## The base, asked by name", "", "ICR of each concept on the evaluation prompts with the concept named, no negative prompt: "
                  "the name-based baselines assume the model knows the word.", "", "| concept | prompt | ICR % | prompts |", "|---|---|---|---|"]
        lines += [f"| {cell(c)} | {code(v['prompt'])} | {pct(v['icr'])} | {v['n_prompts']} |" for c, v in named.items()] + [""]
    removal = [m for m in MODEL_REMOVAL if m in methods]
    if "ge-model-removal" in removal:
        track_seed = str((results.get("seeds") or {}).get("track", 0))
        removal_rows = dict(by_key)
        sd_label = "sd"
        for c in concepts:
            sd = by_key.get((c, "sd"))
            if sd and sd.get("seeds"):
                seed = track_seed if track_seed in sd["seeds"] else next(iter(sd["seeds"]))
                removal_rows[(c, "sd")] = {**sd, "icr": sd["seeds"][seed]["icr"], "seeds": None}
                sd_label = f"sd (seed {seed})"
        lines += [f"## Model Removal (in parentheses, {PAPER_TABLES['model_removal']})", "",
                  "Every method applied to `sd`'s model of the track's seed (the model that learned the concept), so `sd`'s row is that "
                  "seed's ICR, not the mean over seeds; `ge-model-removal` freezes it and learns only the new token embeddings.", ""]
        lines += _icr_table(removal, concepts, removal_rows, paper_icr("model_removal"), labels={"sd": sd_label})
    lines += ["", "## Quality", ""]
    columns = _quality_columns(rows)
    if columns or any(r.get("fid_x_icr") is not None for r in rows):
        if any(r.get("seeds") for r in rows):
            lines += ["A seeded method's quality and FID x ICR are the means over its seeds (FID x ICR: the mean of each seed's "
                      "product), prompt following with an interval over seeds and prompts, unless the row says `seed N only` "
                      "(a results.json from before seeded rows recorded them over seeds).", ""]
        lines += [_row(["concept", "method", *map(cell, columns), "FID x ICR"]), "|" + "---|" * (len(columns) + 3)]
        for r in rows:
            if r.get("status") != "ok":
                continue
            q = r.get("quality", {})
            values = [num(q.get(k)) + _interval(r.get("quality_detail", {}).get(k, {}).get("mean")) for k in columns]
            lines.append(_row([cell(r["concept"]), cell(r["method"]) + md_text(_seeds_label(r)), *values, num(r.get("fid_x_icr"))]))
        lines.append("")
        per_seed = [(r, s, v) for r in rows if r.get("status") == "ok" and not seed_zero_quality(r)
                    for s, v in (r.get("seeds") or {}).items() if "quality" in v]
        if per_seed:
            lines += ["### Every seed (quality)", "", _row(["concept", "method", "seed", *map(cell, columns), "FID x ICR"]),
                      "|" + "---|" * (len(columns) + 4)]
            for r, s, v in per_seed:
                values = [num(v.get("quality", {}).get(k)) + _interval(v.get("quality_detail", {}).get(k, {}).get("mean")) for k in columns]
                lines.append(_row([cell(r["concept"]), cell(r["method"]), cell(s), *values, num(v.get("fid_x_icr"))]))
            lines.append("")
    kinds = sorted({q for r in rows for q in r.get("quality_kinds", [])})
    lines += ["Quality measures: " + ("; ".join(map(md_text, kinds)) or "none"), ""]
    checks = results.get("targets", {}).get("checks", [])
    if checks:
        lines += ["## Targets", "", "| concept | target | measured | met |", "|---|---|---|---|"]
        mark = {True: "yes", False: "**no**", None: "not run"}
        lines += [f"| {cell(str(t['concept']))} | {cell(str(t['target']))} | {cell(str(t['measured']))} | {mark[t['met']]} |" for t in checks] + [""]
    blank = [r for r in rows if r.get("status") == "ok" and r.get("blank_images")]
    if blank:
        lines += ["## Blank images", "", "One flat colour (a safety checker's black, a collapsed model's grey): the detector finds "
                  "nothing in them, so they lower a row's ICR without erasing anything. Read these rows' ICR with their quality.", ""]
        lines += [f"- {code(r['method'])} on {md_text(r['concept'])}: {r['blank_images']} of {r['icr'].get('n', '?')} images" for r in blank] + [""]
    missing = [r for r in rows if r.get("status") != "ok"]
    if missing:
        lines += ["## Not run", ""] + [f"- {code(r['method'])} on {md_text(r['concept'])}: {md_text(r.get('status'))}" for r in missing] + [""]
    lines += _timing_lines(results)
    return "\n".join(lines) + "\n"


def _seed_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every seed any row records, in numeric order: each row's share goes under its own seed's
    column (a row without a seed shows a dash there), not in the order the row lists them."""
    names = dict.fromkeys(s for r in rows for s in r["seeds"])
    return sorted(names, key=lambda s: (0, int(s), s) if s.isascii() and s.isdigit() else (1, 0, s))


def _timing_lines(results: dict[str, Any]) -> list[str]:
    """The run's stages (wall clock) and, per method stage, the sum over every evaluation (each
    method and training seed), said to be a sum: with ``--jobs`` N the evaluations ran side by side,
    so the sums overlap each other and the wall-clock ``methods (...)`` stage."""
    rows = [r for r in results["rows"] if r.get("status") == "ok"]
    lines = ["## Time per stage (s)", "", "| stage | seconds | what the figure is |", "|---|---|---|"]
    lines += [f"| {cell(k)} | {v:.0f} | wall clock |" for k, v in _in_run_order(results.get("timings", {}), rows)]
    sums: dict[str, float] = {}
    for r in rows:
        for stage, seconds in r.get("timings", {}).items():
            sums[stage] = sums.get(stage, 0.0) + seconds
    evaluations = {(r.get("subset"), r["method"]): 1 if seed_zero_quality(r) or not r.get("seeds") else len(r["seeds"]) for r in rows}
    partial = sorted({r["method"] for r in rows if seed_zero_quality(r)})
    jobs = {r.get("jobs") for r in rows}
    side_by_side = any(isinstance(j, int) and j > 1 for j in jobs) or (
        None in jobs and any("jobs)" in k for k in results.get("timings", {})))
    if side_by_side:
        what = (f"sum over {sum(evaluations.values())} evaluations of their own stage times; they ran side by side (--jobs), "
                "so the sum overlaps itself and the methods' wall-clock stage: not wall clock")
    elif None in jobs:
        what = f"sum over {sum(evaluations.values())} evaluations of their own stage times (whether they ran side by side is not recorded)"
    else:
        what = f"sum over {sum(evaluations.values())} evaluations, run one after another"
    lines += [f"| methods: {cell(stage)} | {seconds:.0f} | {what} |" for stage, seconds in sums.items()]
    lines.append("")
    if partial and sums:
        lines += [f"The sums count the first seed only of {', '.join(code(m) for m in partial)}: this results.json records only "
                  "that seed's times for seeded methods (an older version).", ""]
    return lines


#: The stages every run times, in the order they run; a subset's fine-tunes and methods follow them.
_FIRST_STAGES = ("dataset", "base", "detector", "named prompts (base)")


def _in_run_order(timings: dict[str, float], rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """``timings`` in the order the stages ran (results.json keeps them sorted by name): the first
    stages, then per subset in the rows' order its fine-tunes before its methods; any other stage
    after them, by name."""
    subsets = list(dict.fromkeys(str(r.get("subset")) for r in rows))

    def rank(stage: str) -> tuple[int, int, str]:
        if stage in _FIRST_STAGES:
            return 0, _FIRST_STAGES.index(stage), stage
        kind, _, rest = stage.partition(" (")
        subset = rest.split(",")[0].rstrip(")")
        if kind in ("finetunes", "methods") and subset in subsets:
            return 1, subsets.index(subset), stage  # "finetunes" before "methods" by name
        return 2, 0, stage

    return sorted(timings.items(), key=lambda item: rank(item[0]))


def _row(cells: list[str]) -> str:
    """A Markdown table row: one ``|``-separated cell per entry, never an empty one for an empty list."""
    return "| " + " | ".join(cells) + " |"


def _evaluator_lines(detector: dict[str, Any], concepts: list[str]) -> list[str]:
    """The detector, and its thresholds in the tables' column order (results.json keeps them sorted)."""
    if not detector:
        return []
    which = "the published evaluator" if detector.get("published") else "**not the published evaluator**: its ICRs compare only with runs that used the same detector"
    thresholds = detector.get("thresholds")
    if isinstance(thresholds, dict):
        ordered = sorted(thresholds.items(), key=lambda item: concepts.index(item[0]) if item[0] in concepts else len(concepts))
        said = ", ".join(f"{md_text(c)} {t:g}" for c, t in ordered)  # as recorded (a calibrated 0.4137, a conf of 0.12345)
    else:
        said = md_text(detector.get("conf"))
    return [f"Detector {code(str(detector.get('sha256', ''))[:12])}: {which}. Confidence thresholds: {said}.", ""]


def _base_lines(base: dict[str, Any]) -> list[str]:
    """The base every method started from, and the scheduler they sampled with when it is not the track's."""
    if not base:
        return []
    which = "`--pretrained`" if base.get("from") == "--pretrained" else "the track's"
    line = f"Base: {which} (weights sha256 {code(str(base.get('weights_sha256', ''))[:12])})."
    if base.get("sampler"):
        line += (f" **Off the track's protocol**: its methods sampled with the base's own scheduler ({md_text(base['sampler'])}); "
                 "`score-pipeline` samples a handed-over folder with the track's, or with its own under `--own-scheduler`.")
    return [line, ""]


def _icr_table(methods: list[str], concepts: list[str], by_key: dict, paper: dict[str, dict[str, float]], first: str | None = None,
               labels: dict[str, str] | None = None) -> list[str]:
    lines = ["| method | " + " | ".join(map(cell, concepts)) + " |", "|---|" + "---|" * len(concepts), *([first] if first else [])]
    for m in methods:
        cells = []
        for c in concepts:
            r = by_key.get((c, m))
            text = pct(r.get("icr")) if r and r.get("status") == "ok" else "missing" if r else "–"
            if m in paper.get(c, {}):
                text += f" ({paper[c][m]:.1f})"
            cells.append(text)
        seeds = next((len(by_key[(c, m)]["seeds"]) for c in concepts if (by_key.get((c, m)) or {}).get("seeds")), 0)
        label = md_text((labels or {}).get(m, m)) + (f" ({seeds} seeds)" if seeds else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _quality_columns(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k in r.get("quality", {})})


def _interval(estimate: dict[str, Any] | None) -> str:
    return f" [{num(estimate['ci'][0])}, {num(estimate['ci'][1])}]" if estimate else ""


def num(v: Any) -> str:
    """A number as people read it, the one rounding every table and target uses: no exponent for FIDs
    and products (1090, 21815), 3 significant digits below 100, trailing zeros kept (0.430 [0.360,
    0.504], not 0.43 [0.36, 0.504])."""
    if v is None:
        return "–"
    if not isinstance(v, float):
        return str(v)
    if abs(float(f"{v:.3g}")) >= 100:
        return f"{v:.0f}"
    if v == 0:
        return "0"
    if abs(v) >= 1e-4:
        return f"{v:#.3g}"
    return f"{v:.2e}"


def plot_icr(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r.get("status") == "ok"]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):  # a "$" in a name is text, not mathtext
        return _plot(plt, results, rows, concepts, Path(path))


def _plot(plt: Any, results: dict[str, Any], rows: list[dict[str, Any]], concepts: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(concepts), figsize=(4.5 * len(concepts), 4), squeeze=False)
    for ax, c in zip(axes[0], concepts):
        rs = [r for r in rows if r["concept"] == c]
        values = [100 * r["icr"]["value"] for r in rs]
        err = [[100 * (r["icr"]["value"] - r["icr"]["ci"][0]) for r in rs], [100 * (r["icr"]["ci"][1] - r["icr"]["value"]) for r in rs]]
        ax.bar(range(len(rs)), values, yerr=err, capsize=3, color="#4c72b0")
        fp = results["fp_rate"].get(c)
        if fp and fp["value"] > 0:  # at 0 the line would lie on the axis
            ax.axhline(100 * fp["value"], color="#c44e52", linestyle="--", label="detector FP rate")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_xticks(range(len(rs)), [r["method"] + (f" (mean of {len(r['seeds'])} seeds)" if r.get("seeds") else "") for r in rs],
                      rotation=45, ha="right")
        ax.set_title(c)
        ax.set_ylabel("ICR % (95% CI)")
        ax.set_ylim(0, 100)
    fig.suptitle(f"{results['name']} ({results['track']} track)")
    fig.tight_layout()
    buffer = io.BytesIO()  # renamed into place whole: a kill mid-write leaves the last plot, not half of one
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
