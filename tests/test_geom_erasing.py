"""Geom-Erasing's switches: what a sample's caption and weight map become under each geometry source."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.models.clip_tokenizer import build_clip_tokenizer
from implicit_concept.detector.inference import Detection
from implicit_concept.geom_erasing.degraded_boxes import box_iou
from implicit_concept.geom_erasing.location_tokens import location_tokens
from implicit_concept.geom_erasing.training_target import GeomErasingConfig, sample_rng, training_target
from implicit_concept.sample import Box

IMAGE = Image.new("RGB", (64, 64))
QR = [("qrcode", Box(0, 0, 20, 20))]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


def _target(tokenizer, config, instances=QR, **kw):
    return training_target(IMAGE, "a red circle", instances, config, tokenizer, (16, 16), **kw)


def test_plain_changes_nothing(tokenizer):
    t = _target(tokenizer, GeomErasingConfig.plain())
    assert t.caption.text == "a red circle" and t.weights.equal(torch.ones(16, 16))


def test_full_ground_truth(tokenizer):
    t = _target(tokenizer, GeomErasingConfig())
    assert t.caption.text == "a red circle qr code <l0,0> <l1,0> <l0,1> <l1,1>"
    assert t.weights[0, 0] < t.weights[15, 15] and t.weights.sum().item() == pytest.approx(256)


def test_ablations(tokenizer):
    assert _target(tokenizer, GeomErasingConfig(geometry=False, reweight=False)).caption.text == "a red circle qr code"
    name_geometry = _target(tokenizer, GeomErasingConfig(reweight=False))
    assert name_geometry.weights.equal(torch.ones(16, 16)) and "<l1,1>" in name_geometry.caption.text
    token = _target(tokenizer, GeomErasingConfig(concept_token=True, geometry=False, reweight=False))
    assert token.caption.text == "a red circle <qrcode>"


def test_clean_image_keeps_its_caption(tokenizer):
    t = _target(tokenizer, GeomErasingConfig(), instances=[])
    assert t.caption.text == "a red circle" and not t.present and t.weights.equal(torch.ones(16, 16))


def test_existence_names_without_location(tokenizer):
    config = GeomErasingConfig(geometry=False, reweight=False, geometry_source="existence")
    assert _target(tokenizer, config).caption.text == "a red circle qr code"


def test_detector_boxes_replace_ground_truth(tokenizer):
    detections = [Detection("qrcode", 0.9, (40.2, 40.7, 63.5, 63.9)), Detection("qrcode", 0.1, (0, 0, 10, 10)),
                  ("text", 0.99, (0, 0, 64, 64))]
    config = GeomErasingConfig(geometry_source="detector", concepts=("qrcode",))
    t = _target(tokenizer, config, detect=lambda image: detections)
    assert t.boxes == (("qrcode", Box(40, 40, 64, 64)),)
    assert t.caption.text == "a red circle qr code <l2,2> <l3,2> <l2,3> <l3,3>"
    with pytest.raises(ValueError, match="detect"):
        _target(tokenizer, config)


def test_detector_boxes_are_taken_at_the_detectors_own_thresholds(tokenizer):
    """A detector calibrated at 0.8 for watermarks rejects a 0.5 watermark as a false positive when it
    scores; training on that box would teach the model a watermark its judge says is not there."""
    detections = [Detection("qrcode", 0.3, (0, 0, 20, 20)), Detection("watermark", 0.5, (40, 40, 60, 60))]
    config = GeomErasingConfig(geometry_source="detector", concepts=("qrcode", "watermark"))
    calibrated = config.at_thresholds({"qrcode": 0.1, "watermark": 0.8, "text": 0.25})
    assert calibrated.detector_confidence == {"qrcode": 0.25, "watermark": 0.8}  # never below the configured floor
    assert [c for c, _ in _target(tokenizer, calibrated, detect=lambda image: detections).boxes] == ["qrcode"]
    assert [c for c, _ in _target(tokenizer, config, detect=lambda image: detections).boxes] == ["qrcode", "watermark"]
    assert config.at_thresholds(dict.fromkeys(("qrcode", "watermark", "text"), 0.25)) == config  # one shared value: as before


def test_a_detector_box_exactly_at_its_threshold_is_trained_on(tokenizer):
    """"At least" the threshold, as scoring counts a detection: a box at exactly 0.25 (the floor) or
    at a calibrated 0.8 is one the judge counts, so training must take it too."""
    detections = [Detection("qrcode", 0.25, (0, 0, 20, 20)), Detection("watermark", 0.8, (40, 40, 60, 60)),
                  Detection("watermark", 0.7999, (0, 40, 20, 60))]
    config = GeomErasingConfig(geometry_source="detector", concepts=("qrcode", "watermark"), detector_confidence={"qrcode": 0.25, "watermark": 0.8})
    assert _target(tokenizer, config, detect=lambda image: detections).boxes == (("qrcode", Box(0, 0, 20, 20)), ("watermark", Box(40, 40, 60, 60)))


def test_the_published_detector_is_calibrated_at_the_floor_so_its_fine_tunes_are_unchanged():
    import json
    from pathlib import Path

    record = json.loads((Path(__file__).resolve().parents[1] / "benchmark/published/detector-tiny/detector.json").read_text())
    config = GeomErasingConfig(geometry_source="detector")
    assert config.at_thresholds(record["thresholds"]).to_dict() == config.to_dict()


def test_degraded_boxes_reach_the_target_iou_deterministically(tokenizer):
    config = GeomErasingConfig(geometry_source="degraded", degrade_iou=0.5)
    box = Box(10, 10, 40, 40)
    a = _target(tokenizer, config, instances=[("qrcode", box)], rng=sample_rng(0, "key"))
    b = _target(tokenizer, config, instances=[("qrcode", box)], rng=sample_rng(0, "key"))
    assert a.boxes == b.boxes
    assert box_iou(box.as_list(), a.boxes[0][1].as_list()) == pytest.approx(0.5, abs=0.03)


def test_other_concepts_are_ignored(tokenizer):
    t = _target(tokenizer, GeomErasingConfig(concepts=("watermark",)))
    assert t.caption.text == "a red circle" and not t.present


def test_negative_prompt_and_new_tokens():
    config = GeomErasingConfig(concepts=("qrcode", "text"), concept_token=True, grid=2)
    assert config.new_tokens() == ["<qrcode>", "<text>"] + location_tokens(2)
    assert config.negative_prompt() == "<qrcode> <text> " + " ".join(location_tokens(2))
    assert GeomErasingConfig(geometry=False, reweight=False, concepts=("qrcode",)).negative_prompt() == "qr code"


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(grid=9), "grid"),
        (dict(alpha=0), "alpha"),
        (dict(geometry_source="oracle"), "geometry_source"),
        (dict(geometry_source="degraded"), "degrade_iou"),
        (dict(degrade_iou=0.5), "degrade_iou"),
        (dict(geometry_source="existence"), "existence"),
        (dict(setting="model_removal", geometry=False, reweight=False), "model_removal"),
        (dict(concepts=("logo",)), "concepts"),
        (dict(concept_name=1), "concept_name"),
        (dict(detector_confidence=1.5), "detector_confidence"),
        (dict(detector_confidence={"qrcode": 0.5}), "detector_confidence per concept"),
    ],
)
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        GeomErasingConfig(**bad)


def test_sample_rng_depends_on_seed_and_key():
    assert sample_rng(0, "a").random() == sample_rng(0, "a").random() != sample_rng(0, "b").random()
    assert isinstance(sample_rng(1, "a"), np.random.Generator)
