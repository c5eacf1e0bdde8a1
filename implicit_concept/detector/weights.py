"""The detector's files: weights in safetensors, what they are in JSON, so that loading one runs no code.

A YOLO ``.pt`` is a pickle, and unpickling runs whatever the file names: a detector from a colleague
or a shared cache could run anything. A detector is therefore two files, neither unpickled:
``detector.safetensors``, the model's tensors (floats in fp16, as ultralytics stores its
checkpoints, so the numbers are the ones a ``.pt`` held), and ``detector.json``, the record: the
model YAML the network is built from, the class names, the image size it was trained at, the
training scale, the sha256 of the weights file, the per-concept confidence thresholds scoring uses
and what else it was trained and calibrated on (``inputs``: image counts and content hashes). The
record is written last and read first: its hash is checked before a byte of the weights is parsed.
A ``.pt`` is refused by name. A record written before thresholds were calibrated has none: it
means :data:`DEFAULT_CONF` for every concept.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from implicit_concept.content_hashes import sha256_file
from implicit_concept.file_locks import LOCK_NAME, read_locked
from implicit_concept.files import atomic_write_bytes, atomic_write_json
from implicit_concept.json_records import read_json_object
from implicit_concept.tensor_checks import non_finite
from implicit_concept.validate import check_fields

WEIGHTS_NAME = "detector.safetensors"
RECORD_NAME = "detector.json"
#: Bump when the files change meaning; a record of another format is refused.
FORMAT = 1
#: The largest input side a detector record may ask for: a record is data, and its imgsz decides the memory scoring takes.
MAX_IMGSZ = 4096
#: The largest weights file read: above any detection model ultralytics ships even in float64
#: (yolov8x6, 97M parameters, is 0.8 GB), so a file that is huge, or sparse and huge, is refused unread.
MAX_WEIGHTS_BYTES = 2 << 30
#: Pickle-based formats torch and ultralytics use: refused by name, never opened.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
#: A model YAML of ultralytics' own, by bare name: no folder, so no file of someone else's.
MODEL_YAML = re.compile(r"yolo[a-z0-9-]*\.yaml")
#: ultralytics' model YAMLs for other tasks (a classifier or segmenter cannot score boxes).
OTHER_TASKS = re.compile(r"-(cls|seg|obb|pose|world|worldv2)\b|^yoloe")
#: The confidence at which a detection counts, unless calibration or a caller says otherwise.
DEFAULT_CONF = 0.25
#: The lowest threshold a detector may carry: clean-image references keep confidences down to it.
MIN_THRESHOLD = 0.01


class DetectorError(ValueError):
    """A detector cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class DetectorRecord:
    """``detector.json``: what the weights are and how to rebuild the network they fit."""

    model: str
    names: tuple[str, ...]
    imgsz: int
    sha256: str
    #: Per concept, the confidence at which a detection counts.
    thresholds: dict[str, float]
    scale: dict[str, Any] = field(default_factory=dict)
    #: What besides the shards the detector was trained and calibrated on (counts, content hashes).
    inputs: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the clean-image reference beside the weights, which false-positive rates are read
    #: from (absent in records written before it was recorded).
    clean_reference_sha256: str | None = None
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "names": list(self.names)}

    @classmethod
    def read(cls, path: Path) -> "DetectorRecord":
        try:
            data = read_json_object(path)
        except FileNotFoundError:
            raise DetectorError(f"{path}: missing; a detector is its weights and this record (train one with `implicit-concept detector train`)") from None
        except OSError as e:
            raise DetectorError(f"{path}: not a readable detector record ({e.strerror or e})") from None
        except ValueError as e:
            raise DetectorError(f"{e}; not a detector record") from None
        checks = {
            "format": data.get("format") == FORMAT,
            "model": is_model_yaml(data.get("model")),
            "names": isinstance(data.get("names"), list) and all(isinstance(n, str) for n in data["names"]),
            "imgsz": type(data.get("imgsz")) is int and 32 <= data["imgsz"] <= MAX_IMGSZ and data["imgsz"] % 32 == 0,
            "sha256": isinstance(data.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", data["sha256"]) is not None,
            "scale": isinstance(data.get("scale", {}), dict),
            "thresholds": _valid_thresholds(data.get("thresholds"), data.get("names")),
            "inputs": isinstance(data.get("inputs", {}), dict),
            "clean_reference_sha256": data.get("clean_reference_sha256") is None
            or (isinstance(data["clean_reference_sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", data["clean_reference_sha256"]) is not None),
        }
        wants = {
            "format": f"{FORMAT} (written by another version of implicit-concept)",
            "model": "the bare name of one of ultralytics' detection model YAMLs, such as yolov8n.yaml",
            "names": "a list of class names",
            "imgsz": f"a multiple of 32, from 32 to {MAX_IMGSZ}",
            "sha256": "64 hex digits",
            "scale": "a table",
            "thresholds": f"a number in [{MIN_THRESHOLD}, 1] per class name",
            "inputs": "a table",
            "clean_reference_sha256": "64 hex digits",
        }
        for name, ok in checks.items():
            if not ok:
                raise DetectorError(f"{path}: {name} = {data.get(name)!r}, want {wants[name]}")
        check_fields(data, cls.__dataclass_fields__, str(path), DetectorError)
        # The scale records what training used: a record edited to predict at another size (or build
        # another network) would score with weights and thresholds made for the first, under the same sha256.
        for name in ("model", "imgsz"):
            if name in data.get("scale", {}) and data["scale"][name] != data[name]:
                raise DetectorError(f"{path}: {name} = {data[name]!r} disagrees with scale.{name} = {data['scale'][name]!r}, what the "
                                    "detector was trained with (its weights and thresholds are for that): restore the record or train again")
        thresholds = {n: float(data["thresholds"][n]) for n in data["names"]} if "thresholds" in data else dict.fromkeys(data["names"], DEFAULT_CONF)
        return cls(**{**data, "names": tuple(data["names"]), "thresholds": thresholds})


def is_model_yaml(name: Any) -> bool:
    """Whether ``name`` is a detection model YAML this ultralytics ships, as it resolves one
    (``yolov8n.yaml`` is ``yolov8.yaml`` at scale n): a typo fails here, not after a dataset export.
    The package's files are searched without importing it (the import has side effects)."""
    if not _is_model_name(name):
        return False
    if _package_models() is None:
        return True  # the import will say ultralytics is missing, more plainly than this check could
    try:
        model_yaml(name)
    except DetectorError:
        return False
    return True


def model_yaml(name: str) -> Path:
    """The file in ultralytics' own ``cfg/models`` that the bare model name ``name`` stands for:
    ``name`` itself where the package ships it, else its unscaled form (``yolov8n.yaml`` is
    ``yolov8.yaml`` at scale n), as ultralytics resolves it. The only file a network is built from.

    ultralytics, handed the bare name, looks for it (and for the unscaled name) in the current
    folder first, and eval()s the ``activation`` of the YAML it finds: a ``yolov8n.yaml`` in the
    folder a command runs from would run its code. So ultralytics is never handed the name, only
    this absolute path or the description read from it
    (:func:`implicit_concept.detector.inference.model_config`).
    """
    if not _is_model_name(name):
        raise DetectorError(f"{name!r}: not the bare name of one of ultralytics' detection model YAMLs, such as yolov8n.yaml")
    models = _package_models()
    if models is None:
        raise DetectorError(f"{name}: ultralytics is not installed, so its model YAMLs cannot be found")
    stem = name.removesuffix(".yaml")
    for candidate in dict.fromkeys((name, re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", stem) + ".yaml")):
        found = sorted(p for p in models.rglob(candidate) if p.is_file())
        if len(found) > 1:
            raise DetectorError(f"{name}: ultralytics ships {len(found)} files named {candidate} ({', '.join(map(str, found))}); name one that is unique")
        if found:
            return found[0].resolve()
    raise DetectorError(f"{name}: not one of the detection model YAMLs ultralytics ships in {models}")


def _is_model_name(name: Any) -> bool:
    """A bare ``yolo*.yaml`` name (no folder, so no file of someone else's) of a detection model."""
    return isinstance(name, str) and MODEL_YAML.fullmatch(name) is not None and not OTHER_TASKS.search(name)


def _package_models() -> Path | None:
    """ultralytics' ``cfg/models``, found without importing the package; None when it is not installed."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "cfg" / "models"


def _valid_thresholds(thresholds: Any, names: Any) -> bool:
    """Absent (an older record), or one number in [MIN_THRESHOLD, 1] for each class name."""
    if thresholds is None:
        return True
    return (
        isinstance(thresholds, dict)
        and isinstance(names, list)
        and set(thresholds) == set(names)
        and all(type(t) in (int, float) and MIN_THRESHOLD <= t <= 1 for t in thresholds.values())
    )


def weights_path(path: str | Path) -> Path:
    """The weights file ``path`` names: the file itself, or ``detector.safetensors`` in a folder."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise DetectorError(
            f"{path}: a {path.suffix} file is a pickle, and loading one runs any code it holds; it is never opened. "
            f"Pass the folder `implicit-concept detector train` wrote, or its {WEIGHTS_NAME}"
        )
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            legacy = " (a detector.pt there is a pickle and is never loaded: train the detector again)" if (path / "detector.pt").exists() else ""
            raise DetectorError(f"{path}: no {WEIGHTS_NAME} and {RECORD_NAME}{legacy}; train one with `implicit-concept detector train`")
        return weights
    if path.suffix != ".safetensors":
        raise DetectorError(f"{path}: not a detector (want the folder `implicit-concept detector train` wrote, or its {WEIGHTS_NAME})")
    if not path.is_file():
        raise DetectorError(f"{path}: no such detector weights file (train one with `implicit-concept detector train`)")
    return path


def record_path(weights: Path) -> Path:
    """``detector.json`` beside ``detector.safetensors`` (``x.json`` beside ``x.safetensors``)."""
    return weights.with_suffix(".json")


def read_detector(path: str | Path) -> tuple[Path, DetectorRecord, dict[str, torch.Tensor]]:
    """The weights file, its record and its tensors (on the CPU), once the recorded sha256 matches.
    A folder a training is writing (it holds the folder's lock) is refused, naming that training:
    its record is removed while it runs, and its weights are replaced at the end."""
    _check_not_training(Path(path) if Path(path).is_dir() else Path(path).parent)
    weights = weights_path(path)
    record = DetectorRecord.read(record_path(weights))
    if (size := weights.stat().st_size) > MAX_WEIGHTS_BYTES:
        raise DetectorError(f"{weights}: {size} bytes, more than any detector's weights ({MAX_WEIGHTS_BYTES}); not read")
    actual = sha256_file(weights)
    if actual != record.sha256:
        raise DetectorError(
            f"{weights}: sha256 {actual} does not match {record.sha256} recorded in {record_path(weights).name}: "
            "the weights changed after training; restore them or train again"
        )
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise DetectorError(f"{weights}: not a readable safetensors file ({e})") from None
    if (bad := non_finite(state.items())) is not None:
        raise DetectorError(f"{weights}: tensor {bad} holds NaN or infinite values; a detector with them finds nothing, "
                            "which would read as a perfect erasure. Train it again")
    return weights, record, state


def _check_not_training(folder: Path) -> None:
    """Refuse ``folder`` while a training holds its lock (:func:`~implicit_concept.detector.training.train_detector`)."""
    with read_locked(folder, wait=False) as training:
        if training is not None:
            raise DetectorError(f"{folder}: a detector training is writing it now (pid {training} holds its lock {LOCK_NAME}); "
                                "use it once the training has finished")


def weights_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s tensors as ultralytics writes them into a checkpoint: floats in fp16, overflow clamped."""
    state = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu", copy=True)
        if tensor.is_floating_point():
            tensor = torch.nan_to_num(tensor.half())
        state[name] = tensor.contiguous()
    return state


def write_detector(
    folder: Path,
    state: dict[str, torch.Tensor],
    model: str,
    names: tuple[str, ...],
    imgsz: int,
    scale: dict[str, Any],
    thresholds: dict[str, float],
    inputs: dict[str, Any] | None = None,
    clean_reference_sha256: str | None = None,
) -> Path:
    """Write ``state`` (from :func:`weights_state` of a ``model`` network) into ``folder``; return the weights file.

    The weights are written first and the record, holding their sha256, last: a folder with a
    record holds a complete detector, and a reader checks the weights against it.
    """
    if set(thresholds) != set(names) or not all(MIN_THRESHOLD <= t <= 1 for t in thresholds.values()):
        raise DetectorError(f"{folder}: thresholds {thresholds} want a number in [{MIN_THRESHOLD}, 1] for each of {list(names)}")
    weights = Path(folder) / WEIGHTS_NAME
    atomic_write_bytes(weights, save(state))
    record = DetectorRecord(
        model=model, names=tuple(names), imgsz=imgsz, sha256=sha256_file(weights), scale=scale,
        thresholds={n: float(thresholds[n]) for n in names}, inputs=inputs or {}, clean_reference_sha256=clean_reference_sha256,
    )
    atomic_write_json(record_path(weights), record.to_json())
    return weights
