"""Per-concept confidence thresholds, chosen where a detector must stay quiet and never on test.

A detector trained on ICD shards has never seen a generated image, and one threshold for every
concept lets it flag watermarks on a third of a base model's clean generations. Each concept's
threshold is therefore the smallest value, no lower than the default 0.25, at which at most
``max_fp`` of every reference image set is flagged for that concept: the validation split's clean
images always, and held-out generated images of a base model when the trainer is given them. The
rule reads each image's top confidence per concept (a :class:`~implicit_concept.scoring.CleanReference`),
so it runs the detector once per set and is a pure function of those numbers.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.weights import DEFAULT_CONF

#: References store confidences rounded to 4 decimals; thresholds step on the same grid.
STEP = 1e-4


def calibrate_thresholds(
    references: Mapping[str, Mapping[str, Sequence[float]]], max_fp: float, floor: float = DEFAULT_CONF
) -> dict[str, float]:
    """Per concept, the smallest threshold >= ``floor`` (on the 1e-4 grid, at most 1) at which at
    most ``max_fp`` of the images of each reference are flagged (top confidence >= threshold).

    ``references``: name -> concept -> per image, its top confidence for that concept.
    """
    if not 0 <= max_fp < 1:
        raise ValueError(f"calibration max_fp = {max_fp!r}, want a share in [0, 1)")
    if not references:
        raise ValueError("no reference image sets to calibrate thresholds on")
    thresholds = {}
    for concept in CONCEPT_NAMES:
        steps = [_lowest_quiet_step(references[name][concept], max_fp, name) for name in references]
        thresholds[concept] = min(1.0, max(floor, *(k * STEP for k in steps)))
    return {c: round(t, 4) for c, t in thresholds.items()}


def _lowest_quiet_step(confidences: Sequence[float], max_fp: float, name: str) -> int:
    """The lowest grid step k at which at most ``max_fp`` of ``confidences`` are >= k * STEP: one step
    above the (allowed + 1)-th highest confidence (allowed < len, as max_fp < 1)."""
    if not confidences:
        raise ValueError(f"calibration reference {name!r} has no images")
    allowed = math.floor(max_fp * len(confidences) + 1e-9)
    ranked = sorted(confidences, reverse=True)
    return round(ranked[allowed] / STEP) + 1
