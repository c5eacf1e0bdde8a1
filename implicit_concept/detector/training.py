"""Train the concept detector on an ICD subset and measure it on the unseen-asset test split.

One call does the whole job a reader of the benchmark needs to trust the detector: export the shards,
train YOLO from its model YAML (offline, no pretrained weights), evaluate per-class mAP on the test
split, record the false-positive reference on clean images, and write it all beside the weights.
No checkpoint is chosen by its test score: the weights are those of the last epoch.
"""
from __future__ import annotations

import json
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.export import export_detection_dataset
from implicit_concept.detector.inference import DEFAULT_CONF, WEIGHTS_NAME, Detector
from implicit_concept.detector.yolo_env import import_ultralytics
from implicit_concept.provenance import environment
from implicit_concept.scoring import (
    CLEAN_REFERENCE_NAME,
    ScoreConfig,
    build_clean_reference,
    clean_images,
    image_recall,
)
from implicit_concept.validate import check_fields

SCALES_FILE = Path(__file__).with_name("scales.toml")
METRICS_NAME = "metrics.json"


class ScaleError(ValueError):
    """A detector scale is unknown or has a bad field; the message names it."""


@dataclass(frozen=True)
class DetectorScale:
    """How big and how long: a named, recorded training configuration."""

    name: str
    model: str
    imgsz: int
    epochs: int
    batch: int
    device: str = "cpu"
    threads: int = 1
    workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "model": self.model.endswith(".yaml"),
            "imgsz": self.imgsz >= 32 and self.imgsz % 32 == 0,
            "epochs": self.epochs >= 1,
            "batch": self.batch >= 1,
            "device": self.device == "cpu" or self.device.replace(",", "").isdigit(),
            "threads": self.threads >= 1,
            "workers": self.workers >= 0,
            "seed": self.seed >= 0,
        }
        wants = {
            "model": "a model YAML such as yolov8n.yaml (weights files would be downloaded)",
            "imgsz": "a multiple of 32, at least 32",
            "epochs": ">= 1",
            "batch": ">= 1",
            "device": '"cpu" or CUDA indices such as "0" or "0,1"',
            "threads": ">= 1",
            "workers": ">= 0",
            "seed": ">= 0",
        }
        for field_name, ok in checks.items():
            if not ok:
                raise ScaleError(f"detector scale {self.name!r}: {field_name} = {getattr(self, field_name)!r}, want {wants[field_name]}")


def load_scale(name: str, path: Path = SCALES_FILE) -> DetectorScale:
    """The scale ``name`` from ``detector_scales.toml``; unknown names and fields fail naming them."""
    with open(path, "rb") as f:
        table = tomllib.load(f)
    if name not in table:
        raise ScaleError(f"{path}: no detector scale {name!r} (known: {', '.join(table)})")
    entry = table[name]
    check_fields(entry, {f.name for f in fields(DetectorScale)} - {"name"}, f"{path}: scale {name!r}", ScaleError)
    try:
        return DetectorScale(name=name, **entry)
    except TypeError as e:
        raise ScaleError(f"{path}: scale {name!r}: {e}") from None


@dataclass(frozen=True)
class TrainedDetector:
    """What a training run wrote, all under ``out_dir``."""

    weights: Path
    metrics: Path
    plots: list[Path]
    summary: dict[str, Any]


def train_detector(shards: str | Path, out_dir: str | Path, scale: DetectorScale) -> TrainedDetector:
    """Train on ``shards``/train, evaluate on ``shards``/test; write weights, metrics.json and plots.

    metrics.json: ``test_split`` (ultralytics' box mAP50 / mAP50-95, precision, recall per class),
    ``at_conf`` (at the scoring threshold: false-positive rate on the test split's clean images and
    image-level recall, the share of images holding a concept in which it is found), ``timing_s``,
    ``scale``, ``dataset`` (shard hashes) and ``environment`` (package versions).
    """
    shards, out_dir = Path(shards), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = export_detection_dataset(shards, out_dir / "dataset")
    yolo = import_ultralytics()

    model = yolo.YOLO(scale.model, task="detect")
    model.add_callback("on_pretrain_routine_start", lambda trainer: _set_threads(scale.threads))
    start = time.perf_counter()
    model.train(
        data=str(dataset.data_yaml),
        imgsz=scale.imgsz,
        epochs=scale.epochs,
        batch=scale.batch,
        device=scale.device,
        workers=scale.workers,
        seed=scale.seed,
        deterministic=True,
        pretrained=False,
        amp=False,
        val=False,
        plots=False,
        project=str(out_dir),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    train_s = time.perf_counter() - start
    weights = out_dir / WEIGHTS_NAME
    shutil.copyfile(out_dir / "train" / "weights" / "last.pt", weights)

    start = time.perf_counter()
    evaluation = _evaluate(weights, dataset.data_yaml, scale, out_dir)
    detector = Detector.load(weights, device="cpu" if scale.device == "cpu" else scale.device.split(",")[0])
    test_dir = shards / "test"
    reference = build_clean_reference(detector, clean_images(test_dir), source=str(test_dir.resolve()))
    reference.write(out_dir / CLEAN_REFERENCE_NAME)
    at_conf = ScoreConfig(conf=DEFAULT_CONF)
    recall = image_recall(detector, test_dir, conf=at_conf.conf)
    eval_s = time.perf_counter() - start

    summary = {
        "scale": asdict(scale),
        "dataset": {"shards": str(shards.resolve()), "export": str(dataset.root), "counts": dataset.counts, "shards_sha256": dataset.shards_sha256},
        "test_split": evaluation,
        "at_conf": {
            "conf": at_conf.conf,
            "fp_rate_clean": {c: reference.fp_rate(c, at_conf).to_json() for c in (*CONCEPT_NAMES, "any")},
            "image_recall": recall,
            "clean_images": reference.n_images,
        },
        "timing_s": {"train": round(train_s, 1), "evaluate": round(eval_s, 1)},
        "environment": environment(),
    }
    metrics = out_dir / METRICS_NAME
    metrics.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    plots = [p for p in (out_dir / "pr_curve.png", out_dir / "confusion_matrix.png") if p.exists()]
    return TrainedDetector(weights=weights, metrics=metrics, plots=plots, summary=summary)


def _set_threads(threads: int) -> None:
    """ultralytics pins CPU training to cores - 1 threads; we pin what the scale says."""
    torch.set_num_threads(threads)


def _evaluate(weights: Path, data_yaml: Path, scale: DetectorScale, out_dir: Path) -> dict[str, Any]:
    """Per-class mAP50 and mAP50-95 on the test split, with ultralytics' PR curve and confusion matrix."""
    model = import_ultralytics().YOLO(str(weights), task="detect")
    metrics = model.val(
        data=str(data_yaml),
        split="val",
        imgsz=scale.imgsz,
        batch=scale.batch,
        device=scale.device,
        workers=scale.workers,
        plots=True,
        project=str(out_dir),
        name="val",
        exist_ok=True,
        verbose=False,
    )
    save_dir = Path(metrics.save_dir)
    for src, dst in (("BoxPR_curve.png", "pr_curve.png"), ("confusion_matrix.png", "confusion_matrix.png")):
        if (save_dir / src).exists():
            shutil.copyfile(save_dir / src, out_dir / dst)
    box = metrics.box
    per_class = {}
    for i, class_id in enumerate(box.ap_class_index.tolist()):
        per_class[CONCEPT_NAMES[class_id]] = {
            "map50": round(float(box.ap50[i]), 4),
            "map50_95": round(float(box.ap[i]), 4),
            "precision": round(float(box.p[i]), 4),
            "recall": round(float(box.r[i]), 4),
        }
    return {"map50": round(float(box.map50), 4), "map50_95": round(float(box.map), 4), "per_class": per_class}
