"""A debug-scale detector run end to end: train, evaluate, load, predict, score from the CLI."""
import json

import pytest
from PIL import Image

from benchmark.cli import main
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.inference import Detection, Detector
from implicit_concept.detector.training import load_scale, train_detector
from implicit_concept.shard_reader import iter_samples


#: ultralytics' informational lines around the epochs (its banner, arguments, optimizer, network
#: summaries, dataset and speed checks), which say nothing a user acts on.
TRAINING_CHATTER = ("Ultralytics 8.", "engine/trainer:", "optimizer:", "Overriding model.yaml", "summary",
                    "Fast image access", "Speed:", "Results saved to", "Logging results to")


@pytest.mark.slow
def test_debug_training_gives_weights_that_load_predict_and_score(debug_dataset, tmp_path, capsys):
    shards = debug_dataset / "icd-mixed"
    trained = train_detector(shards, tmp_path / "det", load_scale("debug"))
    said = capsys.readouterr().err
    assert not [line for line in TRAINING_CHATTER if line in said], said[-3000:]
    assert "Epoch" in said and "epochs completed" in said, "the epochs' own lines are shown"

    metrics = json.loads(trained.metrics.read_text())
    assert set(metrics["test_split"]["per_class"]) == set(CONCEPT_NAMES)
    assert {"map50", "map50_95"} <= set(metrics["test_split"]["per_class"]["text"])
    assert metrics["scale"]["name"] == "debug" and metrics["environment"]["packages"]["ultralytics"]
    at = metrics["at_thresholds"]
    assert at["images"]["test_clean"] == 32 and "any" in at["fp_rate"]["test_clean"] and at["images"]["validation_clean"] > 0
    assert set(metrics["validation_split"]["per_class"]) <= set(CONCEPT_NAMES) and metrics["dataset"]["counts"]["val"]["images"] > 0
    assert trained.plots and all(p.stat().st_size > 0 for p in trained.plots)

    detector = Detector.load(tmp_path / "det")
    assert detector.imgsz == load_scale("debug").imgsz and trained.weights == detector.path
    assert detector.thresholds == metrics["thresholds"] == trained.detector.thresholds
    images = [s.image for s in iter_samples(shards / "test", with_extras=False)][:5]
    low = detector.detect_many(images, conf=0.001)
    assert len(low) == 5 and all(isinstance(d, Detection) and d.concept in CONCEPT_NAMES for ds in low for d in ds)
    assert sum(map(len, low)) > 0 and low == trained.detector.detect_many(images, conf=0.001), \
        "the published file detects exactly what the trained model its metrics describe does"
    assert isinstance(detector.detect(Image.new("RGB", (64, 64), "white")), list)

    out = tmp_path / "score.json"
    assert main(["score", str(shards / "test"), "--detector", str(tmp_path / "det"), "--json", str(out)]) == 0
    assert "FP clean" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["n_images"] == 32 and set(record["concepts"]) == set(CONCEPT_NAMES)
    assert record["concepts"]["qrcode"]["fp_rate_clean"]["n"] == 32
    assert record["thresholds"] == metrics["thresholds"], "scored at the detector's calibrated thresholds"

