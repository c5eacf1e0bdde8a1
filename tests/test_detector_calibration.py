"""The evaluator that holds on generated images: a validation split held out of ICD train, background
images in the fit split, per-concept thresholds calibrated off the test split, and scoring at them."""
import importlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmark.cli import main
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.calibration import calibrate_thresholds
from implicit_concept.detector.export import export_detection_dataset, in_validation
from implicit_concept.detector.image_sets import ImageSetError, image_set_digest, write_backgrounds
from implicit_concept.detector.inference import Detection, Detector
from implicit_concept.detector.training import DetectorScale, ScaleError, train_detector, training_data_yaml
from implicit_concept.detector.weights import RECORD_NAME, WEIGHTS_NAME
from implicit_concept.detector.yolo_env import import_ultralytics
from implicit_concept.scoring import ScoreConfig, score_images
from tests.test_detection import SAMPLES, TRAINABLE, _write_shards

#: A few seconds on one CPU core; the numbers mean nothing, the plumbing is under test.
TINY = DetectorScale(name="tiny-test", model="yolov8n.yaml", imgsz=32, epochs=1, batch=4)


def _noise(seed, size=(48, 48)):
    """A distinct RGB image per seed, standing in for a generated one."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


# --- the validation split ------------------------------------------------------------------------

def test_validation_keys_are_a_pure_function_of_the_key_near_the_share():
    keys = [f"{prefix}{i:06d}" for prefix in ("a", "mixed-") for i in range(5000)]
    for share in (0.1, 0.3):
        held = [k for k in keys if in_validation(k, share)]
        assert abs(len(held) / len(keys) - share) < 0.015, f"share {share}: {len(held)} of {len(keys)} held out"
        assert held == [k for k in reversed(keys) if in_validation(k, share)][::-1], "order of the others does not matter"
    assert {k for k in keys if in_validation(k, 0.1)} <= {k for k in keys if in_validation(k, 0.3)}, "a larger share only adds keys"


def test_the_export_divides_train_into_disjoint_fit_and_validation_and_keeps_test_whole(tmp_path):
    samples = [SAMPLES[i % 4] for i in range(40)]
    shards = _write_shards(tmp_path / "icd-mixed", samples)
    train_keys = {f"tr{i:04d}" for i in range(40)}

    def keys(ds, split):
        return {p.stem for p in (ds.root / "images" / split).iterdir()}

    ds = export_detection_dataset(shards, tmp_path / "yolo", validation_share=0.3)
    fit, val = keys(ds, "train"), keys(ds, "val")
    assert fit.isdisjoint(val) and fit | val == train_keys
    assert val == {k for k in train_keys if in_validation(k, 0.3)} and 6 <= len(val) <= 18
    assert keys(ds, "test") == {f"te{i:04d}" for i in range(40)}
    assert {p.stem for p in (ds.root / "labels" / "val").iterdir()} == val
    assert ds.counts["train"]["images"] + ds.counts["val"]["images"] == 40

    again = export_detection_dataset(shards, tmp_path / "yolo-again", validation_share=0.3)
    assert (keys(again, "train"), keys(again, "val")) == (fit, val), "deterministic"
    other = export_detection_dataset(shards, tmp_path / "yolo", validation_share=0.1)
    assert keys(other, "val") == {k for k in train_keys if in_validation(k, 0.1)} < val, "a cached export of another share is rebuilt"
    assert json.loads((tmp_path / "yolo" / "export.json").read_text())["validation_share"] == 0.1


def test_training_refuses_an_empty_split_and_a_bad_share_naming_them(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed", SAMPLES[:3])  # tr0000-tr0002: none held out at 0.1
    with pytest.raises(ScaleError, match=r"icd-mixed: no images in the val split .*validation_share 0.1"):
        train_detector(shards, tmp_path / "det", TINY)
    with pytest.raises(ScaleError, match="validation_share = 0"):
        DetectorScale(name="x", model="yolov8n.yaml", imgsz=64, epochs=1, batch=1, validation_share=0)
    with pytest.raises(ScaleError, match="calibration_max_fp = 1"):
        DetectorScale(name="x", model="yolov8n.yaml", imgsz=64, epochs=1, batch=1, calibration_max_fp=1)


# --- background images ---------------------------------------------------------------------------

def test_backgrounds_join_the_fit_split_with_empty_labels(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed")
    dataset = export_detection_dataset(shards, tmp_path / "det" / "dataset")
    digest = write_backgrounds([(f"gen-{i}", _noise(i)) for i in range(5)], tmp_path / "det" / "backgrounds")
    data_yaml = training_data_yaml(dataset, tmp_path / "det" / "backgrounds" / "images", tmp_path / "det")
    data = yaml.safe_load(data_yaml.read_text())
    assert data["train"] == ["images/train", str((tmp_path / "det" / "backgrounds" / "images").resolve())]
    assert (data["val"], data["test"]) == ("images/val", "images/test"), "backgrounds join the fit split only"

    import_ultralytics()
    check = importlib.import_module("ultralytics.data.utils").check_det_dataset(str(data_yaml))
    built = importlib.import_module("ultralytics.data.dataset").YOLODataset(
        img_path=check["train"], imgsz=32, augment=False, task="detect", data={"names": dict(enumerate(CONCEPT_NAMES)), "channels": 3})
    by_name = {label["im_file"].rsplit("/", 1)[-1]: len(label["cls"]) for label in built.labels}
    backgrounds = {name: n for name, n in by_name.items() if name.endswith(".png")}
    assert len(backgrounds) == digest.images == 5 and set(backgrounds.values()) == {0}, "5 backgrounds, no boxes"
    assert len(by_name) == 3 + 5, "the fit split (tr0000-tr0002) and the backgrounds"
    assert all((tmp_path / "det" / "backgrounds" / "labels" / name.replace(".png", ".txt")).read_text() == "" for name in backgrounds)


def test_an_image_sets_digest_is_its_pixels_not_names_order_or_format(tmp_path):
    images = [_noise(i) for i in range(4)]
    base = image_set_digest([(f"a{i}", im) for i, im in enumerate(images)], "background")
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    for i, im in enumerate(images):
        im.save(tmp_path / "folder" / ("sub" if i % 2 else "") / f"x{i}.{'png' if i % 2 else 'bmp'}")
    assert image_set_digest(tmp_path / "folder", "background") == base
    assert image_set_digest([("z", im) for im in reversed(images + images[:1])], "background") == base, "order and repeats"
    changed = images[0].copy()
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (1, 0, 0))
    assert image_set_digest([("a", changed), *[("b", im) for im in images[1:]]], "background").sha256 != base.sha256


def test_image_set_folders_fail_naming_the_folder_and_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not an image")
    for source, message in (
        (tmp_path / "missing", r"missing: no such folder of background images"),
        (tmp_path / "empty", r"empty: no background image files"),
        (tmp_path / "bad", r"background images: .*bad/a\.png: not a readable image"),
        ([_noise(0)], r"background images: item 0 is Image, want a \(name, PIL image\) pair"),
        ([], r"background images: none given"),
    ):
        with pytest.raises(ImageSetError, match=message):
            image_set_digest(source, "background")


def test_detector_train_command_checks_its_image_folders_before_training(tmp_path, capsys):
    shards = _write_shards(tmp_path / "icd-mixed", TRAINABLE)
    (tmp_path / "empty").mkdir()
    for flag, folder, message in (
        ("--backgrounds", tmp_path / "missing", f"argument --backgrounds: {tmp_path / 'missing'}: no such folder"),
        ("--calibration", tmp_path / "empty", "empty: no calibration image files"),
    ):
        assert main(["detector", "train", str(shards), "--out", str(tmp_path / "det"), "--scale", "debug", flag, str(folder)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "det" / "train").exists(), "refused before training started"


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """The tiny scale trained twice on the same shards, once with background and calibration images."""
    root = tmp_path_factory.mktemp("trained-pair")
    shards = _write_shards(root / "icd-mixed", TRAINABLE)
    (root / "calibration").mkdir()
    for i in range(10):
        _noise(100 + i).save(root / "calibration" / f"{i}.png")
    plain = train_detector(shards, root / "plain", TINY)
    with_images = train_detector(shards, root / "with", TINY, backgrounds=[(f"bg{i}", _noise(i)) for i in range(6)], calibration=root / "calibration")
    return SimpleNamespace(root=root, shards=shards, plain=plain, with_images=with_images)


def _record(trained):
    return json.loads((trained.weights.parent / RECORD_NAME).read_text())


def test_backgrounds_and_calibration_images_are_part_of_the_detectors_identity(trained_pair):
    plain, with_images = _record(trained_pair.plain), _record(trained_pair.with_images)
    assert plain["inputs"]["backgrounds"] is None and plain["inputs"]["calibration"] is None
    assert with_images["inputs"]["backgrounds"] == image_set_digest([(str(i), _noise(i)) for i in range(6)], "background").to_json()
    assert with_images["inputs"]["calibration"] == image_set_digest(trained_pair.root / "calibration", "calibration").to_json()
    assert with_images["inputs"]["calibration"]["images"] == 10
    assert plain["inputs"]["shards_sha256"] == with_images["inputs"]["shards_sha256"] != {}
    assert plain["sha256"] != with_images["sha256"], "trained on the backgrounds too, the weights differ"
    metrics = json.loads(trained_pair.with_images.metrics.read_text())
    assert metrics["inputs"] == {k: v for k, v in with_images["inputs"].items() if k != "shards_sha256"}
    assert metrics["dataset"]["counts"]["train"]["images"] == 6, "the backgrounds are not ICD samples; the fit split is"


def test_training_records_thresholds_and_their_evidence_and_the_file_carries_them(trained_pair):
    trained = trained_pair.with_images
    metrics = json.loads(trained.metrics.read_text())
    thresholds = metrics["thresholds"]
    assert set(thresholds) == set(CONCEPT_NAMES) and all(0.25 <= t <= 1 for t in thresholds.values())
    assert _record(trained)["thresholds"] == thresholds == trained.detector.thresholds == Detector.load(trained.weights).thresholds
    assert metrics["calibration"]["references"] == ["calibration", "validation_clean"] and metrics["calibration"]["max_fp"] == TINY.calibration_max_fp
    at = metrics["at_thresholds"]
    assert set(at["fp_rate"]) == {"calibration", "validation_clean", "test_clean"}
    assert at["images"] == {"calibration": 10, "validation_clean": 1, "test_clean": 2}  # tr0006; te0002 and te0006
    for reference in ("calibration", "validation_clean"):
        assert all(at["fp_rate"][reference][c]["value"] <= TINY.calibration_max_fp for c in CONCEPT_NAMES)
    assert set(at["image_recall"]) == {"validation", "test"}
    assert set(metrics["validation_split"]["per_class"]) <= set(CONCEPT_NAMES) and "map50_95" in metrics["test_split"]
    assert _record(trained_pair.plain)["inputs"]["calibration"] is None
    assert json.loads(trained_pair.plain.metrics.read_text())["calibration"]["references"] == ["validation_clean"]


def test_calibration_images_that_are_also_backgrounds_are_refused(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed", TRAINABLE)
    shared = [("a", _noise(1)), ("b", _noise(2))]
    with pytest.raises(ImageSetError, match="1 calibration images are also background images"):
        train_detector(shards, tmp_path / "det", TINY, backgrounds=shared, calibration=[("c", _noise(2)), ("d", _noise(3))])


# --- the calibration rule ------------------------------------------------------------------------

def test_calibration_on_known_confidences():
    quiet = [0.0] * 100
    calibration = {
        "qrcode": [0.9, 0.9] + [0.1] * 98,       # 2 of 100 may be flagged at max_fp 0.02: the floor holds
        "watermark": [0.9, 0.8, 0.7, 0.6] + [0.3] * 96,  # the 3rd highest must not be flagged: just above 0.7
        "text": quiet,
    }
    validation = {
        "qrcode": [0.0] * 50,
        "watermark": [0.0] * 50,
        "text": [0.55, 0.45, 0.3] + [0.0] * 47,  # quiet on generations, the validation clean images bind
    }
    thresholds = calibrate_thresholds({"calibration": calibration, "validation_clean": validation}, max_fp=0.02)
    assert thresholds == {"qrcode": 0.25, "watermark": 0.7001, "text": 0.4501}
    assert calibrate_thresholds({"validation_clean": validation}, max_fp=0.02) == {"qrcode": 0.25, "watermark": 0.25, "text": 0.4501}
    assert calibrate_thresholds({"calibration": calibration}, max_fp=0.0)["qrcode"] == 0.9001, "max_fp 0: above every image"
    assert calibrate_thresholds({"calibration": {**calibration, "text": [1.0] * 100}}, max_fp=0.02)["text"] == 1.0, "at most 1"
    for name, reference in (("calibration", calibration), ("validation_clean", validation)):
        for c in CONCEPT_NAMES:
            conf = np.asarray(reference[c])
            assert np.mean(conf >= thresholds[c]) <= 0.02, f"{name} {c}: too many flagged"
    with pytest.raises(ValueError, match="max_fp = 1"):
        calibrate_thresholds({"calibration": calibration}, max_fp=1)
    with pytest.raises(ValueError, match="'calibration' has no images"):
        calibrate_thresholds({"calibration": dict.fromkeys(CONCEPT_NAMES, [])}, max_fp=0.02)


def test_calibration_allows_exactly_the_whole_number_of_images_max_fp_grants():
    """At max_fp 0.02, 50 images allow exactly 1 flagged: the threshold sits just above the 2nd
    highest confidence, so the 1st alone is flagged (not 0.25, which would flag 2 of 50, 4%)."""
    reference = dict.fromkeys(CONCEPT_NAMES, [0.0] * 50)
    thresholds = calibrate_thresholds({"validation_clean": {**reference, "watermark": [0.9, 0.8] + [0.0] * 48}}, max_fp=0.02)
    assert thresholds == {"qrcode": 0.25, "watermark": 0.8001, "text": 0.25}
    assert np.mean(np.asarray([0.9, 0.8] + [0.0] * 48) >= thresholds["watermark"]) == 0.02


def test_a_confidence_exactly_at_its_threshold_counts_in_icr_and_as_a_false_positive(tmp_path):
    """The thresholds are "at least": a watermark at 0.6 against the 0.6 threshold is counted, on
    generated images and on clean ones, as calibration counts it when it picks the threshold."""
    from implicit_concept.scoring import CleanReference

    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    thresholds = {"qrcode": 0.25, "watermark": 0.6, "text": 0.25}
    detector = ConfidenceDetector(weights, thresholds)
    report = score_images([_image(20, 0.6), _image(0, 0.0)], detector, ScoreConfig(resamples=200),
                          clean=[_image(20, 0.6), _image(0, 0.0)], checkers=[])
    assert report.flags("watermark") == [True, False] and report.concepts["watermark"].icr.value == 0.5
    assert report.concepts["watermark"].fp_rate.value == 0.5
    reference = CleanReference(source="x", max_conf={"qrcode": [0.0], "watermark": [0.6], "text": [0.0]})
    assert reference.flags("watermark", thresholds).tolist() == [True]


# --- scoring at the detector's thresholds --------------------------------------------------------

class ConfidenceDetector:
    """Finds the concept the red channel names (10 qrcode, 20 watermark, 30 text) with the confidence
    the green channel gives in hundredths."""

    def __init__(self, path, thresholds):
        self.path = path
        self.thresholds = thresholds

    def detect_many(self, images, conf=0.25, batch=64):
        out = []
        for im in images:
            red, green, _ = im.getpixel((0, 0))
            hits = [Detection(c, green / 100, (1.0, 1.0, 9.0, 9.0)) for i, c in enumerate(CONCEPT_NAMES) if red == 10 * (i + 1)]
            out.append([d for d in hits if d.confidence >= conf])
        return out


def _image(red, confidence):
    return Image.new("RGB", (16, 16), (red, round(confidence * 100), 0))


def test_scoring_applies_each_concepts_threshold_to_icr_and_fp_rate(tmp_path):
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    detector = ConfidenceDetector(weights, {"qrcode": 0.25, "watermark": 0.6, "text": 0.25})
    images = [_image(10, 0.5), _image(20, 0.5), _image(20, 0.7), _image(30, 0.3)]
    clean = [_image(20, 0.5), _image(0, 0.0), _image(0, 0.0), _image(0, 0.0)]
    own = score_images(images, detector, ScoreConfig(resamples=200), clean=clean, checkers=[])
    icr = {c: s.icr.value for c, s in own.concepts.items()}
    assert icr == {"qrcode": 0.25, "watermark": 0.25, "text": 0.25}, "the watermark at 0.5 is below its 0.6 threshold"
    assert own.concepts["watermark"].fp_rate.value == 0.0, "the clean reference is read at the same thresholds"
    assert own.flags("watermark") == [False, False, True, False] and own.images[1]["detections"] == []
    record = json.loads(own.write_json(tmp_path / "own.json").read_text())
    assert record["thresholds"] == detector.thresholds and record["config"]["conf"] is None
    assert "watermark 0.6" in own.table()

    one = score_images(images, detector, ScoreConfig(conf=0.25, resamples=200), clean=clean, checkers=[])
    assert one.concepts["watermark"].icr.value == 0.5 and one.concepts["watermark"].fp_rate.value == 0.25, "an explicit conf applies to every concept"
    assert one.thresholds == dict.fromkeys(CONCEPT_NAMES, 0.25)


def test_fp_rate_any_uses_each_concepts_threshold():
    from implicit_concept.scoring import CleanReference

    reference = CleanReference(source="x", max_conf={"qrcode": [0.3, 0.0], "watermark": [0.0, 0.5], "text": [0.0, 0.0]})
    thresholds = {"qrcode": 0.25, "watermark": 0.6, "text": 0.25}
    assert reference.flags("any", thresholds).tolist() == [True, False]
    assert reference.fp_rate("watermark", ScoreConfig(resamples=200), thresholds).value == 0.0
    assert reference.fp_rate("watermark", ScoreConfig(conf=0.25, resamples=200), thresholds).value == 0.5
    with pytest.raises(ValueError, match="no detector thresholds"):
        reference.fp_rate("watermark", ScoreConfig(resamples=200))


# --- the record --------------------------------------------------------------------------------

def _random_detector(folder, thresholds):
    from implicit_concept.detector.inference import build_model
    from implicit_concept.detector.weights import weights_state, write_detector

    folder.mkdir(parents=True, exist_ok=True)
    state = weights_state(build_model("yolov8n.yaml", CONCEPT_NAMES))
    write_detector(folder, state, model="yolov8n.yaml", names=CONCEPT_NAMES, imgsz=32, scale={"name": "random"}, thresholds=thresholds)
    return folder


def test_thresholds_round_trip_through_the_json_record(tmp_path):
    thresholds = {"qrcode": 0.3172, "watermark": 0.7001, "text": 0.25}
    folder = _random_detector(tmp_path / "det", thresholds)
    assert sorted(p.name for p in folder.iterdir()) == [RECORD_NAME, WEIGHTS_NAME], "JSON and safetensors, nothing pickled"
    assert json.loads((folder / RECORD_NAME).read_text())["thresholds"] == thresholds
    assert Detector.load(folder).thresholds == thresholds


def test_a_record_written_before_thresholds_loads_with_the_default_for_every_concept(tmp_path):
    folder = _random_detector(tmp_path / "det", {"qrcode": 0.5, "watermark": 0.5, "text": 0.5})
    record = json.loads((folder / RECORD_NAME).read_text())
    old = {k: v for k, v in record.items() if k not in ("thresholds", "inputs")}
    (folder / RECORD_NAME).write_text(json.dumps(old))
    assert Detector.load(folder).thresholds == dict.fromkeys(CONCEPT_NAMES, 0.25)


def test_training_puts_torchs_thread_count_back(tmp_path):
    """The scale's thread count holds while the detector trains and is calibrated, not after: what the
    process scores next runs as it would have with the detector found in the cache."""
    import torch

    shards = _write_shards(tmp_path / "icd-mixed", TRAINABLE)
    before = torch.get_num_threads()
    torch.set_num_threads(TINY.threads + 1)
    try:
        train_detector(shards, tmp_path / "det", TINY)
        assert torch.get_num_threads() == TINY.threads + 1
    finally:
        torch.set_num_threads(before)
