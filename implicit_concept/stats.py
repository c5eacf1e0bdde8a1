"""The intervals a report carries: an exact binomial (Clopper-Pearson) interval for a share of images,
a seeded percentile bootstrap for means of other per-image values, and, over training seeds, a crossed
bootstrap (seeds, and one set of prompts for all of them) never narrower than a Student-t interval on
the seeds' and prompts' variance, nor, for a share, than the pooled binomial interval. Seeded, so
reports are reproducible; ``python -m benchmark.perf.interval_coverage`` measures their coverage."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np


#: The decimals a share or mean is recorded with (results.json, summary.json, scores.json).
RECORDED_DECIMALS = 5


def recorded(x: float) -> float:
    """``x`` as a record holds it. Whatever prints a figure prints this, not ``x``: 1 of 2020 images
    (0.0495%) is recorded as 0.0005, which every table built from the record shows as 0.1%."""
    return round(x, RECORDED_DECIMALS)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval at ``level`` (exact binomial, bootstrap or crossed)."""

    value: float
    low: float
    high: float
    level: float

    def to_json(self) -> dict[str, Any]:
        return {"value": recorded(self.value), "ci": [recorded(self.low), recorded(self.high)], "level": self.level}

    def __str__(self) -> str:
        return f"{recorded(self.value):.3f} [{recorded(self.low):.3f}, {recorded(self.high):.3f}]"


def bootstrap_mean(values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``values`` with a seeded percentile-bootstrap interval (items resampled with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_mean needs a non-empty 1-D sequence, got shape {x.shape}")
    _check_settings("bootstrap_mean", resamples, level)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    return _percentile_interval(float(x.mean()), means, level)


def bootstrap_ratio(
    numerators: Sequence[float], denominators: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """``mean(numerators) / mean(denominators)`` of paired values (the same items measured twice) with a
    seeded percentile-bootstrap interval: each resample draws items with replacement and keeps their pairs,
    so what the two measurements share (hard items, easy items) cancels out of the interval."""
    a, b = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"bootstrap_ratio needs two non-empty 1-D sequences of one length, got shapes {a.shape} and {b.shape}")
    _check_settings("bootstrap_ratio", resamples, level)
    if not b.sum() > 0:
        raise ValueError("bootstrap_ratio: the denominators' mean must be > 0")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, a.size, size=(resamples, a.size))
    ratios = a[drawn].mean(axis=1) / np.maximum(b[drawn].mean(axis=1), np.finfo(np.float64).tiny)
    return _percentile_interval(float(a.mean() / b.mean()), ratios, level)


def hierarchical_bootstrap(groups: Sequence[Sequence[float]], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean over ``groups`` (one per training seed, each a value per prompt, the same prompts in the
    same order in every group) with an interval that covers both sources of variance.

    Prompts are crossed with seeds, not nested in them: every seed is scored on the same prompts with
    the same sampling seeds. So each resample draws seeds with replacement and one set of prompts
    (with replacement) that every drawn seed is scored on; prompts drawn anew for each seed would
    average the prompts' effect away, and three seeds that agree would get an interval about sqrt(3)
    too narrow. With one group it is the plain bootstrap over prompts (:func:`bootstrap_mean`)."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("hierarchical_bootstrap needs one or more non-empty 1-D groups")
    if len({a.size for a in arrays}) > 1:
        raise ValueError(f"hierarchical_bootstrap: every group must hold a value for the same prompts, got "
                         f"{', '.join(str(a.size) for a in arrays)} values")
    _check_settings("hierarchical_bootstrap", resamples, level)
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, arrays[0].size, size=(resamples, arrays[0].size))  # first, as bootstrap_mean draws them
    seeds = rng.integers(0, len(arrays), size=(resamples, len(arrays)))
    per_seed = np.stack([a[prompts].mean(axis=1) for a in arrays], axis=1)  # (resamples, seeds)
    means = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    return _percentile_interval(float(np.mean([a.mean() for a in arrays])), means, level)


#: What each interval is called where it is recorded (results.json's ``icr.interval``).
EXACT_BINOMIAL = "exact binomial (Clopper-Pearson)"
CROSSED_MEAN = ("over seeds and prompts: crossed bootstrap (seeds resampled, one set of prompts for all of them), "
                "widened to at least a Student-t interval on the seeds' and prompts' variance")
CROSSED_AT_LEAST_BINOMIAL = CROSSED_MEAN + ", and to at least the exact binomial (Clopper-Pearson) interval of the pooled images"


@lru_cache(maxsize=4096)
def clopper_pearson(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval for a binomial proportion ``count / n``: its coverage is at
    least ``level`` at every true rate, and it is not empty at 0 of n ([0, 1 - (alpha/2)^(1/n)])."""
    if not (isinstance(count, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 <= count <= n and n > 0):
        raise ValueError(f"clopper_pearson needs 0 <= count <= n and n > 0 (integers), got {count!r} of {n!r}")
    if not 0 < level < 1:
        raise ValueError(f"clopper_pearson: level = {level}, want (0, 1)")
    alpha = (1 - level) / 2
    count, n = int(count), int(n)
    log_choose = _log_choose(n)
    i = np.arange(n + 1)

    def cdf(k: int, p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p), 0 < p < 1
        terms = log_choose[: k + 1] + i[: k + 1] * math.log(p) + (n - i[: k + 1]) * math.log1p(-p)
        top = terms.max()
        return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))

    def solve(f: Any, target: float) -> float:  # f decreasing in p on (0, 1): the p where f(p) = target
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            if f(mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # upper: P(X <= count) = alpha; lower: P(X >= count) = alpha, i.e. the upper bound of the misses' share
    high = 1.0 if count == n else solve(lambda p: cdf(count, p), alpha)
    low = 0.0 if count == 0 else 1.0 - solve(lambda q: cdf(n - count, q), alpha)
    return low, high


_LOG_CHOOSE: dict[int, np.ndarray] = {}


def _log_choose(n: int) -> np.ndarray:
    if n not in _LOG_CHOOSE:
        log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
        _LOG_CHOOSE[n] = log_factorial[n] - log_factorial - log_factorial[::-1]
    return _LOG_CHOOSE[n]


def crossed_mean(groups: Sequence[Sequence[float]], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean over seeds of per-prompt values (one group per training seed, the same prompts in
    the same order in each), with an interval over seeds and prompts: the crossed bootstrap's
    (:func:`hierarchical_bootstrap`), widened to at least a Student-t interval whose variance adds the
    seeds' (the variance of the seed means over k) and the prompts' (of the prompt means over n),
    with Satterthwaite's degrees of freedom. With 3 seeds the bootstrap alone resamples 3 values and
    misses much of the seeds' variance (coverage 84-92% where seeds differ as the reference run's do);
    the t quantile on k - 1 degrees of freedom puts it back. One group: the bootstrap over prompts."""
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    boot = hierarchical_bootstrap(arrays, resamples=resamples, seed=seed, level=level)
    if len(arrays) < 2:
        return boot
    y = np.stack(arrays)  # (seeds, prompts)
    k, n = y.shape
    seed_part = float(np.var(y.mean(axis=1), ddof=1)) / k
    prompt_part = float(np.var(y.mean(axis=0), ddof=1)) / n if n > 1 else 0.0
    se2 = seed_part + prompt_part
    if se2 <= 0:
        return boot
    df = se2 ** 2 / (seed_part ** 2 / (k - 1) + (prompt_part ** 2 / (n - 1) if n > 1 else 0.0))
    half = student_t_quantile((1 + level) / 2, df) * math.sqrt(se2)
    return Interval(boot.value, min(boot.low, boot.value - half), max(boot.high, boot.value + half), level)


def crossed_share(groups: Sequence[Sequence[bool]], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """The mean over seeds of the share of true flags (one group per training seed, the same prompts
    in the same order in each), with :func:`crossed_mean`'s interval, clipped to [0, 1] and widened to
    at least the exact binomial interval of all the groups' images pooled: with few seeds and rare
    counts the bootstrap alone collapses (0 of n gives [0, 0]) and covers far less than its level."""
    arrays = [np.asarray(g, dtype=bool) for g in groups]
    crossed = crossed_mean([a.astype(np.float64) for a in arrays], resamples=resamples, seed=seed, level=level)
    pooled = np.concatenate(arrays) if arrays else np.zeros(0, dtype=bool)
    low, high = clopper_pearson(int(pooled.sum()), int(pooled.size), level)
    return Interval(crossed.value, max(0.0, min(crossed.low, low)), min(1.0, max(crossed.high, high)), level)


@lru_cache(maxsize=1024)
def _t_quantile(p: float, df: float) -> float:
    # the density of Student's t, integrated from 0 on a fine grid (no scipy here); p > 0.5
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = np.linspace(0.0, 400.0, 800_001)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
    cdf = 0.5 + np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * (x[1] - x[0]))])
    return float(np.interp(p, cdf, x))


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` >= 1 degrees of freedom (not
    necessarily an integer), to about 1e-4."""
    if not 0.5 < p < 1:
        raise ValueError(f"student_t_quantile: p = {p}, want (0.5, 1)")
    return _t_quantile(round(p, 6), round(max(float(df), 1.0), 2))


def _check_settings(name: str, resamples: int, level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"{name}: level = {level}, want (0, 1)")
    if resamples < 100:
        raise ValueError(f"{name}: resamples = {resamples}, want >= 100")


def _percentile_interval(value: float, resampled: np.ndarray, level: float) -> Interval:
    """``value`` with the central ``level`` of the resampled statistics around it."""
    alpha = (1 - level) / 2
    low, high = np.quantile(resampled, [alpha, 1 - alpha])
    return Interval(value, float(low), float(high), level)
