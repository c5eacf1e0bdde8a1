"""Mutation round 22: behaviours hand mutants of modules no earlier round mutated (the scene grammar,
scene attributes, results.json's checks, the asset pools, detector loading) showed unguarded."""
import numpy as np
import pytest

from implicit_concept.scene.grammar import (
    BACKGROUNDS,
    LAYOUTS,
    PALETTE,
    RELATIONS,
    SHAPES,
    ProceduralConfig,
    sample_scene,
)
from implicit_concept.scene.render import render_scene

WIDE = ProceduralConfig(backgrounds=tuple(BACKGROUNDS), shapes=SHAPES, colors=tuple(PALETTE), max_objects=3)


def _scenes(n: int, config: ProceduralConfig = WIDE, seed: int = 22) -> list:
    return [sample_scene(np.random.default_rng([seed, i]), config) for i in range(n)]


# ---- the scene grammar ----

@pytest.mark.parametrize("field, value", [
    ("colors", ("red",)),  # the background takes the one colour: no object could be drawn
    ("min_objects", 0),
    ("max_objects", 4),
    ("jitter", 0.031),  # past 0.03 objects of a row could touch
    ("jitter", -0.01),
    ("color_jitter", 41),
    ("shapes", ("circle", "circle")),
])
def test_a_procedural_config_scenes_cannot_be_drawn_from_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}"):
        ProceduralConfig(**{field: value})


def test_the_widest_config_is_accepted():
    ProceduralConfig(min_objects=3, max_objects=3, jitter=0.03, color_jitter=40, colors=("red", "blue"))


def test_every_object_count_the_config_allows_is_drawn():
    assert {len(s.objects) for s in _scenes(200)} == {1, 2, 3}
    assert {len(s.objects) for s in _scenes(20, ProceduralConfig(min_objects=3, max_objects=3))} == {3}


def test_pairs_come_in_both_orders_so_every_relation_is_captioned():
    """A pair's first object is either one: "below" and "to the right of" are in the captions too."""
    pairs = [s for s in _scenes(300) if len(s.objects) == 2]
    assert {s.objects[0].position for s in pairs} == set(RELATIONS)
    assert all(RELATIONS[s.objects[0].position] in s.caption for s in pairs)


def test_colour_jitter_reaches_both_ends_of_its_range():
    amount = WIDE.color_jitter
    shifts = np.array([
        np.subtract(o.rgb, PALETTE[o.color])
        for s in _scenes(300) for o in s.objects
        if all(amount <= v <= 255 - amount for v in PALETTE[o.color])  # not clipped at 0 or 255
    ])
    assert shifts.min() == -amount and shifts.max() == amount


def test_an_objects_two_offsets_are_drawn_apart():
    """The horizontal and vertical shift of an object's centre are two draws, not one used twice."""
    offsets = [
        (round(o.x - LAYOUTS[s.layout][o.position][0], 6), round(o.y - LAYOUTS[s.layout][o.position][1], 6))
        for s in _scenes(50) for o in s.objects
    ]
    assert sum(dx != dy for dx, dy in offsets) > len(offsets) // 2
    assert max(abs(v) for pair in offsets for v in pair) <= WIDE.jitter + 1e-6


def test_objects_keep_a_margin_from_the_image_edge():
    """However far jitter moves it, a shape's box keeps a margin of background from the image's edge."""
    edges = [(o.x - o.radius, o.y - o.radius, o.x + o.radius, o.y + o.radius) for s in _scenes(300) for o in s.objects]
    assert min(min(x1, y1) for x1, y1, _, _ in edges) >= 0.02 - 1e-9
    assert max(max(x2, y2) for _, _, x2, y2 in edges) <= 0.98 + 1e-9


def test_an_anchor_is_well_inside_its_shape():
    """The recorded anchor is a point surely inside the drawn shape: at 64 px its 3 x 3 pixels are all
    the object's colour (a ring's band is thinner: its anchor pixel alone)."""
    config = ProceduralConfig(backgrounds=("flat",), shapes=SHAPES, colors=tuple(PALETTE), max_objects=3, color_jitter=0)
    seen = set()
    for scene in _scenes(120, config):
        pixels = np.asarray(render_scene(scene, 64), dtype=np.int16)
        for o in scene.objects:
            x, y = (int(v * 64) for v in o.anchor)
            k = 0 if o.shape == "ring" else 1
            assert np.abs(pixels[y - k:y + k + 1, x - k:x + k + 1] - o.rgb).max() <= 2, (scene.caption, o)
            seen.add(o.shape)
    assert seen == set(SHAPES)
