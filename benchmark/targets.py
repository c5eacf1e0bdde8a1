"""The claims a track's results are checked against (the tiny track's targets), as plain data.

Each check reads only the finished rows, so it never changes what is measured: a target that is not
met is reported as such, with the numbers, and a check whose methods did not run says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable


@dataclass(frozen=True)
class Targets:
    #: The method whose removal is judged (the paper's full Geom-Erasing).
    removal_method: str = "ge-full"
    #: `sd` must show the concept in at least this share of images: it was learned.
    sd_min_icr: float = 0.25
    #: The removal method's ICR must be at most this share of `sd`'s, with disjoint 95% intervals.
    removal_max_ratio: float = 1 / 3
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
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "removal_method" and value is not None and not (
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
                f"sd {_pct(_icr(sd))}", _icr(sd) >= targets.sd_min_icr)),
            _claim(c, f"{removal} ICR <= {targets.removal_max_ratio:.2f} x sd, intervals disjoint", [sd, ge], lambda: (
                f"{removal} {_pct(_icr(ge))} {_ci(ge)} vs sd {_pct(_icr(sd))} {_ci(sd)}",
                _icr(ge) <= targets.removal_max_ratio * _icr(sd) and ge["icr"]["ci"][1] < sd["icr"]["ci"][0])),
            _claim(c, f"oracle within {_points(targets.oracle_max_above_fp)} of the detector FP rate", [oracle, fp], lambda: (
                f"oracle {_pct(_icr(oracle))} vs FP {_pct(fp)}", _icr(oracle) <= fp + targets.oracle_max_above_fp)),
            _claim(c, f"{removal} prompt following no worse than sd's interval", [follow_sd, follow_ge], lambda: (
                f"{removal} {follow_ge['value']:.3f} vs sd {follow_sd['value']:.3f} "
                f"[{follow_sd['ci'][0]:.3f}, {follow_sd['ci'][1]:.3f}]", follow_ge["value"] >= follow_sd["ci"][0])),
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


def _points(x: float) -> str:
    return f"{100 * x:g} points"


def _ci(row: dict[str, Any]) -> str:
    low, high = row["icr"]["ci"]
    return f"[{100 * low:.1f}, {100 * high:.1f}]"
