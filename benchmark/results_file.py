"""A run's ``results.json``, read and checked once, so the report and the leaderboard never meet a
field of another shape: a folder handed over by another lab fails here, as one line naming the
file, the field and the problem (``runs/x/results.json: fp_rate.qrcode: not a ratio ...``)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

from implicit_concept.json_records import read_json_object
from implicit_concept.stats import EXACT_BINOMIAL

RATIO = "not a ratio {'value': 0..1, 'ci': [low, high]} with 0 <= low <= high <= 1"


class _Bad(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")


def read_results(run_dir: Path) -> dict[str, Any]:
    """The ``results.json`` of ``run_dir``, every field the report and the leaderboard read checked."""
    path = Path(run_dir) / "results.json"
    try:
        results = read_json_object(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise FileNotFoundError(f"{path}: a broken symbolic link (to {os.readlink(path)})") from None
        raise FileNotFoundError(f"{path}: no results.json (is {run_dir} a benchmark run folder?)") from None
    except OSError as e:  # a folder, a link looping to itself, a file the reader may not open: named as what it is
        raise ValueError(f"{path}: cannot be read as a results file ({e.strerror or e})") from None
    check_results(results, path)
    return results


def check_results(results: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming ``path`` and the field, a results.json-shaped dict with a field of
    another shape (what the report and the leaderboard read)."""
    try:
        _check(results)
    except _Bad as e:
        raise ValueError(f"{path}: {e}") from None


def seed_zero_quality(row: dict[str, Any]) -> bool:
    """A row trained with several seeds whose quality (and FID x ICR, cross-checks, timings) is its
    first seed's alone: results.json from before seeded rows recorded ``over_seeds``."""
    return bool(row.get("seeds")) and "quality" not in (row.get("over_seeds") or [])


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_ratio(ratio: Any) -> bool:
    """``{'value': v, 'ci': [low, high]}`` within [0, 1], the interval not inverted, its parts agreeing."""
    return ratio_problem(ratio) is None


#: How far a share's value, rounded to 5 decimals where it is written, may be from its count over n.
ROUNDING = 1e-5


def ratio_problem(ratio: Any) -> str | None:
    """What of ``ratio`` is not a share with its interval, or None. Its parts must agree with each
    other: a value edited by hand (a lower ICR typed over the measured one) leaves its interval and its
    ``count`` of ``n`` behind, and every reader would rank by the edited value."""
    def unit(v: Any) -> bool:
        return is_number(v) and 0.0 <= v <= 1.0

    if not (isinstance(ratio, dict) and unit(ratio.get("value")) and isinstance(ratio.get("ci"), list)
            and len(ratio["ci"]) == 2 and all(unit(v) for v in ratio["ci"]) and ratio["ci"][0] <= ratio["ci"][1]):
        return RATIO
    value, (low, high) = ratio["value"], ratio["ci"]
    if not low <= value <= high:
        return f"value {value} lies outside its interval [{low}, {high}]"
    count, n = ratio.get("count"), ratio.get("n")
    if count is None and n is None:
        return None  # a share recorded without its counts (an older results.json)
    if not (type(count) is int and type(n) is int and 0 <= count <= n and n >= 1):
        return f"count {count!r:.20} of n {n!r:.20}: not whole numbers with 0 <= count <= n and n >= 1"
    if ratio.get("interval") == EXACT_BINOMIAL and abs(value - count / n) > ROUNDING:
        return f"value {value} is not its count {count} of n {n} ({count / n:.5f})"
    return None


def _kind(value: Any) -> str:
    return "missing" if value is None or value is ABSENT else f"a {type(value).__name__}"


def _need(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise _Bad(field, problem)


#: What ``.get(key, ABSENT)`` gives for a key not in the file: an optional object may be left out,
#: but not given as ``null`` (the readers take a present key's value as the object).
ABSENT: Any = object()


def _object(value: Any, field: str, optional: bool = True) -> dict[str, Any]:
    """``value`` as an object (``{}`` when ``ABSENT`` and ``optional``); ``null`` is refused."""
    if value is ABSENT and optional:
        return {}
    _need(value is not None or not optional, field, "null, not an object (leave the field out instead)")
    _need(isinstance(value, dict), field, f"{_kind(value)}, not an object")
    return value


def _ratio(value: Any, field: str, whose: str = "") -> None:
    problem = ratio_problem(value)
    _need(problem is None, field, f"{problem}{whose}")


def _each(value: Any, field: str, check: Callable[[Any], bool], want: str) -> None:
    """Every entry of an optional object passes ``check``."""
    for key, entry in _object(value, field).items():
        _need(check(entry), f"{field}.{key}", f"{_kind(entry)} ({entry!r:.40}), not {want}")


def _check(results: dict[str, Any]) -> None:
    for key, kind, name in (("name", str, "a string"), ("track", str, "a string"), ("rows", list, "a list")):
        _need(isinstance(results.get(key), kind), key, f"{_kind(results.get(key))}, not {name}")
    _need(isinstance(results.get("note", ""), str), "note", "not a string")
    for key in ("config", "seeds", "environment"):
        _object(results.get(key, ABSENT), key)
    _object(results.get("config", {}).get("track", ABSENT), "config.track")
    _need(isinstance(results.get("fp_rate"), dict), "fp_rate", f"{_kind(results.get('fp_rate'))}, not an object")
    for concept, ratio in results["fp_rate"].items():
        _ratio(ratio, f"fp_rate.{concept}")
    detector = _object(results.get("detector", ABSENT), "detector")
    _evaluator(detector)
    base = _object(results.get("base", ABSENT), "base")
    for key in ("weights_sha256", "sampler"):
        _need(isinstance(base.get(key, ""), str), f"base.{key}", f"{_kind(base.get(key))}, not a string")
    _each(detector.get("thresholds", ABSENT), "detector.thresholds", is_number, "a number")
    _each(results.get("timings", ABSENT), "timings", is_number, "a number of seconds")
    for concept, named in _object(results.get("named_base", ABSENT), "named_base").items():
        field = f"named_base.{concept}"
        _object(named, field, optional=False)
        _need(isinstance(named.get("prompt"), str), f"{field}.prompt", f"{_kind(named.get('prompt'))}, not a string")
        _ratio(named.get("icr"), f"{field}.icr")
        _need(is_number(named.get("n_prompts")), f"{field}.n_prompts", f"{_kind(named.get('n_prompts'))}, not a number")
    checks = _object(results.get("targets", ABSENT), "targets").get("checks", [])
    _need(isinstance(checks, list), "targets.checks", f"{_kind(checks)}, not a list")
    for i, check in enumerate(checks):
        field = f"targets.checks[{i}]"
        _object(check, field, optional=False)
        missing = [k for k in ("concept", "target", "measured", "met") if k not in check]
        _need(not missing, field, f"no {', '.join(missing)}")
        _need(check["met"] in (True, False, None), f"{field}.met", "not true, false or null")
    first: dict[tuple[str, str], int] = {}
    for i, row in enumerate(results["rows"]):
        _row(row, f"rows[{i}]")
        key = (row["method"], row["concept"])
        # A run scores each method once per concept: of two rows the report and the leaderboard would
        # each silently show one (the last), whichever number that is.
        _need(key not in first, f"rows[{i}]", f"a second row for {row['method']}, {row['concept']} (the first is "
                                               f"rows[{first.get(key)}]); a run holds one row per method and concept")
        first[key] = i


def _evaluator(detector: dict[str, Any]) -> None:
    """What the leaderboard compares runs' evaluators on and the report says of it: a value of another
    kind would be shown as a difference that is none (``0.25`` against ``"0.25"``), or a claim
    (``"published": "no"`` read as published)."""
    for key in ("sha256", "clean_reference_sha256"):
        _need(detector.get(key) is None or isinstance(detector[key], str), f"detector.{key}", f"{_kind(detector.get(key))}, not a string")
    conf = detector.get("conf")
    _need(conf is None or is_number(conf) and 0.0 <= conf <= 1.0, "detector.conf",
          f"{_kind(conf)} ({conf!r:.40}), not a confidence in [0, 1] or null (the detector's own thresholds)")
    _need(type(detector.get("published", False)) is bool, "detector.published", f"{_kind(detector.get('published'))}, not true or false")


def _row(row: Any, field: str) -> None:
    _need(isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("method", "concept")),
          field, "not an object with a method and a concept (strings)")
    _need(isinstance(row.get("status", ""), str), f"{field}.status", "not a string")
    for key in ("subset", "method_spec", "method_code_sha256"):
        _need(row.get(key) is None or isinstance(row[key], str), f"{field}.{key}", f"{_kind(row.get(key))}, not a string")
    _need(row.get("jobs") is None or type(row["jobs"]) is int, f"{field}.jobs", f"{_kind(row.get('jobs'))}, not a whole number")
    model = _object(row.get("model", ABSENT), f"{field}.model")
    _need(model.get("scheduler") is None or isinstance(model["scheduler"], str), f"{field}.model.scheduler", "not a string")
    edited = model.get("edited_in_memory")
    _need(edited is None or isinstance(edited, list) and all(isinstance(k, str) for k in edited),
          f"{field}.model.edited_in_memory", "not a list of strings")
    if row.get("status") != "ok":
        return
    _ratio(row.get("icr"), f"{field}.icr", f" ({row['method']}, {row['concept']})")
    for key in ("interval", "bootstrap"):  # the interval's kind: "interval" since rows name it, "bootstrap" before (seeded rows)
        _need(isinstance(row["icr"].get(key, ""), str), f"{field}.icr.{key}", "not a string")
    over = row.get("over_seeds", [])
    _need(isinstance(over, list) and all(isinstance(k, str) for k in over), f"{field}.over_seeds", "not a list of strings")
    _each(row.get("quality", ABSENT), f"{field}.quality", lambda v: v is None or is_number(v), "a number")
    _each(row.get("quality_detail", ABSENT), f"{field}.quality_detail",
          lambda v: isinstance(v, dict) and (v.get("mean") is None or _is_interval(v["mean"])), "an object whose mean has a ci [low, high]")
    for seed, entry in _object(row.get("seeds", ABSENT), f"{field}.seeds").items():
        _need(isinstance(entry, dict), f"{field}.seeds.{seed}", f"{_kind(entry)} ({entry!r:.40}), not an object with an icr ratio")
        _ratio(entry.get("icr"), f"{field}.seeds.{seed}.icr")
    _each(row.get("timings", ABSENT), f"{field}.timings", is_number, "a number of seconds")
    kinds = row.get("quality_kinds", [])
    _need(isinstance(kinds, list) and all(isinstance(k, str) for k in kinds), f"{field}.quality_kinds", "not a list of strings")
    _need(row.get("fid_x_icr") is None or is_number(row["fid_x_icr"]), f"{field}.fid_x_icr", "not a number")
    blank, n = row.get("blank_images", 0), row["icr"].get("n")
    among = f" among its {n}" if type(n) is int else ""
    _need(type(blank) is int and 0 <= blank and (not among or blank <= n), f"{field}.blank_images",
          f"{blank!r:.40}, not a count of images{among}")


def _is_interval(estimate: Any) -> bool:
    return (isinstance(estimate, dict) and isinstance(estimate.get("ci"), list) and len(estimate["ci"]) == 2
            and all(is_number(v) for v in estimate["ci"]))
