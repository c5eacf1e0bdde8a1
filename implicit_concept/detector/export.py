"""ICD shards -> the formats detection tools read: a YOLO dataset and COCO JSON.

The export is a pure function of the shards. It is written into a temporary folder and renamed
into place, and a marker records every shard's sha256, the validation share and a digest of every
file the export wrote, so rerunning it on unchanged inputs costs one hash per tar and per exported
file, an export whose labels or images were edited or deleted since is rebuilt, not trained on, and a
crash never leaves half a dataset behind. A reused export is cleared of the ``labels/*.cache`` files
ultralytics may have left in it (pickles; ours never reads or writes one, see
:mod:`implicit_concept.detector.yolo_env`).

Three splits, so that nothing is chosen on the split that is reported: the ICD ``train`` split is
divided by a hash of each sample's key into YOLO's ``train`` (what the detector fits) and ``val``
(what epochs and thresholds may be chosen on); the ICD ``test`` split (unseen fonts, logos,
payloads, words) becomes YOLO's ``test``, only ever reported. YOLO class ids follow
``CONCEPT_NAMES``; COCO category ids are those plus one (COCO reserves 0).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.content_hashes import folder_sha256, sha256_file
from implicit_concept.files import atomic_dir, check_apart, remove_dead_writers_temporaries
from implicit_concept.image_decode import decode_rgb, open_image
from implicit_concept.json_records import json_text, read_json_object_or_none
from implicit_concept.progress import progress_bar
from implicit_concept.provenance import environment
from implicit_concept.sample import SampleMeta, key_hash
from implicit_concept.sample_error import SampleError
from implicit_concept.shard_reader import ShardError, iter_tar_members, list_shards, read_meta

#: Bump when the exported layout changes, so old exports are rebuilt.
EXPORT_FORMAT = 3
#: YOLO: ``data.yaml`` + ``labels/<split>/KEY.txt``; COCO: ``annotations/<split>.json``. Images are shared.
FORMATS = ("yolo", "coco")
#: YOLO split -> the ICD split its samples come from: fit and validation share ICD's train split.
SPLITS = {"train": "train", "val": "train", "test": "test"}
MARKER = "export.json"
#: A sample key that names a file in the export: no folder, no leading dot.
_SAFE_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
#: The share of ICD's train split held out for validation unless a caller says otherwise.
DEFAULT_VALIDATION_SHARE = 0.1


def in_validation(key: str, share: float) -> bool:
    """Whether sample ``key`` is held out for validation: a hash of the key alone, so the split is the
    same on every machine, in any shard order, and a sample never moves when others are added (a key
    that is not UTF-8 text raises, as it always has)."""
    return key_hash(key, errors="strict") < share * 2**64


@dataclass(frozen=True)
class DetectionDataset:
    """Where an export lives; ``data_yaml`` is what ``YOLO.train(data=...)`` takes."""

    root: Path
    data_yaml: Path | None
    coco: dict[str, Path]
    counts: dict[str, dict[str, int]]
    shards_sha256: dict[str, str]


def _yolo_label_line(class_id: int, box: list[int], width: int, height: int) -> str:
    """``class cx cy w h``, normalised, 8 decimals: exact after rounding back for any side < 10^7."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{class_id} {cx:.8f} {cy:.8f} {w:.8f} {h:.8f}"


def export_detection_dataset(
    shards: str | Path,
    out: str | Path,
    formats: tuple[str, ...] = FORMATS,
    progress: bool = False,
    validation_share: float = DEFAULT_VALIDATION_SHARE,
) -> DetectionDataset:
    """Export ``shards`` (a folder holding ``train/`` and ``test/`` shard sets) into ``out``, in
    ``formats``, ``validation_share`` of the train split (by :func:`in_validation`) as validation."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"export formats must be some of {FORMATS}, got {list(formats)}")
    if not 0 < validation_share < 1:
        raise ValueError(f"validation_share = {validation_share!r}, want a share in (0, 1)")
    formats = tuple(f for f in FORMATS if f in formats)
    shards, out = Path(shards), Path(out).resolve()
    check_apart(out, "export --out", {"the shards": shards})
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        why = f"its {MARKER} was not written by export" if (out / MARKER).exists() else f"no {MARKER}"
        raise ValueError(f"export --out {out}: a folder that is not an export ({why}) and not empty; "
                         "an export replaces its folder, so name a new or empty one")
    icd_shards = {split: list_shards(_split_dir(shards, split)) for split in dict.fromkeys(SPLITS.values())}
    hashes = {str(p.relative_to(shards)): sha256_file(p) for ps in icd_shards.values() for p in ps}
    remove_dead_writers_temporaries(out)  # a killed export's, even where this one reuses the folder
    marker = read_json_object_or_none(out / MARKER) or {}
    inputs = {"format": EXPORT_FORMAT, "formats": list(formats), "shards_sha256": hashes, "validation_share": validation_share}
    if all(marker.get(k) == v for k, v in inputs.items()):
        for label_cache in (out / "labels").glob("*.cache"):
            label_cache.unlink()
        if marker.get("files_sha256") == _files_digest(out):
            return _dataset(out, marker)

    keep = {
        "train": lambda key: not in_validation(key, validation_share),
        "val": lambda key: in_validation(key, validation_share),
        "test": lambda key: True,
    }
    with atomic_dir(out, replace_existing=True) as tmp:
        with progress_bar(total=sum(len(icd_shards[s]) for s in SPLITS.values()), desc=f"export {shards.name}", unit="shard", progress=progress) as bar:
            build: dict[str, Any] = {}
            counts = {split: _write_split(icd_shards[icd], tmp, split, icd, formats, keep[split], bar.update, build) for split, icd in SPLITS.items()}
        if "yolo" in formats:
            names = dict(enumerate(CONCEPT_NAMES))
            # No ``path``: ultralytics then reads the splits beside this file, so an export is the same
            # bytes (and ``files_sha256``) wherever it is written, and still trains once moved.
            data = {**{split: f"images/{split}" for split in SPLITS}, "nc": len(names), "names": names}
            (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        marker = {**inputs, "source": str(shards.resolve()), "counts": counts, "files_sha256": _files_digest(tmp),
                  "environment": environment()}
        (tmp / MARKER).write_text(json_text(marker), encoding="utf-8")
    return _dataset(out, marker)


def _files_digest(root: Path) -> str:
    """The content of every file of an export but its marker (:func:`folder_sha256`): a file added,
    removed, renamed or edited changes it."""
    return folder_sha256(root, only=sorted(p.name for p in root.iterdir() if p.name != MARKER))


def _split_dir(shards: Path, split: str) -> Path:
    path = shards / split
    if not path.is_dir():
        raise ShardError(f"{shards}: no {split}/ folder (expected a subset folder such as icd-mixed with train/ and test/)")
    return path


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds a record :func:`export_detection_dataset` wrote, of any format
    version: only then is it an export to replace. Another tool's ``export.json``, or one damaged,
    says nothing of the files beside it."""
    record = read_json_object_or_none(folder / MARKER) or {}
    return isinstance(record.get("format"), int) and isinstance(record.get("shards_sha256"), dict)


def _dataset(root: Path, marker: dict[str, Any]) -> DetectionDataset:
    return DetectionDataset(
        root=root,
        data_yaml=root / "data.yaml" if "yolo" in marker["formats"] else None,
        coco={split: root / "annotations" / f"{split}.json" for split in SPLITS} if "coco" in marker["formats"] else {},
        counts=marker["counts"],
        shards_sha256=marker["shards_sha256"],
    )


def _check_image(jpg: bytes, meta: SampleMeta, where: str) -> None:
    """Decode the bytes about to be copied: ultralytics skips an image it cannot read with a warning
    (trained without, or an export that is silently short), and labels are normalised by the
    KEY.json's size, so an image of another size would be labelled wrong."""
    try:
        size = decode_rgb(open_image(jpg), orient=False).size
    except SampleError as e:
        raise ShardError(f"{where}: image not decoded ({e})") from None
    if size != (meta.width, meta.height):
        raise ShardError(f"{where}: the image is {size[0]}x{size[1]}, its KEY.json says {meta.width}x{meta.height}")


def _same_build(meta: SampleMeta, icd_split: str, build: dict[str, Any], where: str) -> None:
    """A sample in the ICD split its KEY.json names, from the build every other sample came from:
    a test shard copied into ``train/`` would be fitted on and then reported as unseen, and a shard of
    another recipe left in the folder makes the detector's record name data it was not trained on."""
    if meta.split != icd_split:
        raise ShardError(f"{where}: KEY.json says split {meta.split!r}, the shard is in {icd_split}/ "
                         "(a shard copied into the wrong split would be trained or reported on as the other)")
    recipe = (meta.recipe, meta.recipe_sha256)
    first = build.setdefault("recipe", (recipe, where))
    if first[0] != recipe:
        raise ShardError(f"{where}: built by recipe {meta.recipe!r} (sha256 {meta.recipe_sha256}), {first[1]} by "
                         f"{first[0][0]!r} (sha256 {first[0][1]}): the shards of one export come from one build")
    # Another release draws other pixels and boxes for the same recipe: one export, one release's rules.
    release = (meta.version, meta.schema)
    first = build.setdefault("release", (release, where))
    if first[0] != release:
        raise ShardError(f"{where}: written by implicit-concept {meta.version} (KEY.json schema {meta.schema}), {first[1]} by "
                         f"{first[0][0]} (schema {first[0][1]}): the shards of one export come from one build")


def _write_split(
    shards: list[Path], root: Path, split: str, icd_split: str, formats: tuple[str, ...], keep: Callable[[str], bool],
    done: Callable[[int], Any], build: dict[str, Any],
) -> dict[str, int]:
    """Copy the JPEG bytes of the samples whose key ``keep`` accepts unchanged; for YOLO one label
    file per image (empty for clean images), for COCO one annotation file per split."""
    images_dir, labels_dir, ann_dir = root / "images" / split, root / "labels" / split, root / "annotations"
    for d in (images_dir, labels_dir if "yolo" in formats else None, ann_dir if "coco" in formats else None):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "implicit_concept"} for i, name in enumerate(CONCEPT_NAMES)]
    # pycocotools 2.0.9 and 2.0.10 (the test extra pins 2.0.10) copy ``info`` in loadRes, and tools read ``licenses``: both present, both fixed.
    info = {"description": f"Implicit Concept Dataset, {split} split", "version": str(EXPORT_FORMAT), "url": "", "contributor": "", "year": 0, "date_created": ""}
    coco: dict[str, Any] = {"info": info, "licenses": [], "images": [], "annotations": [], "categories": categories}
    counts = {"images": 0, "contaminated": 0, **{c: 0 for c in CONCEPT_NAMES}}
    for shard in shards:
        for key, members in iter_tar_members(shard):
            if not keep(key):
                continue
            if "jpg" not in members or "json" not in members:
                raise ShardError(f"{shard}: sample {key} lacks its jpg or json member")
            if not _SAFE_KEY.fullmatch(key):  # it names files: a key from a tar must not leave the export
                raise ShardError(f"{shard}: sample key {key!r} is not a plain file name (letters, digits, '_', '-', '.')")
            meta = read_meta(shard, key, members)
            _same_build(meta, icd_split, build, f"{shard}: sample {key}")
            _check_image(members["jpg"], meta, f"{shard}: sample {key}")
            name = f"{key}.jpg"
            if (images_dir / name).exists():
                raise ShardError(f"{shard}: sample key {key} appears twice in the {split} split")
            (images_dir / name).write_bytes(members["jpg"])
            lines = []
            image_id = len(coco["images"]) + 1
            coco["images"].append({"id": image_id, "file_name": name, "width": meta.width, "height": meta.height})
            for inst in meta.instances:
                class_id = CONCEPT_NAMES.index(inst.concept)  # read_meta refused any other name
                lines.append(_yolo_label_line(class_id, inst.box.as_list(), meta.width, meta.height))
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": class_id + 1,
                        "bbox": [inst.box.x1, inst.box.y1, inst.box.width, inst.box.height],
                        "area": inst.box.area,
                        "iscrowd": 0,
                    }
                )
                counts[inst.concept] += 1
            if "yolo" in formats:
                (labels_dir / f"{key}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            counts["images"] += 1
            counts["contaminated"] += bool(meta.instances)
        done(1)
    if "coco" in formats:
        (ann_dir / f"{split}.json").write_text(json.dumps(coco) + "\n", encoding="utf-8")
    return counts

