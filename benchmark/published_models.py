"""The models the project publishes in the repository: the tiny track's evaluator and base model.

A fresh clone then skips both trainings (about an hour on 2 cores), and every lab scores with the
same detector: ICRs from two labs are comparable only if the evaluator is. Each published model is
found by the identity the benchmark would cache it under (its inputs, by content), so it stands in
only where training would have made it. Its files are safetensors and JSON (nothing is unpickled).

Trust runs from the code down: :data:`PINNED_RECORDS` holds the sha256 of each published record, the
record holds the sha256 of its files, and every file a model is loaded from (:data:`REQUIRED_FILES`)
must be listed there and match before use. A record that is not pinned, was edited, or leaves out a
required file is refused, naming the record and the file.

``benchmark/published/base-<config>/``: the base's UNet and text encoder in fp16 and ``base.json``
(config, training record, files' sha256); materialised once into the cache as a full fp32 pipeline,
with the sha256 of the files written there (``materialized.json``), checked on every reuse.
``benchmark/published/detector-<identity>/``: the detector's folder as training wrote it.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from benchmark.models.base_model import BASE_FILE, BaseModelConfig
from benchmark.models.pipelines import build_tiny_pipeline, load_pipeline, save_portable_pipeline
from implicit_concept.content_hashes import folder_sha256, sha256_file
from implicit_concept.detector.weights import RECORD_NAME, WEIGHTS_NAME
from implicit_concept.disk_space import writing
from implicit_concept.file_locks import locked
from implicit_concept.files import atomic_dir, atomic_write_json
from implicit_concept.json_records import read_json_object

log = logging.getLogger(__name__)

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
#: The parts of a tiny pipeline that hold weights; the rest is rebuilt from the config.
BASE_PARTS = ("unet", "text_encoder")
IDENTITY_FILE = "identity.json"
#: Beside a materialised base in the cache: the sha256 of every file written there.
MATERIALIZED_FILE = "materialized.json"

#: By record name (which names the kind of model): the files loading that model reads, each of which
#: its record must list with a matching sha256. A record is never trusted for fewer files.
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    BASE_FILE: tuple(f"{part}.safetensors" for part in BASE_PARTS),
    IDENTITY_FILE: (WEIGHTS_NAME, RECORD_NAME, "clean_reference.json"),  # implicit_concept.scoring.CLEAN_REFERENCE_NAME
}

#: The root of trust: the sha256 of each record in ``benchmark/published/``, by its path there. A
#: published model whose record is not pinned here, or differs, is refused. ``implicit-concept
#: publish`` prints the lines to put here; tests/test_published_models.py fails until they are.
PINNED_RECORDS: dict[str, str] = {
    "base-6f91de662c983034/base.json": "a69d757cb2b245b0510930142ae6b9c7ccd751c1dfd79548b92119a2d1f83e0e",
    "detector-tiny/identity.json": "b05d0171222ad7734098295c54c487656c572fb9b74a87d386bb8679b6b41f9b",
}

#: Records :func:`publish_base` and :func:`publish_detector` wrote in this process (path -> sha256):
#: ``publish`` goes on to use what it just published, before a maintainer has pinned it.
_published_here: dict[str, str] = {}


class PublishedModelError(ValueError):
    """A published model's files do not match their record; the message names the file."""


def published_base(config: BaseModelConfig, root: Path = PUBLISHED_DIR) -> Path | None:
    """The published folder of the base ``config`` trains, or None."""
    folder = root / f"base-{config.sha256[:16]}"
    return folder if (folder / BASE_FILE).is_file() else None


def publish_base(pipeline_dir: Path, config: BaseModelConfig, record: dict[str, Any], root: Path = PUBLISHED_DIR) -> Path:
    """Write the trained base at ``pipeline_dir`` as its weights in fp16 and a record (to pin: :func:`pin_line`)."""
    pipe = load_pipeline(pipeline_dir)
    with atomic_dir(root / f"base-{config.sha256[:16]}", replace_existing=True) as tmp:
        files = {}
        for part in BASE_PARTS:
            state = {k: v.detach().to(torch.float16).contiguous() for k, v in getattr(pipe, part).state_dict().items()}
            with writing(tmp / f"{part}.safetensors"):
                save_file(state, str(tmp / f"{part}.safetensors"))
            files[f"{part}.safetensors"] = sha256_file(tmp / f"{part}.safetensors")
        atomic_write_json(tmp / BASE_FILE, {**record, "config": config.to_dict(), "sha256": config.sha256, "files": files, "dtype": "float16"})
    folder = root / f"base-{config.sha256[:16]}"
    _published_here[str((folder / BASE_FILE).resolve())] = sha256_file(folder / BASE_FILE)
    return folder


def materialize_base(published: Path, config: BaseModelConfig, cache_root: Path) -> Path:
    """The published base as a full fp32 pipeline folder in the cache (made once, checked first).

    The copy is a cache entry: ``materialized.json`` beside it holds the sha256 of every file written
    and of the published files it was made from; a copy that no longer matches is made again.
    """
    record = _checked_record(published / BASE_FILE, published)
    if record.get("sha256") != config.sha256:
        raise PublishedModelError(f"{published / BASE_FILE}: made by base config {record.get('sha256')}, not {config.sha256}")
    out = Path(cache_root) / f"published-{config.sha256[:16]}-{record['files']['unet.safetensors'][:16]}"
    final, made = out / "pipeline", out / MATERIALIZED_FILE
    with locked(final):
        stale = _materialized_stale(final, made, record["files"])
        if stale is None:
            return final
        if final.exists() or made.exists():
            log.warning("%s: %s; making the copy of %s again", final, stale, published)
        made.unlink(missing_ok=True)
        pipe = build_tiny_pipeline(config.pipeline, Path(cache_root) / "tokenizer", seed=config.seed)
        for part in BASE_PARTS:
            state = {k: v.to(torch.float32) for k, v in load_file(str(published / f"{part}.safetensors")).items()}
            getattr(pipe, part).load_state_dict(state, strict=True)
        with atomic_dir(final, replace_existing=True) as tmp:
            save_portable_pipeline(pipe, tmp)
        atomic_write_json(made, {"published": record["files"], "sha256": folder_sha256(final)})
    return final


def published_detector(identity: dict[str, Any], root: Path = PUBLISHED_DIR) -> Path | None:
    """The published detector folder trained from exactly ``identity``'s inputs, checked, or None."""
    for folder in sorted(root.glob("detector-*")):
        record = folder / IDENTITY_FILE
        try:
            found = record.is_file() and read_json_object(record).get("identity")
        except ValueError as e:
            raise PublishedModelError(f"{record}: not a readable published-model record ({e})") from None
        if found == identity:
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
    """Copy a trained detector's files (weights, record, metrics, clean reference, plots) into the
    repository (to pin: :func:`pin_line`); those :data:`REQUIRED_FILES` names must all be there."""
    from implicit_concept.detector.training import METRICS_NAME
    from implicit_concept.scoring import CLEAN_REFERENCE_NAME

    required = REQUIRED_FILES[IDENTITY_FILE]
    for name_ in required:
        if not (detector_dir / name_).is_file():
            raise PublishedModelError(f"{detector_dir / name_}: missing; a published detector needs {', '.join(required)}")
    keep = [*required, METRICS_NAME, CLEAN_REFERENCE_NAME, "pr_curve.png", "confusion_matrix.png"]
    with atomic_dir(root / f"detector-{name}", replace_existing=True) as tmp:
        files = {}
        for name_ in dict.fromkeys(keep):
            if (detector_dir / name_).is_file():
                shutil.copyfile(detector_dir / name_, tmp / name_)
                files[name_] = sha256_file(tmp / name_)
        atomic_write_json(tmp / IDENTITY_FILE, {"identity": identity, "files": files})
    folder = root / f"detector-{name}"
    _published_here[str((folder / IDENTITY_FILE).resolve())] = sha256_file(folder / IDENTITY_FILE)
    return folder


def record_file(folder: Path) -> Path:
    """The record of a published model's folder: ``base.json`` for ``base-*``, ``identity.json`` for ``detector-*``."""
    folder = Path(folder)
    for prefix, name in (("base-", BASE_FILE), ("detector-", IDENTITY_FILE)):
        if folder.name.startswith(prefix):
            return folder / name
    raise PublishedModelError(f"{folder}: not a published model's folder (base-* or detector-*)")


def pin_line(folder: Path) -> str:
    """The line of :data:`PINNED_RECORDS` that trusts the record of the published ``folder`` as it is now."""
    record = record_file(folder)
    return f'    "{Path(folder).name}/{record.name}": "{sha256_file(record)}",'


def is_published(path: Path) -> bool:
    """Whether ``path`` lies in the repository's published models (what a report says of its evaluator)."""
    return Path(path).resolve().is_relative_to(PUBLISHED_DIR.resolve())


def _pinned_key(record_file: Path) -> str | None:
    """The record's path under :data:`PUBLISHED_DIR` (as written, or with links resolved), or None
    when it lies elsewhere (a folder a test or a maintainer's staging publishes into)."""
    root = PUBLISHED_DIR.resolve()
    for path in (Path(os.path.abspath(record_file)), Path(record_file).resolve()):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return None


def _check_pinned(record_file: Path) -> None:
    key = _pinned_key(record_file)
    if key is None:
        return
    digest = sha256_file(record_file)
    pinned = PINNED_RECORDS.get(key)
    if digest == pinned or digest == _published_here.get(str(Path(record_file).resolve())):
        return
    if pinned is None:
        raise PublishedModelError(
            f"{record_file}: not pinned in benchmark/published_models.py PINNED_RECORDS (its sha256 is {digest}); "
            "a published model is trusted only once its record is pinned there")
    raise PublishedModelError(
        f"{record_file}: sha256 {digest} does not match {pinned} pinned in benchmark/published_models.py "
        "PINNED_RECORDS; the record changed after it was published")


def _checked_record(record_file: Path, folder: Path) -> dict[str, Any]:
    """The record, once it is pinned (when in :data:`PUBLISHED_DIR`), lists every required file and
    every file it lists matches its sha256."""
    if not record_file.is_file():
        raise PublishedModelError(f"{record_file}: missing (the record of a published model)")
    _check_pinned(record_file)
    try:
        record = read_json_object(record_file)
    except (OSError, ValueError) as e:
        raise PublishedModelError(f"{record_file}: not a readable published-model record ({e})") from None
    files = record.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise PublishedModelError(f"{record_file}: not a readable published-model record (no 'files' mapping each file name to its sha256)")
    for name in REQUIRED_FILES.get(record_file.name, ()):
        if name not in files:
            raise PublishedModelError(f"{folder / name}: not listed in {record_file}; every published model's record lists it with its sha256")
    for name, digest in files.items():
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise PublishedModelError(f"{record_file}: lists {name!r}, not a file name in {folder}")
        path = folder / name
        if not path.is_file():
            raise PublishedModelError(f"{path}: missing (listed in {record_file})")
        actual = sha256_file(path)
        if actual != digest:
            raise PublishedModelError(f"{path}: sha256 {actual} does not match {digest} recorded in {record_file}")
    return record


def _materialized_stale(final: Path, made: Path, published_files: dict[str, str]) -> str | None:
    """Why the materialised copy ``final`` cannot be reused (None: it can): no record of what was
    written, made from other published files, or a file added, missing or changed since."""
    if not (final / "model_index.json").is_file():
        return "no copy"
    try:
        record = read_json_object(made)
    except (OSError, ValueError):
        return f"no readable {MATERIALIZED_FILE} beside it"
    if record.get("published") != published_files:
        return "made from other published files"
    if record.get("sha256") != folder_sha256(final):
        return f"its files differ from those it was written with ({MATERIALIZED_FILE}: a file added, missing or changed)"
    return None
