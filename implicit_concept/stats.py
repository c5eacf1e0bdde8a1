"""The percentile bootstrap every interval in a report comes from, seeded so reports are reproducible."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval at ``level``."""

    value: float
    low: float
    high: float
    level: float

    def to_json(self) -> dict[str, Any]:
        return {"value": round(self.value, 5), "ci": [round(self.low, 5), round(self.high, 5)], "level": self.level}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


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
