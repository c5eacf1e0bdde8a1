"""The models the project publishes in the repository: the tiny track's evaluator and base model.

A fresh clone then skips both trainings (about an hour on 2 cores), and every lab scores with the
same detector: ICRs from two labs are comparable only if the evaluator is. Each published model is
found by the identity the benchmark would cache it under (its inputs, by content), so it stands in
only where training would have made it. Its files are safetensors and JSON (nothing is unpickled),
and each file is checked against the sha256 recorded beside it before use.

``benchmark/published/base-<config>/``: the base's UNet and text encoder in fp16 and ``base.json``
(config, training record, files' sha256); materialised once into the cache as a full fp32 pipeline.
``benchmark/published/detector-<identity>/``: the detector's folder as training wrote it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from benchmark.models.base_model import BASE_FILE, BaseModelConfig
from benchmark.models.pipelines import build_tiny_pipeline, load_pipeline, save_portable_pipeline
from implicit_concept.detector.weights import RECORD_NAME
from implicit_concept.files import atomic_dir, atomic_write_json, sha256_file

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
#: The parts of a tiny pipeline that hold weights; the rest is rebuilt from the config.
BASE_PARTS = ("unet", "text_encoder")
IDENTITY_FILE = "identity.json"


class PublishedModelError(ValueError):
    """A published model's files do not match their record; the message names the file."""


def published_base(config: BaseModelConfig, root: Path = PUBLISHED_DIR) -> Path | None:
    """The published folder of the base ``config`` trains, or None."""
    folder = root / f"base-{config.sha256[:16]}"
    return folder if (folder / BASE_FILE).is_file() else None


def publish_base(pipeline_dir: Path, config: BaseModelConfig, record: dict[str, Any], root: Path = PUBLISHED_DIR) -> Path:
    """Write the trained base at ``pipeline_dir`` as its weights in fp16 and a record."""
    pipe = load_pipeline(pipeline_dir)
    with atomic_dir(root / f"base-{config.sha256[:16]}", replace_existing=True) as tmp:
        files = {}
        for part in BASE_PARTS:
            state = {k: v.detach().to(torch.float16).contiguous() for k, v in getattr(pipe, part).state_dict().items()}
            save_file(state, str(tmp / f"{part}.safetensors"))
            files[f"{part}.safetensors"] = sha256_file(tmp / f"{part}.safetensors")
        atomic_write_json(tmp / BASE_FILE, {**record, "config": config.to_dict(), "sha256": config.sha256, "files": files, "dtype": "float16"})
    return root / f"base-{config.sha256[:16]}"


def materialize_base(published: Path, config: BaseModelConfig, cache_root: Path) -> Path:
    """The published base as a full fp32 pipeline folder in the cache (made once, checked first)."""
    record = _checked_record(published / BASE_FILE, published)
    if record.get("sha256") != config.sha256:
        raise PublishedModelError(f"{published / BASE_FILE}: made by base config {record.get('sha256')}, not {config.sha256}")
    out = Path(cache_root) / f"published-{config.sha256[:16]}-{record['files']['unet.safetensors'][:16]}"
    final = out / "pipeline"
    if (final / "model_index.json").is_file():
        return final
    pipe = build_tiny_pipeline(config.pipeline, Path(cache_root) / "tokenizer", seed=config.seed)
    for part in BASE_PARTS:
        state = {k: v.to(torch.float32) for k, v in load_file(str(published / f"{part}.safetensors")).items()}
        getattr(pipe, part).load_state_dict(state, strict=True)
    with atomic_dir(final) as tmp:
        save_portable_pipeline(pipe, tmp)
    return final


def published_detector(identity: dict[str, Any], root: Path = PUBLISHED_DIR) -> Path | None:
    """The published detector folder trained from exactly ``identity``'s inputs, checked, or None."""
    for folder in sorted(root.glob("detector-*")):
        record = folder / IDENTITY_FILE
        if record.is_file() and json.loads(record.read_text(encoding="utf-8")).get("identity") == identity:
            _checked_record(record, folder)
            return folder
    return None


def default_detector(track: str = "tiny", root: Path = PUBLISHED_DIR) -> Path:
    """The evaluator the repository publishes for ``track``: what scoring commands use unless told otherwise."""
    folder = root / f"detector-{track}"
    if not (folder / IDENTITY_FILE).is_file():
        known = ", ".join(sorted(p.name.removeprefix("detector-") for p in root.glob("detector-*"))) or "none"
        raise PublishedModelError(f"{folder}: no published detector for track {track!r} (published: {known}); pass --detector")
    _checked_record(folder / IDENTITY_FILE, folder)
    return folder


def publish_detector(detector_dir: Path, identity: dict[str, Any], name: str, root: Path = PUBLISHED_DIR) -> Path:
    """Copy a trained detector's files (weights, record, metrics, clean reference, plots) into the repository."""
    from implicit_concept.detector.training import METRICS_NAME
    from implicit_concept.scoring import CLEAN_REFERENCE_NAME

    keep = ["detector.safetensors", RECORD_NAME, METRICS_NAME, CLEAN_REFERENCE_NAME, "pr_curve.png", "confusion_matrix.png"]
    with atomic_dir(root / f"detector-{name}", replace_existing=True) as tmp:
        files = {}
        for name_ in keep:
            if (detector_dir / name_).is_file():
                shutil.copyfile(detector_dir / name_, tmp / name_)
                files[name_] = sha256_file(tmp / name_)
        atomic_write_json(tmp / IDENTITY_FILE, {"identity": identity, "files": files})
    return root / f"detector-{name}"


def is_published(path: Path, root: Path = PUBLISHED_DIR) -> bool:
    """Whether ``path`` lies in the repository's published models (what a report says of its evaluator)."""
    return Path(path).resolve().is_relative_to(root.resolve())


def _checked_record(record_file: Path, folder: Path) -> dict[str, Any]:
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        files = record["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PublishedModelError(f"{record_file}: not a readable published-model record ({e})") from None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise PublishedModelError(f"{path}: missing (listed in {record_file.name})")
        if sha256_file(path) != digest:
            raise PublishedModelError(f"{path}: sha256 {sha256_file(path)} does not match {digest} recorded in {record_file.name}")
    return record
