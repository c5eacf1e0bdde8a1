"""Box geometry for the robustness ablation: ``box_iou``, and ``degrade_box``, which makes a ground-truth
box worse by a chosen amount, to test the paper's claim that Geom-Erasing tolerates boxes down to
IoU ~0.4 with the truth (``geometry_source = "degraded"``).

Pure maths on (x1, y1, x2, y2) boxes: no detector, no torch.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from implicit_concept.sample import Box


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def degrade_box(box: Box, target_iou: float, rng: np.random.Generator, width: int, height: int) -> Box:
    """A box inside the image whose IoU with ``box`` is as close to ``target_iou`` as integers allow.

    A random direction in (x1, y1, x2, y2) space, scaled by the box's size, mixes shifting and
    resizing; IoU falls monotonically along it, so bisection finds the crossing. Integer rounding
    then moves the IoU by at most a few hundredths for boxes of 8 px and more.
    """
    if not 0.0 < target_iou <= 1.0:
        raise ValueError(f"target_iou must be in (0, 1], got {target_iou}")
    if not box.inside(width, height):
        raise ValueError(f"box {box.as_list()} is not inside the {width}x{height} image")
    truth = np.array(box.as_list(), dtype=float)
    if target_iou == 1.0:
        return box
    best: Box | None = None
    for _ in range(64):
        direction = rng.normal(size=4) * np.array([box.width, box.height, box.width, box.height])
        t_max = _longest_valid_step(truth, direction, width, height)
        if box_iou(truth, truth + t_max * direction) > target_iou:
            continue
        lo, hi = 0.0, t_max
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if box_iou(truth, truth + mid * direction) > target_iou else (lo, mid)
        candidate = _round_towards(truth, truth + lo * direction, target_iou, width, height)
        if candidate is not None and (best is None or _miss(truth, candidate, target_iou) < _miss(truth, best, target_iou)):
            best = candidate
        if best is not None and _miss(truth, best, target_iou) < 0.01:
            break
    if best is None:
        raise ValueError(f"cannot place a box with IoU {target_iou} to {box.as_list()} inside {width}x{height}")
    return best


def _miss(truth: np.ndarray, candidate: Box, target: float) -> float:
    return abs(box_iou(truth, candidate.as_list()) - target)


def _longest_valid_step(truth: np.ndarray, direction: np.ndarray, width: int, height: int) -> float:
    """Largest t keeping truth + t * direction inside the image and at least 1 px wide and high."""
    lo, hi = 0.0, 1e3
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _valid(truth + mid * direction, width, height) else (lo, mid)
    return lo


def _valid(b: np.ndarray, width: int, height: int) -> bool:
    return b[0] >= 0 and b[1] >= 0 and b[2] <= width and b[3] <= height and b[2] - b[0] >= 1 and b[3] - b[1] >= 1


def _round_towards(truth: np.ndarray, b: np.ndarray, target: float, width: int, height: int) -> Box | None:
    """Among the integer boxes around ``b`` (each side floored or ceiled), the one closest to ``target``."""
    best, best_miss = None, math.inf
    for corners in np.ndindex(2, 2, 2, 2):
        c = [math.floor(v) if up == 0 else math.ceil(v) for v, up in zip(b, corners)]
        if not _valid(np.array(c, dtype=float), width, height):
            continue
        miss = abs(box_iou(truth, c) - target)
        if miss < best_miss:
            best, best_miss = Box(*c), miss
    return best
