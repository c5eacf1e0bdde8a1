"""The trained concept detector at inference time, and the boxes it hands Geom-Erasing.

``Detector`` wraps a YOLO model trained by :mod:`implicit_concept.detector.training`: it loads the
weights-only files of :mod:`implicit_concept.detector.weights` into the network rebuilt from its
model YAML (never a pickled ``.pt``), checks that its classes are the ICD concepts, predicts at the
image size it was trained at (ultralytics would otherwise default to 640) and batches images. It
carries the per-concept thresholds its record holds, the ones scoring applies unless told otherwise.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.weights import DEFAULT_CONF, DetectorError, model_yaml, read_detector, record_path
from implicit_concept.detector.yolo_env import import_ultralytics, info_hidden, predict_threads, ultralytics_call
from implicit_concept.image_stream import as_rgb, load_image
from implicit_concept.sample import Box, covering_box
from implicit_concept.tensor_checks import SAFETENSORS_FLOATS

#: NMS IoU; ultralytics' default.
DEFAULT_IOU = 0.7


@dataclass(frozen=True)
class Detection:
    """One detected instance; ``box`` is (x1, y1, x2, y2) in pixels of the input image."""

    concept: str
    confidence: float
    box: tuple[float, float, float, float]

    def covering_box(self) -> Box:
        """The smallest integer :class:`Box` (x2/y2 exclusive) that contains ``box``."""
        return covering_box(self.box)

    def to_json(self) -> dict[str, Any]:
        return {"concept": self.concept, "confidence": round(self.confidence, 5), "box": [round(v, 2) for v in self.box]}


class Detector:
    """A loaded detector; build it with :meth:`load`. ``thresholds``: per concept, the confidence at
    which a detection counts when scoring (``DEFAULT_CONF`` for each unless given)."""

    def __init__(self, model: Any, path: Path, imgsz: int, device: str, thresholds: dict[str, float] | None = None) -> None:
        self.model = model
        self.path = path
        self.imgsz = imgsz
        self.device = device
        self.thresholds = dict(thresholds) if thresholds is not None else dict.fromkeys(CONCEPT_NAMES, DEFAULT_CONF)
        #: What the clean-image reference beside the weights must hash to, when its record says.
        self.clean_reference_sha256: str | None = None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Detector":
        """Load ``path``: the folder ``detector train`` wrote, or its ``detector.safetensors``.

        Its record's sha256 is checked before the weights are read; a ``.pt`` is refused unopened.
        """
        weights, record, state = read_detector(path)
        if record.names != CONCEPT_NAMES:
            raise DetectorError(f"{record_path(weights)}: detects {record.names}, not the ICD concepts {CONCEPT_NAMES}")
        module = build_model(record.model, record.names)
        expected = module.state_dict()
        # Named here, one problem a line: torch's own refusal is a paragraph listing every key.
        fits = f"{record.model} with {len(record.names)} classes"
        if odd := sorted(set(state) ^ set(expected)):
            raise DetectorError(f"{weights}: tensor {odd[0]} is {'not in' if odd[0] in state else 'missing; it is in'} {fits}")
        for name, tensor in state.items():
            want = expected[name]
            # Loading casts silently: integers, or float8 (weights rounded away), would be another detector.
            if tensor.is_floating_point() != want.is_floating_point() or (tensor.is_floating_point() and tensor.dtype not in SAFETENSORS_FLOATS):
                raise DetectorError(f"{weights}: tensor {name} is {tensor.dtype}, where {record.model} holds {want.dtype}")
            if tensor.shape != want.shape:
                raise DetectorError(f"{weights}: tensor {name} is {tuple(tensor.shape)}, where {fits} holds {tuple(want.shape)}")
        module.load_state_dict(state, strict=True)
        detector = cls.from_module(module.eval(), record.model, weights, record.imgsz, device, thresholds=record.thresholds)
        detector.clean_reference_sha256 = record.clean_reference_sha256
        return detector

    @classmethod
    def from_module(
        cls, module: torch.nn.Module, model: str, path: Path, imgsz: int, device: str = "cpu", thresholds: dict[str, float] | None = None
    ) -> "Detector":
        """A detector around a detection model in memory (``model`` names the YAML it was built from)."""
        yolo_class = import_ultralytics().YOLO
        # YOLO takes a YAML path, and builds a network from it that ``module`` replaces: it is handed
        # the package's own file (never the bare name, which it would look up in the current folder),
        # and its "no model scale passed" warning about that throwaway network is not shown.
        with torch.random.fork_rng(devices=[]), _quiet(import_ultralytics("ultralytics.utils").LOGGER), ultralytics_call():  # nor may it move the caller's seed
            yolo = yolo_class(str(model_yaml(model)), task="detect")
        yolo.model = module
        return cls(yolo, Path(path), imgsz, device, thresholds)

    def own_copy(self) -> "Detector":
        """This detector with a network, predictor and thresholds of its own. ultralytics builds its
        predictor from the network on the first call (and again when a setting it is built with
        changes), so what a caller does to a shared network (trains it, runs it in train mode,
        which moves its batch-norm statistics, casts it) would be in every later detection.
        Cost: one deep copy of the network (about 1 s for yolov8n on 2 shared CPU cores)."""
        predictor, self.model.predictor = self.model.predictor, None
        try:
            model = copy.deepcopy(self.model)
        finally:
            self.model.predictor = predictor
        mine = copy.copy(self)
        mine.model, mine.thresholds = model, dict(self.thresholds)
        return mine

    def detect(self, image: Image.Image | str | Path, conf: float = DEFAULT_CONF) -> list[Detection]:
        return self.detect_many([image], conf=conf)[0]

    def detect_many(
        self, images: Iterable[Image.Image | str | Path], conf: float = DEFAULT_CONF, batch: int = 64
    ) -> list[list[Detection]]:
        """Detections per image, in input order; images are decoded and predicted ``batch`` at a time."""
        out: list[list[Detection]] = []
        it = iter(images)
        for chunk in iter(lambda: list(islice(it, batch)), []):
            arrays = [_bgr(im) for im in chunk]
            # At the thread count ultralytics sets up its predictor with (every batch, not only the
            # first), and with the caller's count, environment and warnings filters put back after.
            with ultralytics_call(threads=predict_threads(self.device)):
                results = self.model.predict(arrays, imgsz=self.imgsz, conf=conf, iou=DEFAULT_IOU, device=self.device, verbose=False)
            out.extend(_detections(r) for r in results)
        return out


def build_model(model: str, names: Sequence[str]) -> torch.nn.Module:
    """The detection network ``model`` (an ultralytics model YAML) with ``names`` as its classes, as
    training builds it; its initial weights are random, drawn without moving the caller's seed."""
    tasks = import_ultralytics("ultralytics.nn.tasks")
    with torch.random.fork_rng(devices=[]), ultralytics_call(), info_hidden():
        module = tasks.DetectionModel(model_config(model), nc=len(names), verbose=False)
    module.names = dict(enumerate(names))
    return module


def model_config(model: str) -> dict[str, Any]:
    """The description ultralytics builds the network ``model`` (a bare model YAML name) from, read
    from its own package file alone (:func:`~implicit_concept.detector.weights.model_yaml`): the
    dict its ``yaml_model_load(model)`` returns when it finds the package's file, without looking
    anywhere else first (the current folder) and without mapping a path's text to a scale (an
    absolute path such as ``/mnt/nvme0n1/...`` would fool that mapping). A new dict each call:
    ultralytics writes into it."""
    path = model_yaml(model)
    config = import_ultralytics("ultralytics.utils").YAML.load(path)
    config["scale"] = import_ultralytics("ultralytics.nn.tasks").guess_model_scale(model)
    config["yaml_file"] = model
    return config


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """``logger`` silent within the block."""
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _bgr(image: Image.Image | str | Path) -> np.ndarray:
    """ultralytics takes numpy images in OpenCV's BGR order."""
    im = as_rgb(image, "image") if isinstance(image, Image.Image) else load_image(image)
    return np.ascontiguousarray(np.asarray(im)[:, :, ::-1])


def _detections(result: Any) -> list[Detection]:
    boxes = result.boxes
    xyxy, confs, classes = boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist()
    return [Detection(CONCEPT_NAMES[int(c)], float(p), tuple(b)) for b, p, c in zip(xyxy, confs, classes)]
