"""An independent reference for what the labels must say: each layer's visible alpha, box and fraction.

Written apart from ``implicit_concept.compositing`` on purpose (floats and ``np.rint`` over whole
canvases, where the library uses integer division inside boxes), so a test that compares the two
checks the rule, not the code against itself. A layer's visible alpha is its alpha passed through
each later layer in turn, rounded to 8 bits at every step: ``v <- rint(v * (255 - a) / 255)``;
``v * (255 - a)`` is an integer and 255 is odd, so no value lands on a half and ``rint`` agrees
with any round-to-nearest.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def visible_alphas(alphas: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, alpha in enumerate(alphas):
        v = alpha.astype(np.float64)
        for later in alphas[i + 1:]:
            v = np.rint(v * (255.0 - later.astype(np.float64)) / 255.0)
        out.append(v)
    return out


def expected_labels(
    layers: Sequence[tuple[str, Image.Image]], min_visible: float
) -> list[tuple[str, list[int], float]]:
    """(concept, visible box, visible fraction) of every layer that keeps its label, in drawing order."""
    alphas = [np.asarray(rgba.getchannel("A")) for _, rgba in layers]
    labels = []
    for (concept, _), alpha, v in zip(layers, alphas, visible_alphas(alphas)):
        ys, xs = np.nonzero(v >= 1)
        if not len(xs):
            continue
        fraction = float(v.sum() / alpha.astype(np.float64).sum())
        if fraction < min_visible:
            continue
        labels.append((concept, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], fraction))
    return labels


def check_labels(out, recipe_name: str) -> dict[str, int]:
    """Compare every sample of the build in ``out`` with ``expected_labels`` of its layers, re-drawn
    through ``ShardBuilder.layers``; return counts (labels, partly covered ones, dropped layers)."""
    from builders.recipe import load_recipe
    from builders.shard_builder import ShardBuilder, tar_path
    from implicit_concept.shard_reader import iter_samples

    recipe = load_recipe(recipe_name)
    builder = ShardBuilder(recipe)
    counts = {"samples": 0, "labels": 0, "covered": 0, "dropped": 0}
    for unit in builder.plan():
        metas = {s.meta.seed[-1]: s.meta for s in iter_samples(tar_path(out, unit), with_extras=False)}
        for index, layers in builder.layers(unit):
            meta = metas.pop(index)
            expected = expected_labels([(c, layer.rgba) for c, layer in layers], recipe.min_visible)
            recorded = [(i.concept, i.box.as_list(), i.visible) for i in meta.instances]
            where = f"{unit.subset}/{unit.split}/{meta.key}"
            assert [r[:2] for r in recorded] == [e[:2] for e in expected], where
            assert all(abs(r[2] - e[2]) <= 5e-5 for r, e in zip(recorded, expected)), (where, recorded, expected)
            drawn = sum(bool(layer.rgba.getchannel("A").getbbox()) for _, layer in layers)
            counts["samples"] += 1
            counts["labels"] += len(expected)
            counts["covered"] += sum(e[2] < 1 for e in expected)
            counts["dropped"] += drawn - len(expected)
        assert not metas, f"{unit}: samples without layers {sorted(metas)}"
    return counts
