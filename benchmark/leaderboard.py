"""Many runs' ``results.json`` in one table, and whether their numbers can be compared at all.

Two ICRs are comparable only when they come from the same track (data, seeds, settings), the same
data (the recipe as built: a track run on ``--source`` another lab's images is another dataset), the same
base model (benchmark runs record its weights; ``--pretrained`` replaces the track's), the same
prompts (their content, where results record it) and the same evaluator: the detector's weights,
and what turns its detections into numbers (the confidence thresholds a detection counts at, the
track's ``conf`` that overrides them, and the clean-image reference false-positive rates are read
from): the same weights at other thresholds give another ICR. The leaderboard checks each and says
which runs differ and how, in the page itself, rather than silently ranking numbers that mean
different things; where an older results.json does not record a part of the evaluator, a note says
the runs were not compared on it.

A folder ``score-pipeline`` or ``score-images`` wrote (its ``summary.json``) takes part as a run of
one method, checked the same way; one scored off the track's protocol (its ``overrides``: another
size, lossy files, another scheduler) is a difference, not a row among equals.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.report import CONTROLS, cell, code, md_text, pct
from benchmark.results_file import check_results, is_ratio, read_results
from benchmark.results_page import STYLE, markdown_html
from implicit_concept.content_hashes import sha256_file
from implicit_concept.file_locks import LOCK_NAME, locked, read_locked
from implicit_concept.files import atomic_write_text, foreign_output, within
from implicit_concept.json_records import read_json_object
from implicit_concept.provenance import version

#: What ``score-pipeline`` and ``score-images`` write beside their images.
SUMMARY_FILE = "summary.json"

#: What must agree for two runs' numbers to share a table, and where results.json keeps it; a run
#: that does not record one cannot be compared, which is a difference.
COMPARABLE = {
    "track": lambda r: r.get("config", {}).get("track_sha256"),
    "evaluator": lambda r: r.get("detector", {}).get("sha256"),
}
#: The rest of the evaluator, in results.json's ``detector``: (field, whether null is a value).
#: ``conf`` null means "the detector's own thresholds"; a clean-reference digest of null means the
#: detector's record held none. A results.json from before a field was written lacks it: runs are
#: then compared without it, and a note says so.
EVALUATOR_SETTINGS = {
    "evaluator thresholds": ("thresholds", False),
    "evaluator conf": ("conf", True),
    "evaluator clean-image reference (sha256)": ("clean_reference_sha256", False),
}
_UNRECORDED = object()


@dataclass(frozen=True)
class Leaderboard:
    markdown: str
    #: Human-readable lines, one per way in which the runs cannot be compared; empty when they can.
    differences: list[str]
    #: How the comparison was made where it could not be made in full (older results), and runs with nothing scored.
    notes: list[str] = field(default_factory=list)


def prompts_content(results: dict[str, Any]) -> list[str] | None:
    """The sha256 of the prompts each scored row was judged on (distinct, sorted); None when a row
    does not record it (a results.json from before it did)."""
    hashes = [r.get("prompts_sha256") for r in results["rows"] if r.get("status") == "ok"]
    return sorted(set(hashes)) if hashes and all(isinstance(h, str) for h in hashes) else None


def _prompts_by_name(results: dict[str, Any]) -> Any:
    return (results.get("seeds", {}).get("evaluation_prompts"), results.get("config", {}).get("track", {}).get("num_prompts"))


def differences(runs: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """One line per comparability key on which the runs disagree, naming each run's value; and notes
    on comparisons made with less than the prompts' content."""
    lines, notes = [], []
    content = {name: prompts_content(r) for name, r in runs.items()}
    keys = dict(COMPARABLE)
    if all(v is not None for v in content.values()):
        keys["prompts (content sha256)"] = lambda r: prompts_content(r)
    else:
        keys["prompts"] = _prompts_by_name
        older = [name for name, v in content.items() if v is None]
        notes.append(f"prompts compared by file name and count only: {', '.join(older)} record no prompts sha256 "
                     "(a results.json from an older version, or no scored rows)")
    for key, get in keys.items():
        values = {name: get(r) for name, r in runs.items()}
        unrecorded = [name for name, v in values.items() if v is None]
        if unrecorded:
            lines.append(f"{key} not recorded in: {', '.join(unrecorded)} (a results.json from an older version)")
        elif len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            lines.append(f"{key} differs: " + "; ".join(f"{name} = {v}" for name, v in values.items()))
    bases = {name: r["base"].get("weights_sha256") if r.get("base") else _UNRECORDED
             for name, r in runs.items() if not r.get("handed_over")}  # a handed-over pipeline's base is not known
    _compare_recorded("base model (weights sha256)", bases, lines, notes, " (a results.json from an older version)")
    own = {name: r for name, r in runs.items() if not r.get("handed_over")}  # a handed-over pipeline's data is not known
    recipes = {name: r.get("config", {}).get("recipe_sha256", _UNRECORDED) for name, r in own.items()}
    if any(v is not _UNRECORDED for v in recipes.values()):
        _compare_recorded("data (recipe sha256)", recipes, lines, notes, " (a results.json from an older version)")
    sources = {name: r["config"]["source_fingerprint"] for name, r in own.items() if "source_fingerprint" in r.get("config", {})}
    one_recipe = len({json.dumps(v, sort_keys=True) for v in recipes.values() if v is not _UNRECORDED}) == 1
    if one_recipe and len({json.dumps(v, sort_keys=True) for v in sources.values()}) > 1:
        notes.append("data: one recipe, but the source files differ in name, size or modification time between "
                     + ", ".join(sources) + " (other images, or the same ones copied without their times)")
    for key, (field_name, null_is_value) in EVALUATOR_SETTINGS.items():
        values = {name: _detector_field(r, field_name, null_is_value) for name, r in runs.items()}
        _compare_recorded(key, values, lines, notes, " (a results.json from an older version, or a detector whose record holds "
                                                      "none); the same weights at other settings give other ICRs")
    return lines, notes


def _compare_recorded(key: str, values: dict[str, Any], lines: list[str], notes: list[str], unrecorded_because: str) -> None:
    """Compare the runs that record ``key`` (a difference goes to ``lines``); runs that do not
    (:data:`_UNRECORDED`) get a note, not a claim of agreement."""
    recorded = {name: v for name, v in values.items() if v is not _UNRECORDED}
    if len({json.dumps(v, sort_keys=True) for v in recorded.values()}) > 1:
        lines.append(f"{key} differs: " + "; ".join(f"{name} = {v}" for name, v in recorded.items()))
    unrecorded = [name for name in values if name not in recorded]
    if unrecorded and len(values) > 1:
        notes.append(f"{key} not compared: not recorded in {', '.join(unrecorded)}{unrecorded_because}")


def off_protocol(runs: dict[str, dict[str, Any]]) -> list[str]:
    """One line per run scored off its track's protocol: a summary.json's ``overrides``, or a run whose
    methods sampled with their base's scheduler where it is not the track's (results.json's ``base``)."""
    lines = [f"{name} was scored off the track's protocol (overrides: {json.dumps(r['overrides'], sort_keys=True)})"
             for name, r in runs.items() if r.get("overrides")]
    return lines + [f"{name} sampled off the track's protocol, with its base's own scheduler ({r['base']['sampler']})"
                    for name, r in runs.items() if (r.get("base") or {}).get("sampler")]


def provenance_notes(runs: dict[str, dict[str, Any]]) -> list[str]:
    """What a plug-in's row says made it: its ``--method`` spec and code, and what it sampled with
    that the folders its ``model`` names do not hold (weights or a scheduler changed in memory)."""
    notes = []
    for name, results in runs.items():
        seen = set()
        for row in results["rows"]:
            model = row.get("model") if isinstance(row.get("model"), dict) else {}
            edited = model.get("edited_in_memory") or []
            if row["method"] in seen or not (row.get("method_spec") or edited):
                continue
            seen.add(row["method"])
            said = f"{name} / {row['method']}"
            if row.get("method_spec"):
                said += f": plug-in {row['method_spec']} (code sha256 {str(row.get('method_code_sha256'))[:12]})"
            if edited:
                said += f"; sampled with {', '.join(map(str, edited))} changed in memory from the folders its model names"
            notes.append(said)
    return notes


def version_notes(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Packages recorded at other versions by different runs (``environment.packages``): the same
    seed gives the same bytes only under the same versions, so a gap between such runs may be theirs."""
    recorded = {name: r["environment"]["packages"] for name, r in runs.items()
                if isinstance(r.get("environment"), dict) and isinstance(r["environment"].get("packages"), dict)}
    notes = []
    for package in sorted({p for packages in recorded.values() for p in packages}):
        by_version: dict[str, list[str]] = {}
        for name, packages in recorded.items():
            version = packages[package] if package in packages else "not recorded"
            by_version.setdefault("not installed" if version is None else str(version), []).append(name)
        if len(by_version) > 1:
            said = "; ".join(f"{version} ({', '.join(names)})" for version, names in sorted(by_version.items()))
            notes.append(f"{package} differs between runs, which may change their numbers: {said}")
    unrecorded = [name for name in runs if name not in recorded]
    if recorded and unrecorded:
        notes.append(f"package versions not compared: not recorded in {', '.join(unrecorded)} (a results.json from an older version)")
    return notes


def blank_notes(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Rows whose images are partly blank (one flat colour): their ICR is lowered without erasing."""
    return [f"{name} / {row['method']} on {row['concept']}: {row['blank_images']} of {row['icr'].get('n', '?')} images blank "
            "(one flat colour), which the detector finds nothing in: read its ICR with its quality"
            for name, results in runs.items() for row in results["rows"]
            if row.get("status", "ok") == "ok" and row.get("blank_images")]


def read_scored(folder: Path) -> dict[str, Any]:
    """A benchmark run folder's ``results.json``, or a ``score-pipeline``/``score-images`` folder's
    ``summary.json`` as a run of one method (:func:`summary_as_results`); one a command is writing
    now (holding its lock) is refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {'not a folder' if folder.exists() else 'does not exist'} (a run folder holds results.json, "
                                f"a score-pipeline or score-images --out folder {SUMMARY_FILE})")
    with read_locked(folder, wait=False) as writer:  # its results so far, whole, would be ranked as its results
        if writer is not None:
            raise ValueError(f"{folder}: a command is writing it now (pid {writer} holds its lock {LOCK_NAME}); "
                             "leave it out, or build the leaderboard once it has finished")
        if scored_file(folder).name == SUMMARY_FILE:
            return summary_as_results(folder)
        if not os.path.lexists(folder / "results.json"):  # a broken or looping link is there: read_results names it
            raise FileNotFoundError(f"{folder}: holds neither results.json (a benchmark run folder) nor {SUMMARY_FILE} "
                                    "(a score-pipeline or score-images --out folder)")
        return read_results(folder)


def scored_file(folder: Path) -> Path:
    """The file :func:`read_scored` reads in ``folder``: its results.json, else its summary.json."""
    if os.path.lexists(folder / "results.json") or not (folder / SUMMARY_FILE).is_file():
        return folder / "results.json"
    return folder / SUMMARY_FILE


def summary_as_results(folder: Path) -> dict[str, Any]:
    """A ``summary.json`` in ``results.json``'s shape: one method (named after the pipeline or image
    folder scored), a row per concept of the track, and the track, evaluator and prompts it was judged
    with, so :func:`differences` compares it as it compares runs. Checked as a results.json is
    (:func:`~benchmark.results_file.check_results`): a field of another shape is refused in one line
    naming the file and the field."""
    path = Path(folder) / SUMMARY_FILE
    summary = read_json_object(path)
    problem = _summary_problem(summary)
    if problem:
        raise ValueError(f"{path}: {problem}")
    inputs = summary.get("inputs", {})
    scored = inputs.get("pipeline") or inputs.get("images")
    method = _scored_name(scored) or Path(folder).resolve().name
    concepts = summary.get("track_concepts")
    rows = [{**row, "method": method, "subset": "-", "status": "ok"} for row in summary["rows"]
            if not isinstance(concepts, list) or row["concept"] in concepts]
    detector = dict(summary.get("detector", {}))
    if detector.get("conf") is not None and isinstance(concepts, list):
        detector["thresholds"] = {c: detector["conf"] for c in concepts}  # as results.json records one conf
    prompts = summary.get("prompts", {})
    results = {
        "name": Path(folder).name, "track": summary.get("track"), "rows": rows, "overrides": summary.get("overrides") or {},
        "handed_over": True,  # a pipeline or images handed over: no base of the run's to compare
        "one_model_per_subset": summary.get("protocol") == "per-subset" and summary.get("subset") is None
        and isinstance(concepts, list) and len(concepts) > 1,
        "one_subset": summary.get("protocol") == "per-subset" and isinstance(summary.get("subset"), str),
        "config": {"track_sha256": summary.get("track_sha256"), "track": {"num_prompts": prompts.get("count")}},
        "seeds": {"evaluation_prompts": prompts.get("file")},
        "detector": {k: v for k, v in detector.items() if k in ("path", "sha256", "conf", "thresholds", "clean_reference_sha256")},
        "fp_rate": {row["concept"]: row["fp_rate"] for row in rows if is_ratio(row.get("fp_rate"))},
    }
    if "environment" in summary:
        results["environment"] = summary["environment"]
    check_results(results, path)
    return results


def _scored_name(scored: Any) -> str:
    """The name of the folder scored, as its path was typed; none for one typed ``.``, ``..`` or ``/``
    (``score-images . --out ../mine``), which would be a row with no method name."""
    name = Path(scored).name if isinstance(scored, str) else ""
    return "" if name in ("", "..") else name


def _summary_problem(summary: dict[str, Any]) -> str | None:
    """What of a summary.json's shape its conversion needs (objects where it reads fields), or None;
    every field is then checked as a results.json's is."""
    if not isinstance(summary.get("rows"), list):
        return "rows: not a list"
    for i, row in enumerate(summary["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("concept"), str):
            return f"rows[{i}]: not an object with a concept (a string)"
    for key in ("detector", "prompts", "inputs", "overrides"):
        if key in summary and not isinstance(summary[key], dict):
            return f"{key}: not an object"
    return None


def _detector_field(results: dict[str, Any], name: str, null_is_value: bool) -> Any:
    detector = results.get("detector", {})
    if name not in detector or (detector[name] is None and not null_is_value):
        return _UNRECORDED
    return detector[name]


#: One method of one run in a table: (mean ICR or None, run, method, row per concept, whether a control).
Entry = tuple[float | None, str, str, dict[str, Any], bool]


def _entries(name: str, results: dict[str, Any], concepts: list[str]) -> list[Entry]:
    """Each method's :data:`Entry`. The mean exists only when the method scored every concept of the
    table: a mean over the rest would rank it among complete ones. A controls' name is a control only
    in a benchmark run: a folder handed over (``score-images outputs/base``) is a lab's model, ranked."""
    by_method: dict[str, dict[str, Any]] = {}
    for row in results["rows"]:
        by_method.setdefault(row["method"], {})[row["concept"]] = row
    entries = []
    for method, rows in by_method.items():
        complete = all(rows.get(c, {}).get("status") == "ok" for c in concepts)
        mean = sum(rows[c]["icr"]["value"] for c in concepts) / len(concepts) if complete else None
        entries.append((mean, name, method, rows, method in CONTROLS and not results.get("handed_over")))
    return entries


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    return pct(row["icr"]) if row.get("status") == "ok" else cell(str(row.get("status", "not ok")))


def _ranked_table(entries: list[Entry], concepts: list[str]) -> list[str]:
    """The methods ranked by mean ICR, then the incomplete ones, then the controls (listed, not ranked)."""
    lines = ["| run | method | " + " | ".join(f"{cell(c)} ICR %" for c in concepts) + " | mean ICR % |",
             "|---|---|" + "---|" * (len(concepts) + 1)]
    methods = [e for e in entries if not e[4]]
    ranked = sorted((e for e in methods if e[0] is not None), key=lambda e: e[0])
    listed = ranked + [e for e in methods if e[0] is None] + [e for e in entries if e[4]]
    for mean, name, method, rows, control in listed:
        said = f"{100 * mean:.1f}" if mean is not None else "incomplete"
        label = cell(method) + (" (control, not ranked)" if control else "")
        lines.append(f"| {cell(name)} | {label} | " + " | ".join(_cell(rows.get(c)) for c in concepts) + f" | {said} |")
    return lines + [""]


def leaderboard(run_dirs: list[Path]) -> Leaderboard:
    _check_each_once(run_dirs)
    runs = {str(d): read_scored(d) for d in run_dirs}
    concepts = _concepts(runs)
    diff, notes = differences(runs)
    diff += off_protocol(runs)
    compared_in_part = bool(notes)
    notes += provenance_notes(runs)
    notes += version_notes(runs)
    notes += blank_notes(runs)
    notes += [f"{name} is one model scored on every concept, where the track's protocol fine-tunes one model per subset "
              "(score with --subset for that subset's row)" for name, r in runs.items() if r.get("one_model_per_subset")]
    one_subset = [name for name, r in runs.items() if r.get("one_subset")]
    if one_subset:
        notes.append(f"{', '.join(one_subset)} each scored one subset of a per-subset track (--subset): each is listed as a run of "
                     "its own, over that subset's concepts, never joined with others into one method (nothing a summary.json "
                     "records says which folders are one method's), so beside other subsets it is incomplete, or not comparable "
                     "where the track prompts each subset with its own test captions")
    empty = [name for name, res in runs.items() if not res["rows"]]
    if empty:
        notes.append(f"no rows scored in: {', '.join(empty)}")
    lines = ["# Leaderboard", ""]
    if diff:
        lines += ["**These runs are not comparable:**", ""] + [f"- {md_text(d)}" for d in diff] + [""]
    elif compared_in_part:
        lines += ["No run differs from another in what they record of the track, the base model, the evaluator (detector weights, "
                  "thresholds, conf, clean-image reference) and the prompts, but not all of it is recorded: see the notes.", ""]
    else:
        lines += ["Every run shares the track, the evaluator (detector weights, thresholds, conf and clean-image reference) "
                  "and the prompts, and every benchmark run the base model.", ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {md_text(n)}" for n in notes] + [""]
    lines += ["Methods are ranked by their mean ICR over the concepts, lowest first (the least of the concepts drawn); a method's "
              "mean exists only when it scored every concept; incomplete methods are listed after the ranked ones. "
              f"The controls ({', '.join(f'`{c}`' for c in CONTROLS)}: the model before fine-tuning, and one fine-tuned on clean "
              "twins) frame the others and are listed apart, not ranked.", ""]
    if diff and len(runs) > 1:
        lines += ["The runs are not comparable, so each is ranked on its own; no rank crosses runs.", ""]
        for name, res in runs.items():
            # Its own concepts: a run of a track with fewer (paper-dry's one) is complete on them, not
            # "incomplete" for a concept another run's track scores.
            own = _concepts({name: res})
            lines += [f"## {md_text(name)}", ""] + _ranked_table(_entries(name, res, own), own)
    else:
        lines += _ranked_table([e for name, res in runs.items() for e in _entries(name, res, concepts)], concepts)
    lines += ["## Made from", "", f"By implicit-concept {version()}, from these files (sha256):", ""]
    lines += [f"- {code(str(scored_file(Path(name))))}: {sha256_file(scored_file(Path(name)))}" for name in runs]
    return Leaderboard("\n".join(lines) + "\n", diff, notes)


def _concepts(runs: dict[str, dict[str, Any]]) -> list[str]:
    """The concepts the runs' rows score, in the order first met."""
    return list(dict.fromkeys(r["concept"] for res in runs.values() for r in res["rows"]))


def _check_each_once(run_dirs: list[Path]) -> None:
    """Refuse a folder given twice (``runs/a`` and ``./runs/a/``, or a link to it): its methods would be
    ranked twice, beside themselves, or one of the two silently dropped."""
    first: dict[str, Path] = {}
    for folder in run_dirs:
        real = os.path.realpath(folder)
        if real in first:
            raise ValueError(f"{folder}: the same folder as {first[real]}, given twice; name each run once")
        first[real] = Path(folder)


#: What :func:`write_leaderboard` writes into its ``--out``.
PAGES = ("leaderboard.md", "leaderboard.html")


def write_leaderboard(run_dirs: list[Path], out: Path) -> Leaderboard:
    """Write ``leaderboard.md`` and ``leaderboard.html`` into ``out``, holding it: two boards written
    into one folder at once would leave the page of one beside the Markdown of the other."""
    out = Path(out)
    _check_out_apart(out, run_dirs)
    board = leaderboard(run_dirs)
    theirs = foreign_output(out, PAGES)
    if theirs:
        raise ValueError(f"--out {out}: holds {theirs}, which the leaderboard would replace; move it away or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, wait=False, refusal="wait for it to finish or choose another --out", inside=True):
        atomic_write_text(out / PAGES[0], board.markdown)
        page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Leaderboard</title><style>{STYLE}</style>"
                f"</head><body>{markdown_html(board.markdown)}</body></html>\n")
        atomic_write_text(out / PAGES[1], page)
    return board


def _check_out_apart(out: Path, run_dirs: list[Path]) -> None:
    """Refuse an ``--out`` that is or lies inside a folder the board reads, or is itself a run or
    scored folder: a run folder is one run's record (its page, what is archived or mailed with it),
    and a board of several runs written there would be found as that run's. One holding them
    (``--out runs``) writes its two files beside them and is fine."""
    for folder in run_dirs:
        if within(out, folder):
            raise ValueError(f"--out {out}: is or lies inside {folder}, a folder the leaderboard reads; "
                             "write the board to a folder apart from the runs")
    for name in ("results.json", SUMMARY_FILE):
        if (out / name).is_file():
            raise ValueError(f"--out {out}: holds {name}, so it is a {'benchmark run' if name == 'results.json' else 'scored'} "
                             "folder; write the board to a folder apart from the runs")
