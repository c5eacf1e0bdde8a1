"""Mutation round 22: behaviours hand mutants of modules no earlier round mutated (the scene grammar,
scene attributes, results.json's checks, the asset pools, the detector at inference time) showed
unguarded.

Several mutants of the grammar and the asset pools change the icd-debug bytes, so the committed
checksums (test_build) catch them; that test says only that something changed. The property tests here
(both pair orders, symmetric colour jitter, independent offsets, the edge margin, anchors inside their
shapes, a test split of about half) still hold the dataset to its design after a deliberate re-pin.
"""
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.evaluation.scene_attributes import caption_attributes, object_count, object_index, scene_attributes
from benchmark.results_file import check_results
from implicit_concept.concepts import CONCEPT_NAMES, assets
from implicit_concept.concepts.assets import BRAND_WORDS, N_LOGO_SEEDS, TEXT_PHRASES, TEXT_WORDS, AssetPool, load_font
from implicit_concept.detector.inference import Detection, Detector
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
    ("min_objects", 0),  # a count of 0 drew a row or column of three
    ("max_objects", 4),
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


# ---- scene attributes ----

def test_a_scenes_arrangement_names_the_layout_it_was_drawn_with():
    """A row of three is a "row" and a column a "column", read from the scene or from its caption
    (the scene-feature net is trained on these names, and a report names what it found by them)."""
    for scene in _scenes(150):
        want = f"single-{scene.objects[0].position}" if scene.layout == "single" else scene.layout
        assert scene_attributes(scene)["arrangement"] == caption_attributes(scene.caption)["arrangement"] == want


def test_an_arrangement_places_its_objects_and_an_attribute_names_its_object():
    """What the extractor's reading keeps: object k's attributes only where the arrangement it read
    places k objects, and the whole scene's always."""
    counts = {a: object_count(a) for a in ("single-left", "single-centre", "pair_horizontal", "pair_vertical", "row", "column")}
    assert counts == {"single-left": 1, "single-centre": 1, "pair_horizontal": 2, "pair_vertical": 2, "row": 3, "column": 3}
    assert [object_index(a) for a in ("background_color", "arrangement", "object1_shape", "object3_size")] == [0, 0, 1, 3]


def test_a_caption_read_with_its_line_end_asks_for_the_same_scene():
    """Prompts read from a text file come with their newline or a stray space around them."""
    scene = _scenes(1)[0]
    assert caption_attributes(f" {scene.caption}\n") == caption_attributes(scene.caption) == scene_attributes(scene)


# ---- asset pools ----

def test_each_split_holds_about_half_of_every_asset_kind():
    """Assets are split by a fair coin of their name: a test split of a sixth or a third of the
    brand words or logos would leave the held-out evaluation too few to draw from."""
    train, test = AssetPool.for_split("train"), AssetPool.for_split("test")
    for name, everything in (("brand_words", BRAND_WORDS), ("logo_seeds", range(N_LOGO_SEEDS)),
                             ("text_words", TEXT_WORDS), ("text_phrases", TEXT_PHRASES)):
        a, b = getattr(train, name), getattr(test, name)
        assert len(a) + len(b) == len(everything), name
        assert 0.35 <= len(b) / len(everything) <= 0.65, (name, len(a), len(b))


def test_matplotlibs_copy_of_a_font_wins_over_a_system_font_of_the_same_file_name(tmp_path, monkeypatch):
    """With system fonts, a font file the wheel also ships is drawn from the wheel's copy, so the
    fonts the default pool shares with the system's render the same bytes on every machine, and the
    pool is in file-name order (a font is drawn by its index) however the folders hold them."""
    shipped = {f.rsplit("/", 1)[1]: f for f in AssetPool.for_split("train").fonts}
    name = sorted(shipped)[0]
    (tmp_path / "fonts").mkdir()
    shutil.copyfile(shipped[name], tmp_path / "fonts" / name)
    shutil.copyfile(shipped[name], tmp_path / "fonts" / "0-first.ttf")  # the same family, a name sorting first
    monkeypatch.setattr(assets, "SYSTEM_FONT_DIR", tmp_path / "fonts")
    assets._pool.cache_clear()
    try:
        fonts = AssetPool.for_split("train", system_fonts=True).fonts
    finally:
        assets._pool.cache_clear()  # nothing of the planted folder is kept for later callers
    assert shipped[name] in fonts and [f for f in fonts if f.startswith(str(tmp_path))] == [str(tmp_path / "fonts" / "0-first.ttf")]
    assert list(fonts) == sorted(fonts, key=lambda f: f.rsplit("/", 1)[1]), "one order, by file name, wherever a font lies"


def test_a_font_asked_for_below_one_pixel_is_one_pixel():
    font = load_font(AssetPool.for_split("train").fonts[0], 0.4)
    assert font.size == 1


def test_a_split_that_is_not_train_or_test_is_refused_as_such():
    with pytest.raises(ValueError, match=r"^split: expected one of \['train', 'test'\], got 'val'$"):
        AssetPool.for_split("val")


# ---- results.json's checks ----

def _share(count: int, n: int = 10) -> dict:
    return {"value": count / n, "ci": [max(0.0, count / n - 0.2), min(1.0, count / n + 0.2)], "count": count, "n": n}


def _results(**row) -> dict:
    ok = {"method": "sd", "concept": "qrcode", "status": "ok", "icr": _share(4), "fp_rate": _share(0)}
    return {"name": "run", "track": "tiny", "rows": [{**ok, **row}], "fp_rate": {"qrcode": _share(0)}}


PATH = Path("runs/x/results.json")


def test_a_well_formed_results_record_passes():
    check_results(_results(), PATH)


@pytest.mark.parametrize("results, problem", [
    # a share past 1 whose interval holds it: no share of images
    (_results(icr={"value": 1.1, "ci": [0.9, 1.2]}), r"rows\[0\].icr: not a ratio"),
    (_results(icr={"value": float("inf"), "ci": [0.0, float("inf")]}), r"rows\[0\].icr: not a ratio"),
    (_results(quality={"scene_fid": float("inf")}), r"rows\[0\].quality.scene_fid: a float \(inf\), not a number"),
    ({**_results(), "targets": {"checks": [{"concept": "qrcode", "target": 0.1, "measured": 0.4, "met": "no"}]}},
     r"targets.checks\[0\].met: not true, false or null"),
])
def test_a_record_handed_in_memory_is_held_to_what_a_file_is(results, problem):
    """check_results is what score-pipeline's summary and a lab's own dict pass through: values no
    JSON file could hold (infinity) and a share past 1 are refused as in a file."""
    with pytest.raises(ValueError, match=rf"^runs/x/results.json: {problem}"):
        check_results(results, PATH)


def test_a_row_that_did_not_run_carries_no_scores_and_is_accepted():
    """A failed or skipped row has no ICR: the report lists it as not run, the reader must not refuse the run."""
    for status in ("failed", "skipped"):
        check_results(_results(status=status, icr=None, error="out of memory"), PATH)


def test_every_image_blank_is_a_count_the_row_may_hold():
    check_results(_results(blank_images=10), PATH)
    with pytest.raises(ValueError, match=r"rows\[0\].blank_images: 11, not a count of images among its 10"):
        check_results(_results(blank_images=11), PATH)


# ---- the detector at inference time ----

@pytest.fixture(scope="module")
def recorded_detector(tmp_path_factory):
    """A detector folder in the published format (untrained weights) whose record holds thresholds of its own."""
    from implicit_concept.detector.inference import build_model
    from implicit_concept.detector.weights import weights_state, write_detector

    folder = tmp_path_factory.mktemp("detector")
    thresholds = dict(zip(CONCEPT_NAMES, (0.31, 0.42, 0.53)))
    write_detector(folder, weights_state(build_model("yolov8n.yaml", CONCEPT_NAMES)), model="yolov8n.yaml",
                   names=CONCEPT_NAMES, imgsz=32, scale={"name": "random"}, thresholds=thresholds)
    return folder, thresholds


def test_a_loaded_detector_carries_the_thresholds_its_record_holds(recorded_detector):
    folder, thresholds = recorded_detector
    assert Detector.load(folder).thresholds == thresholds


def test_a_detectors_own_copy_and_its_callers_dict_keep_their_thresholds_apart(recorded_detector):
    """Calibrating a copy (or editing the dict a detector was made with) leaves the other's thresholds as they were."""
    folder, thresholds = recorded_detector
    detector = Detector.load(folder)
    mine = detector.own_copy()
    mine.thresholds["qrcode"] = 0.99
    assert detector.thresholds == thresholds and mine.model is not detector.model
    given = dict(thresholds)
    made = Detector(detector.model, folder, 32, "cpu", thresholds=given)
    given["text"] = 0.01
    assert made.thresholds == thresholds


def test_a_detection_is_recorded_to_five_decimals_and_its_box_to_hundredths():
    record = Detection("text", 0.1234567, (1.23456, 2.0, 30.999, 40.5)).to_json()
    assert record == {"concept": "text", "confidence": 0.12346, "box": [1.23, 2.0, 31.0, 40.5]}
