"""Builds from a lab's own photos: what their content does to the labels."""
from __future__ import annotations

import numpy as np
from PIL import Image

from builders.build import build_dataset
from builders.recipe import parse_recipe
from implicit_concept.compositing import SEEN_LEVELS
from implicit_concept.shard_reader import iter_samples


def _sky_over_ground(size: int, i: int) -> Image.Image:
    """A photo as many are: a bright, flat sky over a dark ground, the horizon anywhere."""
    pixels = np.full((size, size, 3), 248 - i % 5, np.uint8)
    pixels[size // 3 + i % (size // 3):] = (40, 45 + i % 7, 30)
    return Image.fromarray(pixels)


def test_a_watermark_tile_lost_in_a_flat_sky_is_not_labelled(tmp_path):
    """A tiled watermark's tone contrasts with the whole photo, not with each tile's ground: white
    tiles over a white sky change no pixel, yet were labelled watermarks (about a third of the
    labels here), teaching the detector and Geom-Erasing a box with nothing in it. Every label a
    build writes now shows in its image, and the tiles over the ground are still labelled."""
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(24):
        _sky_over_ground(96, i).save(src / f"p{i:02d}.png")
        (src / f"p{i:02d}.txt").write_text(f"a field under the sky, number {i}")
    recipe = parse_recipe({
        "name": "photos", "seed": 5, "image_size": 96, "write_mask": False,
        "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0},
        "concepts": {"watermark": {"layouts": {"tiled": 1.0}, "opacity": [0.4, 0.6]}},
        "subsets": [{"name": "wm", "concepts": ["watermark"], "fraction": 1.0}],
    })
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    labels = 0
    for sample in iter_samples(out / "wm" / "train"):
        change = np.abs(np.asarray(sample.image, np.int16) - np.asarray(sample.clean, np.int16)).max(axis=2)
        for instance in sample.meta.instances:
            b = instance.box
            assert change[b.y1:b.y2, b.x1:b.x2].max() >= SEEN_LEVELS, (sample.key, b.as_list(), instance.params["tone"])
            labels += 1
    assert labels >= 48, labels
