"""The claims a track's results are checked against (the tiny track's targets), as plain data.

Each check reads only the finished rows, so it never changes what is measured: a target that is not
met is reported as such, with the numbers, and a check whose methods did not run says so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any, Callable

from benchmark.report import num, pct_interval
from benchmark.results_file import seed_zero_quality


@dataclass(frozen=True)
class Targets:
    #: The method whose removal is judged (the paper's full Geom-Erasing).
    removal_method: str = "ge-full"
    #: `sd` must show the concept in at least this share of images: it was learned.
    sd_min_icr: float = 0.25
    #: The removal method's ICR must be at most this share of `sd`'s, with disjoint 95% intervals.
    #: A fraction as a string ("1/3") is exact; a decimal is given RATIO_SLACK (0.0001) of slack, so
    #: the tiny track's 0.3333 means "a third": an exact third holds, as no ratio of counts below some
    #: thousands of images falls between 1/3 and 0.3334. ICRs are compared as exact fractions of counts.
    removal_max_ratio: float | str = "1/3"
    #: `oracle` (trained on clean twins) lands within this many points of the detector's FP rate.
    oracle_max_above_fp: float = 0.05
    #: `np` (the name as a negative prompt) lands within this many ICR points of `sd`: a claim for a
    #: base that does not know the concept's name. None: not claimed.
    np_max_gap: float | None = None
    #: The base's own ICR (the detector's false positives on generated images) is at most this.
    base_max_icr: float | None = None
    #: The base draws each concept for at least this share of prompts that name it.
    named_base_min_icr: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.removal_method, str) or not self.removal_method:
            raise ValueError(f"targets.removal_method must be a method's name, got {self.removal_method!r}")
        ratio = self.removal_max_ratio
        if not (isinstance(ratio, str) and _fraction(ratio) is not None
                or isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio)):
            raise ValueError(f"targets.removal_max_ratio must be a number in [0, 1] or a fraction such as \"1/3\", got {ratio!r}")
        if not 0 <= bound(ratio)[0] <= 1:
            raise ValueError(f"targets.removal_max_ratio must be a number in [0, 1], got {ratio!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("removal_method", "removal_max_ratio") and value is not None and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
            ):
                raise ValueError(f"targets.{f.name} must be a number in [0, 1], got {value!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Targets":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown targets field(s) {unknown} (known: {sorted(known)})")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fraction(text: str) -> Fraction | None:
    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return None


#: The slack a decimal ratio bound is given: 0.3333 (four decimals of a third) then holds an exact third.
RATIO_SLACK = Fraction(1, 10_000)


def bound(value: float | int | str) -> tuple[Fraction, Fraction]:
    """A ratio bound as (exact value, slack): a fraction string ("1/3") or an integer is exact; a
    decimal, as written, with :data:`RATIO_SLACK`, so 0.3333 (like 1/3) holds an exact third."""
    if isinstance(value, str):
        return _fraction(value), Fraction(0)
    if isinstance(value, int):
        return Fraction(value), Fraction(0)
    return Fraction(repr(float(value))), RATIO_SLACK


def exact_icr(row: dict[str, Any]) -> tuple[Fraction, Fraction]:
    """A row's ICR as (exact fraction, tolerance): from its counts where it records them (a seeded row:
    the mean of its seeds' count/n, as its value is), else its recorded value, within half a unit in the
    fifth decimal it was rounded to."""
    seeds = row.get("seeds") or {}
    ratios = [s.get("icr", {}) for s in seeds.values()] if seeds else [row["icr"]]
    if ratios and all(isinstance(r.get("count"), int) and isinstance(r.get("n"), int) and r["n"] > 0 for r in ratios):
        return sum((Fraction(r["count"], r["n"]) for r in ratios), Fraction(0)) / len(ratios), Fraction(0)
    return Fraction(repr(float(row["icr"]["value"]))), Fraction(1, 200_000)


def at_most_ratio(ge: dict[str, Any], sd: dict[str, Any], ratio: float | int | str) -> bool:
    """Whether ``ge``'s ICR is at most ``ratio`` times ``sd``'s, compared exactly (no float rounding
    flips an exact third); recorded values without counts are given their rounding's benefit."""
    (g, g_tol), (s, s_tol), (b, b_tol) = exact_icr(ge), exact_icr(sd), bound(ratio)
    return g - g_tol <= (b + b_tol) * (s + s_tol)


def ratio_text(value: float | int | str) -> str:
    return value if isinstance(value, str) else repr(value)


def check_targets(
    rows: list[dict[str, Any]], fp_rate: dict[str, Any], targets: Targets, named: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One entry per concept and claim: what was wanted, what was measured, and whether it holds
    (``met`` is None when a method it needs did not run). ``named``: the base's ICR per concept on
    prompts naming it (results.json's ``named_base``)."""
    named = named or {}
    ok = {(r["concept"], r["method"]): r for r in rows if r.get("status") == "ok"}
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    removal = targets.removal_method
    checks = []
    for c in concepts:
        sd, ge, np_, oracle, base = (ok.get((c, m)) for m in ("sd", removal, "np", "oracle", "base"))
        asked = named.get(c)
        fp = fp_rate.get(c, {}).get("value")
        follow_sd, follow_ge = _following(sd), _following(ge)
        checks += [
            _claim(c, f"sd ICR >= {_pct(targets.sd_min_icr)}", [sd], lambda: (
                f"sd {_pct_against(_icr(sd), targets.sd_min_icr)}{_counts(sd)}", _icr(sd) >= targets.sd_min_icr)),
            _claim(c, f"{removal} ICR <= {ratio_text(targets.removal_max_ratio)} x sd, intervals disjoint", [sd, ge], lambda: (
                f"{removal} {_pct(_icr(ge))}{_counts(ge)} {_ci(ge)} vs sd {_pct(_icr(sd))}{_counts(sd)} {_ci(sd)}",
                at_most_ratio(ge, sd, targets.removal_max_ratio) and ge["icr"]["ci"][1] < sd["icr"]["ci"][0])),
            _claim(c, f"oracle within {_points(targets.oracle_max_above_fp)} of the detector FP rate", [oracle, fp], lambda: (
                f"oracle {_pct(_icr(oracle))} vs FP {_pct(fp)}", _icr(oracle) <= fp + targets.oracle_max_above_fp)),
            _following_claim(c, removal, sd, ge, follow_sd, follow_ge),
        ]
        if targets.np_max_gap is not None:
            checks.append(_claim(c, f"np within {_points(targets.np_max_gap)} of sd", [sd, np_], lambda: (
                f"np {_pct(_icr(np_))} vs sd {_pct(_icr(sd))}", abs(_icr(np_) - _icr(sd)) <= targets.np_max_gap)))
        if targets.base_max_icr is not None:
            checks.append(_claim(c, f"base ICR <= {_pct(targets.base_max_icr)} (false positives on generated images)", [base], lambda: (
                f"base {_pct(_icr(base))} {_ci(base)}", _icr(base) <= targets.base_max_icr)))
        if targets.named_base_min_icr is not None:
            checks.append(_claim(c, f"base ICR >= {_pct(targets.named_base_min_icr)} on prompts naming it", [asked], lambda: (
                f"base, named: {_pct(_icr(asked))} {_ci(asked)}", _icr(asked) >= targets.named_base_min_icr)))
    return checks


def _following_claim(concept: str, removal: str, sd: dict[str, Any] | None, ge: dict[str, Any] | None,
                     follow_sd: dict[str, Any] | None, follow_ge: dict[str, Any] | None) -> dict[str, Any]:
    """The removal method's prompt following (its mean over seeds, for a seeded row) at or above the
    lower end of sd's interval (over seeds and prompts, for a seeded row). A seeded row that records
    its first seed's prompt following only (a results.json from before) is not judged."""
    target = f"{removal} prompt following no worse than sd's interval"
    first_seed_only = [name for name, row in (("sd", sd), (removal, ge)) if row is not None and seed_zero_quality(row)]
    if first_seed_only and follow_sd is not None and follow_ge is not None:
        return {"concept": concept, "target": target, "met": None,
                "measured": f"not judged: {' and '.join(first_seed_only)} record their first seed's prompt following only (an older results.json)"}

    def said(row: dict[str, Any]) -> str:
        seeds = row.get("quality_detail", {}).get("prompt_following", {}).get("n_seeds")
        return f" (mean of {seeds} seeds)" if seeds else ""

    return _claim(concept, target, [follow_sd, follow_ge], lambda: (
        f"{removal} {num(follow_ge['value'])}{said(ge)} vs sd {num(follow_sd['value'])} "
        f"[{num(follow_sd['ci'][0])}, {num(follow_sd['ci'][1])}]{said(sd)}", follow_ge["value"] >= follow_sd["ci"][0]))


def _claim(concept: str, target: str, needed: list[Any], measure: Callable[[], tuple[str, bool]]) -> dict[str, Any]:
    """A claim is checked only when everything it needs was measured; otherwise it is "not run"."""
    if any(x is None for x in needed):
        return {"concept": concept, "target": target, "measured": "not run", "met": None}
    measured, met = measure()
    return {"concept": concept, "target": target, "measured": measured, "met": bool(met)}


def _icr(row: dict[str, Any]) -> float:
    return row["icr"]["value"]


def _following(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return row.get("quality_detail", {}).get("prompt_following", {}).get("mean")


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def _pct_against(x: float, limit: float) -> str:
    """``x`` in percent with enough digits that it does not print as ``limit`` unless it is ``limit``."""
    for digits in range(1, 6):
        if x == limit or _pct(x, digits) != _pct(limit, digits):
            return _pct(x, digits)
    return _pct(x, 6)


def _counts(row: dict[str, Any]) -> str:
    """`` (count/n)`` of a row's images where it records them (over all its seeds for a seeded row)."""
    icr = row["icr"]
    seeds = row.get("seeds") or {}
    if seeds:
        parts = [s.get("icr", {}) for s in seeds.values()]
        if all(isinstance(p.get("count"), int) and isinstance(p.get("n"), int) for p in parts):
            return f" ({sum(p['count'] for p in parts)}/{sum(p['n'] for p in parts)}, {len(parts)} seeds)"
        return ""
    return f" ({icr['count']}/{icr['n']})" if isinstance(icr.get("count"), int) and isinstance(icr.get("n"), int) else ""


def _points(x: float) -> str:
    return f"{100 * x:g} points"


def _ci(row: dict[str, Any]) -> str:
    return pct_interval(row["icr"]["ci"])
