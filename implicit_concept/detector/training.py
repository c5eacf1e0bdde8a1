"""Train the concept detector on an ICD subset and measure it on the unseen-asset test split.

One call does the whole job a reader of the benchmark needs to trust the detector: export the shards,
train YOLO from its model YAML (offline, no pretrained weights), evaluate per-class mAP on the test
split, record the false-positive reference on clean images, and write it all beside the weights.
No checkpoint is chosen by its test score: the weights are those of the last epoch.

The trained weights never pass through a pickle: ultralytics' trainer is kept from writing its
``.pt`` checkpoints (and so from reading them back), the weights are taken from memory, measured
there, and published weights-only (:mod:`implicit_concept.detector.weights`). Training runs on one
device: a multi-GPU run would be a subprocess of ultralytics' own, out of reach of all of that.
"""
from __future__ import annotations

import shutil
import time
import tomllib
from copy import deepcopy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.export import export_detection_dataset
from implicit_concept.detector.inference import DEFAULT_CONF, Detector
from implicit_concept.detector.weights import MODEL_YAML, WEIGHTS_NAME, record_path, weights_state, write_detector
from implicit_concept.detector.yolo_env import import_ultralytics
from implicit_concept.files import atomic_write_json
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
            "model": MODEL_YAML.fullmatch(self.model) is not None,
            "imgsz": self.imgsz >= 32 and self.imgsz % 32 == 0,
            "epochs": self.epochs >= 1,
            "batch": self.batch >= 1,
            "device": self.device == "cpu" or self.device.isdigit(),
            "threads": self.threads >= 1,
            "workers": self.workers >= 0,
            "seed": self.seed >= 0,
        }
        wants = {
            "model": "the name of one of ultralytics' model YAMLs, such as yolov8n.yaml (weights files would be downloaded)",
            "imgsz": "a multiple of 32, at least 32",
            "epochs": ">= 1",
            "batch": ">= 1",
            "device": '"cpu" or one CUDA index such as "0" (training runs in this process, on one device)',
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
    """What a training run wrote, all under ``out_dir``, and the detector its metrics were measured with."""

    weights: Path
    metrics: Path
    plots: list[Path]
    summary: dict[str, Any]
    detector: Detector


def train_detector(shards: str | Path, out_dir: str | Path, scale: DetectorScale) -> TrainedDetector:
    """Train on ``shards``/train, evaluate on ``shards``/test; write metrics.json, plots and the detector.

    metrics.json: ``test_split`` (ultralytics' box mAP50 / mAP50-95, precision, recall per class),
    ``at_conf`` (at the scoring threshold: false-positive rate on the test split's clean images and
    image-level recall, the share of images holding a concept in which it is found), ``timing_s``,
    ``scale``, ``dataset`` (shard hashes) and ``environment`` (package versions). The detector's
    files are written last: a folder holding its record holds everything above.
    """
    shards, out_dir = Path(shards), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path(out_dir / WEIGHTS_NAME).unlink(missing_ok=True)  # incomplete until the new record is written
    dataset = export_detection_dataset(shards, out_dir / "dataset")

    start = time.perf_counter()
    module = _train(dataset.data_yaml, scale, out_dir)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    state = weights_state(module)  # before evaluation fuses the network's layers in place
    detector = Detector.from_module(module, scale.model, out_dir / WEIGHTS_NAME, scale.imgsz, device=scale.device)
    evaluation = _evaluate(detector, dataset.data_yaml, scale, out_dir)
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
    atomic_write_json(metrics, summary)
    plots = [p for p in (out_dir / "pr_curve.png", out_dir / "confusion_matrix.png") if p.exists()]
    weights = write_detector(out_dir, state, model=scale.model, names=CONCEPT_NAMES, imgsz=scale.imgsz, scale=asdict(scale))
    return TrainedDetector(weights=weights, metrics=metrics, plots=plots, summary=summary, detector=detector)


def _train(data_yaml: Path, scale: DetectorScale, out_dir: Path) -> Any:
    """The last epoch's EMA model in memory, its weights rounded to fp16 as ultralytics publishes them."""
    callbacks = import_ultralytics("ultralytics.utils.callbacks").get_default_callbacks()
    callbacks["on_pretrain_routine_start"].append(lambda trainer: _set_threads(scale.threads))
    shutil.rmtree(out_dir / "train", ignore_errors=True)  # nothing found there is ever read back
    trainer_class = _in_memory_trainer(import_ultralytics("ultralytics.models.yolo.detect").DetectionTrainer)
    trainer = trainer_class(
        overrides={
            "model": scale.model,
            "task": "detect",
            "mode": "train",
            "data": str(data_yaml),
            "imgsz": scale.imgsz,
            "epochs": scale.epochs,
            "batch": scale.batch,
            "device": scale.device,
            "workers": scale.workers,
            "seed": scale.seed,
            "deterministic": True,
            "pretrained": False,
            "amp": False,
            "val": False,
            "plots": False,
            "project": str(out_dir),
            "name": "train",
            "exist_ok": True,
            "verbose": False,
        },
        _callbacks=callbacks,
    )
    trainer.train()
    module = deepcopy(trainer.ema.ema)
    module.load_state_dict(weights_state(module))
    return module.eval()


def _in_memory_trainer(base: type) -> type:
    class InMemoryTrainer(base):
        """ultralytics' detection trainer, writing no pickled checkpoint and so reading none back."""

        def save_model(self) -> bool:
            return False

        def final_eval(self) -> None:
            """train_detector evaluates the weights it publishes instead."""

    return InMemoryTrainer


def _set_threads(threads: int) -> None:
    """ultralytics pins CPU training to cores - 1 threads; we pin what the scale says."""
    torch.set_num_threads(threads)


def _evaluate(detector: Detector, data_yaml: Path, scale: DetectorScale, out_dir: Path) -> dict[str, Any]:
    """Per-class mAP50 and mAP50-95 on the test split, with ultralytics' PR curve and confusion matrix."""
    metrics = detector.model.val(
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
