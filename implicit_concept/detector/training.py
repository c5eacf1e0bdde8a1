"""Train the concept detector on an ICD subset, calibrate it, and measure it on the unseen-asset test split.

One call does the whole job a reader of the benchmark needs to trust the detector: export the shards
(the train split divided into fit and validation, :mod:`implicit_concept.detector.export`), train
YOLO from its model YAML (offline, no pretrained weights) on the fit split plus any background images
(generated images showing no concept, with empty labels), set each concept's threshold on the
validation split's clean images and any held-out calibration images
(:mod:`implicit_concept.detector.calibration`), evaluate per-class mAP on validation and test,
record the false-positive reference on clean test images, and write it all beside the weights.
Nothing is chosen on the test split: the weights are those of the last epoch, the thresholds come
from validation and calibration images, and test numbers are only reported.

The trained weights never pass through a pickle: ultralytics' trainer is kept from writing its
``.pt`` checkpoints (and so from reading them back), the weights are taken from memory, measured
there, and published weights-only (:mod:`implicit_concept.detector.weights`). Training runs on one
device: a multi-GPU run would be a subprocess of ultralytics' own, out of reach of all of that.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import ExitStack
from copy import deepcopy
from dataclasses import MISSING, asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.content_hashes import sha256_file
from implicit_concept.detector.calibration import calibrate_thresholds
from implicit_concept.detector.export import DEFAULT_VALIDATION_SHARE, DetectionDataset, export_detection_dataset, in_validation, is_export
from implicit_concept.detector.image_sets import ImageSet, ImageSetDigest, ImageSetError, named_images, pixel_sha256, write_backgrounds
from implicit_concept.detector.inference import Detector, model_config
from implicit_concept.detector.weights import DEFAULT_CONF, WEIGHTS_NAME, DetectorError, DetectorRecord, is_model_yaml, model_yaml, record_path, weights_state, write_detector
from implicit_concept.detector.yolo_env import import_ultralytics, info_hidden, ultralytics_call
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_write_bytes, atomic_write_json, atomic_write_text, check_apart, visible_entries
from implicit_concept.provenance import environment
from implicit_concept.random_states import kept_rngs
from implicit_concept.scoring import (
    CLEAN_REFERENCE_NAME,
    ScoreConfig,
    build_clean_reference,
    clean_images,
    image_recall,
)
from implicit_concept.torch_settings import MAX_THREADS, kept_torch_settings
from implicit_concept.validate import check_fields, read_toml

log = logging.getLogger(__name__)

SCALES_FILE = Path(__file__).with_name("scales.toml")
METRICS_NAME = "metrics.json"
#: The YAML ultralytics trains and evaluates from, in the output folder: the export's splits plus backgrounds.
DATA_YAML = "data.yaml"
TEST_REFERENCE_SOURCE = "test split of the shards in the detector record (inputs.shards_sha256)"


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
    #: Share of the ICD train split held out (by key hash) to choose thresholds on, never the test split.
    validation_share: float = DEFAULT_VALIDATION_SHARE
    #: Per concept, at most this share of validation clean images and of calibration images is flagged.
    calibration_max_fp: float = 0.02

    def __post_init__(self) -> None:
        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        checks = {
            "model": is_model_yaml(self.model),
            "imgsz": integer(self.imgsz) and self.imgsz >= 32 and self.imgsz % 32 == 0,
            "epochs": integer(self.epochs) and self.epochs >= 1,
            "batch": integer(self.batch) and self.batch >= 1,
            "device": isinstance(self.device, str) and (self.device == "cpu" or self.device.isdigit()),
            "threads": integer(self.threads) and 1 <= self.threads <= MAX_THREADS,
            "workers": integer(self.workers) and self.workers >= 0,
            "seed": integer(self.seed) and 0 <= self.seed < 2**32,
            "validation_share": number(self.validation_share) and 0 < self.validation_share < 1,
            "calibration_max_fp": number(self.calibration_max_fp) and 0 <= self.calibration_max_fp < 1,
        }
        wants = {
            "model": "the name of one of the detection model YAMLs ultralytics ships, such as yolov8n.yaml (weights files would be downloaded)",
            "imgsz": "an integer multiple of 32, at least 32",
            "epochs": "an integer >= 1",
            "batch": "an integer >= 1",
            "device": 'the string "cpu" or one CUDA index as a string such as "0" (training runs in this process, on one device)',
            "threads": f"an integer in [1, {MAX_THREADS}]",
            "workers": "an integer >= 0",
            "seed": "an integer in [0, 2**32)",
            "validation_share": "a share in (0, 1), such as 0.1",
            "calibration_max_fp": "a share in [0, 1), such as 0.02",
        }
        for field_name, ok in checks.items():
            if not ok:
                raise ScaleError(f"detector scale {self.name!r}: {field_name} = {getattr(self, field_name)!r}, want {wants[field_name]}")


def load_scale(name: str, path: Path = SCALES_FILE) -> DetectorScale:
    """The scale ``name`` from ``scales.toml``; unknown names and fields, wrong types and ranges fail
    naming the file, the scale and the field."""
    path = Path(path)
    table = read_toml(path, ScaleError, "scales file")
    if not isinstance(name, str) or name not in table:
        raise ScaleError(f"{path}: no detector scale {name!r} (known: {', '.join(table)})")
    entry = table[name]
    if not isinstance(entry, dict):
        raise ScaleError(f"{path}: [{name}]: expected a table of fields, got {entry!r}")
    check_fields(entry, {f.name for f in fields(DetectorScale)} - {"name"}, f"{path}: scale {name!r}", ScaleError)
    missing = sorted(f.name for f in fields(DetectorScale) if f.name != "name" and f.default is MISSING and f.name not in entry)
    if missing:
        raise ScaleError(f"{path}: scale {name!r}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    try:
        return DetectorScale(name=name, **entry)
    except ScaleError as e:
        raise ScaleError(f"{path}: {e}") from None
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


@kept_torch_settings()  # ultralytics' callback sets the scale's thread count (:func:`_set_threads`); put back after
def train_detector(
    shards: str | Path,
    out_dir: str | Path,
    scale: DetectorScale,
    backgrounds: ImageSet | None = None,
    calibration: ImageSet | None = None,
) -> TrainedDetector:
    """Train on ``shards``/train's fit split (plus ``backgrounds``), set thresholds on its validation
    split (and ``calibration``), report on ``shards``/test; write metrics.json, plots and the detector.

    ``backgrounds`` and ``calibration``: a folder of images or ``(name, PIL image)`` pairs, such as a
    base model's generations from clean prompts, the two sets disjoint. Calibration images are read
    (and held in memory) before training, so a bad one fails in seconds, not after training.

    metrics.json: ``validation_split`` and ``test_split`` (ultralytics' box mAP50 / mAP50-95,
    precision, recall per class), ``thresholds`` and how they were chosen (``calibration``),
    ``at_thresholds`` (per concept at those thresholds: false-positive rate on calibration images,
    validation clean images and test clean images, and image-level recall on validation and test,
    the share of images holding a concept in which it is found), ``inputs`` (background and
    calibration image counts and content hashes), ``timing_s``, ``scale``, ``dataset`` (shard
    hashes) and ``environment`` (package versions). The detector's files are written last, its
    record holding the thresholds and inputs: a folder holding a record holds everything above.

    ``out_dir`` is locked for the whole call (``.implicit-concept.lock`` inside it): a second
    training into it is refused at once, naming the folder and the first one's pid, and so is loading
    the detector there meanwhile (:func:`~implicit_concept.detector.weights.read_detector`): the two
    trainings would interleave their exports, plots and records, and a reader would find none.
    """
    shards, out_dir = Path(shards), Path(out_dir).resolve()
    check_apart(out_dir, "detector --out", {"the shards": shards, "--backgrounds": backgrounds, "--calibration": calibration})
    out_dir.mkdir(parents=True, exist_ok=True)
    # ultralytics' trainer seeds the global generators and sets, then removes, PYTHONHASHSEED and
    # CUBLAS_WORKSPACE_CONFIG: a caller's own were lost, and its next random draw was ultralytics'.
    with locked(out_dir, wait=False, refusal="wait for it to finish or choose another --out", inside=True), \
            ultralytics_call(), kept_rngs():
        return _train_detector(shards, out_dir, scale, backgrounds, calibration)


def _require_own_folder(out_dir: Path) -> None:
    """Refuse a folder, not empty, that training did not make (neither its export at ``dataset/``
    nor its detector record is there): training replaces ``train/``, ``val/``, ``test/`` and
    ``backgrounds/`` in it, so a lab's experiments folder named as ``--out`` lost its own. Hidden
    files (a lock, a killed writer's temporaries) do not count."""
    held = visible_entries(out_dir)
    if held and not is_export(out_dir / "dataset") and not _holds_detector_record(out_dir):
        raise ValueError(f"detector --out {out_dir}: a folder detector training did not make, and not empty (it holds {held[0]}); "
                         "training replaces train/, val/, test/ and backgrounds/ in its folder: name a new or empty one")


def _holds_detector_record(folder: Path) -> bool:
    """Whether ``folder`` holds a detector record training wrote: a file of that name another tool
    wrote, one damaged, or a link to one elsewhere says nothing of the folders beside it."""
    record = record_path(folder / WEIGHTS_NAME)
    if record.is_symlink() or not record.is_file():
        return False
    try:
        DetectorRecord.read(record)
    except DetectorError:
        return False
    return True


def _train_detector(shards: Path, out_dir: Path, scale: DetectorScale, backgrounds: ImageSet | None,
                    calibration: ImageSet | None) -> TrainedDetector:
    """:func:`train_detector`'s work, once it holds ``out_dir``."""
    _require_own_folder(out_dir)
    held_out = list(named_images(calibration, "calibration")) if calibration is not None else []
    dataset = export_detection_dataset(shards, out_dir / "dataset", validation_share=scale.validation_share)
    empty = [split for split, counts in dataset.counts.items() if counts["images"] == 0]
    if empty:
        raise ScaleError(
            f"{shards}: no images in the {' and '.join(empty)} split ({dataset.counts['train']['images'] + dataset.counts['val']['images']} "
            f"train samples, scale {scale.name!r} validation_share {scale.validation_share}): build more samples or change the share"
        )
    shutil.rmtree(out_dir / "backgrounds", ignore_errors=True)
    inputs: dict[str, ImageSetDigest | None] = {
        "backgrounds": write_backgrounds(backgrounds, out_dir / "backgrounds") if backgrounds is not None else None,
        "calibration": ImageSetDigest.of(pixel_sha256(im) for _, im in held_out) if calibration is not None else None,
    }
    if inputs["backgrounds"] and inputs["calibration"]:
        shared = inputs["backgrounds"].pixel_hashes & inputs["calibration"].pixel_hashes
        if shared:
            raise ImageSetError(f"{len(shared)} calibration images are also background images: calibration images must be held out")
    data_yaml = training_data_yaml(dataset, out_dir / "backgrounds" / "images" if backgrounds is not None else None, out_dir)

    # Incomplete until the new record is written; only now, every input read: a mistyped shards or
    # image path used to unmake the detector already in --out.
    record_path(out_dir / WEIGHTS_NAME).unlink(missing_ok=True)
    start = time.perf_counter()
    module = _train(data_yaml, scale, out_dir)
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    state = weights_state(module)  # before evaluation fuses the network's layers in place
    detector = Detector.from_module(module, scale.model, out_dir / WEIGHTS_NAME, scale.imgsz, device=scale.device)
    evaluation = {f"{name}_split": _evaluate(detector, data_yaml, split, scale, out_dir) for name, split in (("validation", "val"), ("test", "test"))}
    validation = partial(in_validation, share=scale.validation_share)
    train_dir, test_dir = shards / "train", shards / "test"
    validation_clean = clean_images(train_dir, keep=validation)
    references = {"validation_clean": build_clean_reference(detector, validation_clean, source=f"{train_dir.resolve()} (validation keys)")}
    if held_out:
        source = str(Path(calibration).resolve()) if isinstance(calibration, (str, Path)) else "calibration images given in memory"
        references["calibration"] = build_clean_reference(detector, held_out, source=source)
    detector.thresholds = calibrate_thresholds({name: r.max_conf for name, r in references.items()}, scale.calibration_max_fp)
    # Its sha256 is in the detector's record and compared between runs: it names the shards by what
    # they are (the record's shards_sha256), not where this machine holds them.
    test_reference = build_clean_reference(detector, clean_images(test_dir), source=TEST_REFERENCE_SOURCE)
    test_reference.write(out_dir / CLEAN_REFERENCE_NAME)
    references["test_clean"] = test_reference
    at = ScoreConfig()  # conf None: the detector's thresholds
    recall = {
        "validation": image_recall(detector, train_dir, detector.thresholds, keep=validation),
        "test": image_recall(detector, test_dir, detector.thresholds),
    }
    eval_s = time.perf_counter() - start

    summary = {
        "scale": asdict(scale),
        "dataset": {"shards": str(shards.resolve()), "export": str(dataset.root), "counts": dataset.counts, "shards_sha256": dataset.shards_sha256},
        "inputs": {name: digest.to_json() if digest else None for name, digest in inputs.items()},
        **evaluation,
        "thresholds": detector.thresholds,
        "calibration": {
            "rule": f"per concept, the smallest threshold >= {DEFAULT_CONF} at which at most max_fp of each reference's images are flagged",
            "max_fp": scale.calibration_max_fp,
            "references": sorted(set(references) - {"test_clean"}),
        },
        "at_thresholds": {
            "fp_rate": {name: {c: r.fp_rate(c, at, detector.thresholds).to_json() for c in (*CONCEPT_NAMES, "any")} for name, r in references.items()},
            "images": {name: r.n_images for name, r in references.items()},
            "image_recall": recall,
        },
        "timing_s": {"train": round(train_s, 1), "evaluate": round(eval_s, 1)},
        "environment": environment(),
    }
    metrics = out_dir / METRICS_NAME
    atomic_write_json(metrics, summary)
    plots = [p for p in (out_dir / "pr_curve.png", out_dir / "confusion_matrix.png") if p.exists()]
    weights = write_detector(
        out_dir, state, model=scale.model, names=CONCEPT_NAMES, imgsz=scale.imgsz, scale=asdict(scale),
        thresholds=detector.thresholds, inputs={**summary["inputs"], "shards_sha256": dataset.shards_sha256},
        clean_reference_sha256=sha256_file(out_dir / CLEAN_REFERENCE_NAME),
    )
    return TrainedDetector(weights=weights, metrics=metrics, plots=plots, summary=summary, detector=detector)


def training_data_yaml(dataset: DetectionDataset, backgrounds: Path | None, out_dir: Path) -> Path:
    """``out_dir/data.yaml``: the export's splits, with the folder of ``backgrounds`` (images whose
    label files are empty, so YOLO learns them as background) added to the fit split."""
    data = yaml.safe_load(dataset.data_yaml.read_text(encoding="utf-8"))
    data["path"] = str(dataset.root.resolve())  # this copy lives in out_dir, the export's splits do not
    if backgrounds is not None:
        data["train"] = [data["train"], str(backgrounds.resolve())]
    path = out_dir / DATA_YAML
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def _train(data_yaml: Path, scale: DetectorScale, out_dir: Path) -> Any:
    """The last epoch's EMA model in memory, its weights rounded to fp16 as ultralytics publishes them."""
    callbacks = import_ultralytics("ultralytics.utils.callbacks").get_default_callbacks()
    callbacks["on_pretrain_routine_start"].append(lambda trainer: _set_threads(scale.threads))
    shutil.rmtree(out_dir / "train", ignore_errors=True)  # nothing found there is ever read back
    trainer_class = _in_memory_trainer(import_ultralytics("ultralytics.models.yolo.detect").DetectionTrainer, scale.model)
    with ExitStack() as setting_up:  # its banner, arguments, optimizer, dataset checks and throwaway log folder hidden; its epochs shown
        setting_up.enter_context(info_hidden())
        callbacks["on_train_epoch_start"].append(lambda trainer: setting_up.close())
        trainer = trainer_class(
            overrides={
                "model": str(model_yaml(scale.model)),  # never the bare name: ultralytics would look it up in the current folder
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


def _in_memory_trainer(base: type, model: str) -> type:
    class InMemoryTrainer(base):
        """ultralytics' detection trainer, writing no pickled checkpoint and so reading none back, and
        building the network ``model`` from ultralytics' own file (:func:`model_config`) as inference does."""

        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> Any:
            with info_hidden():  # its nc override and layer table, at every build
                return super().get_model(cfg=model_config(model), weights=weights, verbose=verbose)

        def save_model(self) -> bool:
            return False

        def final_eval(self) -> None:
            """train_detector evaluates the weights it publishes instead."""

    return InMemoryTrainer


def _set_threads(threads: int) -> None:
    """ultralytics pins CPU training to cores - 1 threads; we pin what the scale says, for the rest of
    :func:`train_detector` (evaluation and calibration included), which puts the caller's count back."""
    torch.set_num_threads(threads)


def keep_plot(src: Path, dst: Path) -> None:
    """``src``, a plot ultralytics drew, as ``dst`` when it is a whole image; else no ``dst`` at all.
    ultralytics logs a plot it failed to write (a full disk) and carries on, leaving a PNG cut short
    that was kept, and published, as the detector's; an earlier detector's plot is not kept either."""
    dst.unlink(missing_ok=True)
    if not src.is_file():
        return
    try:
        with Image.open(src) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as e:  # PIL's words for a cut-short or broken file
        log.warning("%s: not a whole image (%s); not kept as %s", src, e, dst.name)
        return
    atomic_write_bytes(dst, src.read_bytes())


def _evaluate(detector: Detector, data_yaml: Path, split: str, scale: DetectorScale, out_dir: Path) -> dict[str, Any]:
    """Per-class mAP50 and mAP50-95 on YOLO's ``split``; for the test split, ultralytics' PR curve and
    confusion matrix are kept beside the weights."""
    shutil.rmtree(out_dir / split, ignore_errors=True)  # an earlier run's plots there are never taken for this one's
    with info_hidden():  # its banner, summary, speed and results line: what is kept is in the record
        metrics = detector.model.val(
            data=str(data_yaml),
            split=split,
            imgsz=scale.imgsz,
            batch=scale.batch,
            device=scale.device,
            workers=scale.workers,
            plots=split == "test",
            project=str(out_dir),
            name=split,
            exist_ok=True,
            verbose=False,
        )
    save_dir = Path(metrics.save_dir)
    if split == "test":
        for src, dst in (("BoxPR_curve.png", "pr_curve.png"), ("confusion_matrix.png", "confusion_matrix.png")):
            keep_plot(save_dir / src, out_dir / dst)
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
