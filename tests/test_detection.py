"""Detector plumbing that needs no training: export, scoring statistics, box degradation, errors."""
import io
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import qrcode
import torch
import yaml
from PIL import Image

from benchmark.cli import main
from implicit_concept import image_stream
from implicit_concept.checkers import OpenCVQRChecker, available_checkers
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.export import DEFAULT_VALIDATION_SHARE, export_detection_dataset, in_validation
from implicit_concept.detector.inference import Detection, Detector, DetectorError
from implicit_concept.detector.training import DetectorScale, ScaleError, load_scale
from implicit_concept.geom_erasing.degraded_boxes import box_iou, degrade_box
from implicit_concept.image_stream import ImageReadError, iter_images, load_image
from implicit_concept.provenance import version
from implicit_concept.sample import Box, Instance, SampleMeta
from implicit_concept.scoring import ScoreConfig, score_images, share_ratio
from implicit_concept.shard_reader import iter_tar_members
from implicit_concept.shard_writer import TarShardWriter

#: (size, boxes) per sample: corners, edges, 1-px boxes, odd sizes and a non-square image.
SAMPLES = [
    ((64, 64), [("qrcode", (0, 0, 64, 64))]),
    ((64, 64), [("watermark", (3, 7, 4, 8)), ("text", (10, 11, 63, 29))]),
    ((64, 64), []),
    ((97, 61), [("text", (1, 2, 96, 60)), ("qrcode", (33, 17, 50, 34)), ("watermark", (0, 59, 97, 61))]),
]
#: Enough samples to train on: at the default share, validation holds tr0003 and tr0006 (a clean image).
TRAINABLE = SAMPLES * 2


def _jpeg(size, colour=(40, 90, 160)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _write_shards(root, samples=SAMPLES, jpeg=_jpeg):
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        with TarShardWriter(root / split / "00000.tar") as w:
            for i, (size, boxes) in enumerate(samples):
                key = f"{split[:2]}{i:04d}"
                meta = SampleMeta(
                    key=key, caption="a scene", width=size[0], height=size[1], split=split, subset="icd-mixed",
                    source={"kind": "test"}, instances=[Instance(c, Box(*b)) for c, b in boxes],
                    seed=[i], recipe="test", recipe_sha256="0", version="0",
                )
                w.write(key, {"jpg": jpeg(size), "json": json.dumps(meta.to_json()).encode()})
            w.close()
    return root


def test_export_round_trip_keeps_boxes_exact(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed")
    ds = export_detection_dataset(shards, tmp_path / "yolo")
    data = yaml.safe_load(ds.data_yaml.read_text())
    assert "path" not in data and "download" not in data, "the splits are read beside data.yaml, wherever it is"
    assert [data["names"][i] for i in range(3)] == list(CONCEPT_NAMES)
    assert (data["train"], data["val"], data["test"]) == ("images/train", "images/val", "images/test")
    held_out = [in_validation(f"tr{i:04d}", DEFAULT_VALIDATION_SHARE) for i in range(len(SAMPLES))]
    assert held_out == [False, False, False, True], "the sample keys' hashes put tr0003 alone in validation"
    for split in ("train", "val", "test"):
        coco = json.loads(ds.coco[split].read_text())
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        for i, (size, boxes) in enumerate(SAMPLES):
            key = f"te{i:04d}" if split == "test" else f"tr{i:04d}"
            if split != "test" and held_out[i] != (split == "val"):
                assert not (ds.root / "images" / split / f"{key}.jpg").exists()
                continue
            assert Image.open(ds.root / "images" / split / f"{key}.jpg").size == size
            w, h = size
            from_yolo = []
            for line in (ds.root / "labels" / split / f"{key}.txt").read_text().splitlines():
                c, cx, cy, bw, bh = line.split()
                cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
                box = tuple(round(v) for v in (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
                from_yolo.append((CONCEPT_NAMES[int(c)], box))
            assert from_yolo == boxes
            image_id = next(im["id"] for im in coco["images"] if im["file_name"] == f"{key}.jpg")
            from_coco = [
                (categories[a["category_id"]], (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
                for a in coco["annotations"]
                if a["image_id"] == image_id
            ]
            assert from_coco == boxes
    assert ds.counts["test"] == {"images": 4, "contaminated": 3, "qrcode": 2, "watermark": 2, "text": 2}
    assert ds.counts["val"] == {"images": 1, "contaminated": 1, "qrcode": 1, "watermark": 1, "text": 1}


def test_export_is_skipped_when_shards_are_unchanged_and_redone_when_they_change(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed")
    first = export_detection_dataset(shards, tmp_path / "yolo")
    recorded = json.loads((first.root / "export.json").read_text())
    assert recorded["environment"]["packages"]["implicit-concept"] == version(), "what made it"
    label = first.root / "labels" / "train" / "tr0000.txt"
    stamp = label.stat().st_mtime_ns
    os.utime(label, ns=(stamp - 10**9, stamp - 10**9))
    export_detection_dataset(shards, tmp_path / "yolo")
    assert label.stat().st_mtime_ns == stamp - 10**9, "unchanged shards were exported again"
    _write_shards(tmp_path / "other", SAMPLES[:2])
    for split in ("train", "test"):
        os.replace(tmp_path / "other" / split / "00000.tar", shards / split / "00000.tar")
    again = export_detection_dataset(shards, tmp_path / "yolo")
    assert again.counts["train"]["images"] == 2
    assert sorted(p.name for p in (again.root / "labels" / "train").iterdir()) == ["tr0000.txt", "tr0001.txt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


#: Exports ``argv[1]`` into ``argv[2]`` and is killed (SIGKILL) once it has removed half the files
#: of a folder it removes: where ``export`` replaces an earlier export.
_KILLED_WHILE_REMOVING = """
import os, signal, shutil, sys
from implicit_concept.detector.export import export_detection_dataset

def killed_halfway(path, *args, **kwargs):
    names = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    if not names:
        return real(path, *args, **kwargs)
    for name in names[: len(names) // 2]:
        os.unlink(name)
    os.kill(os.getpid(), signal.SIGKILL)

real, shutil.rmtree = shutil.rmtree, killed_halfway
export_detection_dataset(sys.argv[1], sys.argv[2])
"""


def test_an_export_killed_while_it_replaces_an_earlier_one_is_made_by_the_rerun(tmp_path):
    """``export`` (and ``detector train``, which exports first) replacing an earlier export of other
    shards removed the old folder in place: killed midway, it left a folder without export.json
    that every rerun refused as "not an export". The old folder is now renamed aside, and removed
    only once the new one is in place; the rerun drops what the killed process left aside."""
    import subprocess
    import sys

    shards = _write_shards(tmp_path / "icd-mixed")
    out = tmp_path / "yolo"
    export_detection_dataset(shards, out)
    _write_shards(tmp_path / "other", SAMPLES[:2])
    for split in ("train", "test"):
        os.replace(tmp_path / "other" / split / "00000.tar", shards / split / "00000.tar")
    repo = Path(__file__).resolve().parents[1]
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_REMOVING, str(shards), str(out)], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert (out / "export.json").is_file(), "the kill left a half-removed export under its name"
    again = export_detection_dataset(shards, out)
    assert again.counts["train"]["images"] == 2
    assert sorted(p.name for p in (out / "labels" / "train").iterdir()) == ["tr0000.txt", "tr0001.txt"]
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name], "the killed export's leftovers are kept"


def test_an_export_whose_files_were_edited_or_deleted_is_rebuilt_not_reused(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed")
    root = export_detection_dataset(shards, tmp_path / "yolo").root
    pristine = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    label = root / "labels" / "train" / "tr0000.txt"
    damages = [
        lambda: label.write_text(""),                                       # a box erased
        lambda: label.unlink(),                                             # a label deleted
        lambda: (root / "images" / "val" / "extra.jpg").write_bytes(b"x"),  # an image added
        lambda: (root / "annotations" / "test.json").write_text("{}"),      # COCO edited
    ]
    for damage in damages:
        damage()
        export_detection_dataset(shards, tmp_path / "yolo")
        assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == pristine


def test_export_names_a_missing_split(tmp_path):
    (tmp_path / "icd-mixed").mkdir()
    with pytest.raises(ValueError, match="icd-mixed: no train/ folder"):
        export_detection_dataset(tmp_path / "icd-mixed", tmp_path / "yolo")


def test_an_export_never_writes_outside_its_folder_nor_replaces_what_it_did_not_write(tmp_path):
    """Keys come from tars, which may be anyone's; --out may be any folder the user typed."""
    import tarfile

    shards = _write_shards(tmp_path / "icd-mixed")
    hostile = tmp_path / "hostile" / "icd-mixed"
    for split in ("train", "test"):
        (hostile / split).mkdir(parents=True)
        with tarfile.open(hostile / split / "00000.tar", "w") as tar:
            for name in ("../../../escaped.jpg", "../../../escaped.json"):
                data = b"{}"
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"00000.tar: sample key '\.\./\.\./\.\./escaped' is not a plain file name"):
        export_detection_dataset(hostile, tmp_path / "out" / "deep" / "export")
    assert not list(tmp_path.rglob("escaped*"))

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a lab's own file")
    with pytest.raises(ValueError, match=r"mine: a folder that is not an export \(no export.json\) and not empty"):
        export_detection_dataset(shards, mine)
    assert (mine / "notes.txt").read_text() == "a lab's own file"
    # An export.json export did not write (each of its two marks alone is not one): the folder is not known to be ours.
    for theirs in ('{"tool": "another exporter"}', "{", "[]", '{"format": 1}', '{"shards_sha256": {}}'):
        (mine / "export.json").write_text(theirs)
        with pytest.raises(ValueError, match=r"mine: a folder that is not an export \(its export.json was not written by export\) and not empty"):
            export_detection_dataset(shards, mine)
        assert (mine / "notes.txt").read_text() == "a lab's own file" and (mine / "export.json").read_text() == theirs
    for out in (tmp_path, shards, shards / "train" / "export"):
        with pytest.raises(ValueError, match="overlaps the shards"):
            export_detection_dataset(shards, out)
    assert sorted(p.name for p in (shards / "train").iterdir()) == ["00000.tar"]
    export_detection_dataset(shards, tmp_path / "empty-is-fine")
    assert export_detection_dataset(shards, tmp_path / "empty-is-fine").counts["test"]["images"] == len(SAMPLES)


@pytest.mark.parametrize("record", [b"{not json", b"\xff\xfe", b"[]", b'{"key": "x"}'])
def test_an_export_names_the_shard_and_sample_of_a_json_of_another_shape(tmp_path, record):
    import tarfile

    shards = tmp_path / "icd-mixed"
    for split in ("train", "test"):
        (shards / split).mkdir(parents=True)
        with tarfile.open(shards / split / "00000.tar", "w") as tar:
            for name, data in (("s1.jpg", b"x"), ("s1.json", record)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"train/00000.tar: sample s1: KEY.json(: not valid JSON| is not an ICD sample record)"):
        export_detection_dataset(shards, tmp_path / "export")


def _other_shard(source, dest, change):
    """``source``'s samples under new keys (``x...``), each KEY.json changed by ``change``, written to ``dest``."""
    with TarShardWriter(dest) as writer:
        for key, members in iter_tar_members(source):
            record = json.loads(members["json"])
            change(record)
            record["key"] = "x" + key
            writer.write("x" + key, {**members, "json": json.dumps(record).encode()})
        writer.close()


@pytest.mark.parametrize("mix, complaint", [
    ("test_shard_in_train", r"train/00001.tar: sample xte0000: KEY.json says split 'test', the shard is in train/"),
    ("other_recipe", r"train/00001.tar: sample xtr0000: built by recipe 'test' \(sha256 1\), .*train/00000.tar: sample tr0000 by 'test' \(sha256 0\)"),
    ("other_release", r"train/00001.tar: sample xtr0000: written by implicit-concept 0.0.9 \(KEY.json schema 3\), .*train/00000.tar: sample tr0000 by 0 \(schema 3\)"),
    ("older_schema", r"train/00001.tar: sample xtr0000: written by implicit-concept 0 \(KEY.json schema 2\), .*train/00000.tar: sample tr0000 by 0 \(schema 3\)"),
])
def test_an_export_refuses_a_shard_of_another_split_or_build_mixed_in(tmp_path, mix, complaint):
    """A test shard copied into train/ would be fitted on and its mAP then reported as on unseen
    assets; a shard of another build left in the folder would be trained on under this one's name,
    one another release wrote (other pixels and boxes for the same recipe) mixed with this one's."""
    shards = _write_shards(tmp_path / "icd-mixed")
    if mix == "test_shard_in_train":
        _other_shard(shards / "test" / "00000.tar", shards / "train" / "00001.tar", lambda record: None)
    else:
        change = {"other_recipe": {"recipe_sha256": "1"}, "other_release": {"version": "0.0.9"}, "older_schema": {"schema": 2}}[mix]
        _other_shard(shards / "train" / "00000.tar", shards / "train" / "00001.tar", lambda record: record.update(change))
    with pytest.raises(ValueError, match=complaint):
        export_detection_dataset(shards, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("record, complaint", [
    (b"[" * 5000 + b"]" * 5000, "KEY.json: nested too deeply"),
    (b" " * (1 << 20) + b"{}", r"KEY.json is 1048578 bytes, over the cap of 1048576"),
])
def test_an_export_reads_key_json_as_the_shard_reader_does(tmp_path, record, complaint):
    """The detector's export takes KEY.json through the shard reader's one parser: a record nested
    too deeply or over the cap is one line naming the shard and sample, never a RecursionError."""
    shards = _write_shards(tmp_path / "icd-mixed")
    tar = shards / "train" / "00000.tar"
    samples = [(key, {**members, "json": record}) for key, members in iter_tar_members(tar)]
    with TarShardWriter(tar) as writer:
        for key, members in samples:
            writer.write(key, members)
        writer.close()
    with pytest.raises(ValueError, match=r"train/00000.tar: sample tr0000: " + complaint):
        export_detection_dataset(shards, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("jpeg, complaint", [
    (lambda size: b"\xff\xd8 not a jpeg", r"sample tr0000: image not decoded \(unreadable_image"),
    (lambda size: _jpeg((32, 32)), r"sample tr0000: the image is 32x32, its KEY.json says 64x64"),
])
def test_an_export_refuses_an_image_ultralytics_would_skip_or_label_wrong(tmp_path, jpeg, complaint):
    """ultralytics drops an image it cannot read with a warning, and labels are normalised by the
    KEY.json's size: both are refused at export, naming the sample, and nothing is written."""
    shards = _write_shards(tmp_path / "icd-mixed", jpeg=jpeg)
    with pytest.raises(ValueError, match=r"train/00000.tar: " + complaint):
        export_detection_dataset(shards, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_detector_training_refuses_an_out_folder_that_holds_or_is_inside_its_inputs(tmp_path):
    """Training writes and replaces dataset/, backgrounds/ and train/ under --out: inputs there
    (a lab's background images, the shards) would be deleted before they are read."""
    from implicit_concept.detector.training import train_detector

    shards = _write_shards(tmp_path / "icd-mixed")
    backgrounds = tmp_path / "work" / "backgrounds"
    backgrounds.mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(backgrounds / "b.png")
    scale = load_scale("debug")
    with pytest.raises(ValueError, match="detector --out .*work: overlaps --backgrounds .*backgrounds"):
        train_detector(shards, tmp_path / "work", scale, backgrounds=backgrounds)
    with pytest.raises(ValueError, match="overlaps the shards"):
        train_detector(shards, shards, scale)
    assert (backgrounds / "b.png").is_file() and (shards / "train" / "00000.tar").is_file()


@pytest.mark.parametrize("held", ["backgrounds/keep.png", "train/labels.txt", "test/notes.txt", "notes.txt"])
def test_detector_training_refuses_a_folder_it_did_not_make_before_it_removes_anything(tmp_path, held):
    """Training replaces train/, val/, test/ and backgrounds/ under --out: a lab's folder named as
    --out (an experiments folder holding a YOLO dataset's train/ and test/) lost them, unread inputs
    or not. A folder that is not empty is trained into only when training made it (its export or its
    detector record there); an empty one, or one holding only hidden files (a lock), is fine."""
    from implicit_concept.detector import training
    from implicit_concept.detector.export import export_detection_dataset

    shards = _write_shards(tmp_path / "icd-mixed")
    lab = tmp_path / "experiments"
    (lab / held).parent.mkdir(parents=True, exist_ok=True)
    (lab / held).write_bytes(b"a lab's own file")
    with pytest.raises(ValueError, match=rf"detector --out .*experiments: a folder detector training did not make, and not empty "
                                         rf"\(it holds {held.split('/')[0]}\)"):
        training.train_detector(shards, lab, load_scale("debug"))
    assert (lab / held).read_bytes() == b"a lab's own file" and not (lab / "dataset").exists()
    (lab / "detector.json").write_text('{"tool": "another trainer"}')  # a record of that name training did not write
    with pytest.raises(ValueError, match=r"a folder detector training did not make"):
        training.train_detector(shards, lab, load_scale("debug"))
    assert (lab / held).read_bytes() == b"a lab's own file"

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    ours = tmp_path / "ours"
    export_detection_dataset(shards, ours / "dataset")
    (ours / "train").mkdir()
    (tmp_path / "hidden" / ".implicit-concept.lock").parent.mkdir()
    (tmp_path / "hidden" / ".implicit-concept.lock").write_text("1")
    for out in (ours, tmp_path / "hidden", tmp_path / "new"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(training, "_train", started)
            with pytest.raises(Started):
                training.train_detector(shards, out, load_scale("debug"))


def test_detector_training_trains_again_where_its_own_record_is_but_not_beside_a_link_to_one(tmp_path):
    """A folder trained into before, its dataset/ export since removed to save space, is still
    training's: its detector record says so. A detector.json that is a link to a record elsewhere
    says nothing of the folders beside it (train/ there is a lab's), so it is refused."""
    from implicit_concept.content_hashes import sha256_file
    from implicit_concept.detector import training
    from implicit_concept.detector.weights import DetectorRecord
    from implicit_concept.files import atomic_write_json

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        raise Started

    shards = _write_shards(tmp_path / "icd-mixed")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "detector.safetensors").write_bytes(b"weights")
    record = DetectorRecord(model="yolov8n.yaml", names=CONCEPT_NAMES, imgsz=64, sha256=sha256_file(elsewhere / "detector.safetensors"),
                            thresholds=dict.fromkeys(CONCEPT_NAMES, 0.25))
    atomic_write_json(elsewhere / "detector.json", record.to_json())
    linked = tmp_path / "linked"
    (linked / "train").mkdir(parents=True)
    (linked / "train" / "labels.txt").write_bytes(b"a lab's own file")
    (linked / "detector.json").symlink_to(elsewhere / "detector.json")
    with pytest.raises(ValueError, match=r"detector --out .*linked: a folder detector training did not make, and not empty"):
        training.train_detector(shards, linked, load_scale("debug"))
    assert (linked / "train" / "labels.txt").read_bytes() == b"a lab's own file" and not (linked / "dataset").exists()
    trained = tmp_path / "trained"
    (trained / "train").mkdir(parents=True)
    for name in ("detector.safetensors", "detector.json"):
        (trained / name).write_bytes((elsewhere / name).read_bytes())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "_train", started)
        with pytest.raises(Started):
            training.train_detector(shards, trained, load_scale("debug"))


def test_a_share_of_images_carries_an_exact_binomial_interval_that_rare_counts_do_not_collapse():
    r = share_ratio([True] * 200 + [False] * 200, level=0.95)
    assert (r.value, r.count, r.n) == (0.5, 200, 400)
    assert 0.44 < r.low < 0.46 and 0.54 < r.high < 0.56  # normal approximation: 0.5 +- 0.049
    assert r.to_json()["interval"] == "exact binomial (Clopper-Pearson)"
    zero = share_ratio([False] * 200, level=0.95)
    assert (zero.value, zero.low) == (0.0, 0.0)
    assert zero.high == pytest.approx(1 - 0.025 ** (1 / 200)), "0 of 200: [0, 1.83%], not the bootstrap's [0, 0]"
    one = share_ratio([True] + [False] * 199, level=0.95)
    assert one.low == pytest.approx(1.2658e-4, rel=1e-3) and one.high == pytest.approx(0.027542, rel=1e-3)
    with pytest.raises(ValueError, match="no images"):
        share_ratio([], level=0.95)


class FakeDetector:
    """Finds a concept wherever the image's red channel says so: 10 = qrcode, 20 = watermark, 30 = text."""

    def __init__(self, path, thresholds=None):
        self.path = path
        self.thresholds = thresholds or dict.fromkeys(CONCEPT_NAMES, 0.25)

    def detect_many(self, images, conf=0.25, batch=64):
        out = []
        for im in images:
            red = im.getpixel((0, 0))[0]
            hits = [Detection(c, 0.9, (1.0, 1.0, 9.0, 9.0)) for i, c in enumerate(CONCEPT_NAMES) if red == 10 * (i + 1)]
            out.append([d for d in hits if d.confidence >= conf])
        return out


class EveryOtherQR:
    name, concept = "fake-qr", "qrcode"

    def __init__(self):
        self.calls = 0

    def found(self, image):
        self.calls += 1
        return self.calls % 2 == 0


def _solid(red):
    return Image.new("RGB", (16, 16), (red, 0, 0))


def test_icr_fp_rate_and_crosscheck_agreement_on_known_inputs(tmp_path):
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    images = [_solid(10)] * 3 + [_solid(30)] * 1 + [_solid(0)] * 6
    clean = [_solid(20)] + [_solid(0)] * 49
    report = score_images(images, FakeDetector(weights), ScoreConfig(resamples=500, seed=3), clean=clean, checkers=[EveryOtherQR()])
    icr = {c: s.icr.value for c, s in report.concepts.items()}
    assert icr == {"qrcode": 0.3, "watermark": 0.0, "text": 0.1}
    assert report.concepts["qrcode"].icr.low <= 0.3 <= report.concepts["qrcode"].icr.high
    fp = {c: s.fp_rate.value for c, s in report.concepts.items()}
    assert fp == {"qrcode": 0.0, "watermark": 0.02, "text": 0.0}
    (check,) = report.crosschecks
    assert check.icr.value == 0.5 and check.agreement == 0.4  # YOLO: images 0-2; checker: 1, 3, 5, 7, 9; equal on 1, 4, 6, 8
    out = report.write_json(tmp_path / "score.json")
    record = json.loads(out.read_text())
    assert record["config"] == {"conf": None, "resamples": 500, "seed": 3, "level": 0.95, "batch": 64}
    assert record["thresholds"] == dict.fromkeys(CONCEPT_NAMES, 0.25), "the detector's thresholds, recorded"
    assert record["concepts"]["qrcode"]["checker"] == "detector"
    assert record["crosschecks"][0]["checker"] == "fake-qr" and len(record["images"]) == 10
    assert "FP clean" in report.table()
    def rows(table):
        return [line.split()[0] for line in table.splitlines()[2:] if line.split()[0] in CONCEPT_NAMES]

    assert rows(report.table(["watermark"])) == ["watermark"] and "qrcode" not in report.table(["watermark"]), \
        "a subset's table: its concepts' rows (and thresholds, cross-checks) alone"
    assert rows(report.table()) == list(report.concepts) == list(CONCEPT_NAMES)


def test_a_recorded_clean_folder_that_is_not_on_this_machine_is_not_shown_as_a_local_path(tmp_path):
    """The published detector's reference records the publisher's folder: the table says so, while
    score.json keeps the source as recorded (the reference file is pinned by sha256)."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    elsewhere = "/on-the-publishers-machine/icd-tiny/icd-mixed/test"
    (tmp_path / "clean_reference.json").write_text(json.dumps({"source": elsewhere, "max_conf": dict.fromkeys(CONCEPT_NAMES, [0.0] * 4)}))
    detector = FakeDetector(weights)
    detector.clean_reference_sha256 = None
    report = score_images([_solid(10)], detector, ScoreConfig(resamples=100), checkers=[])
    assert f"4 clean images ({elsewhere}, a folder on the machine the reference was made on)" in report.table()
    assert report.to_json()["clean_reference"]["source"] == elsewhere
    here = tmp_path / "clean"
    here.mkdir()
    _solid(0).save(here / "a.png")
    local = score_images([_solid(10)], FakeDetector(weights), ScoreConfig(resamples=100), clean=here, checkers=[])
    assert f"1 clean images ({here})" in local.table()


def test_named_pairs_keep_their_names_and_bad_items_are_named(tmp_path):
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    pairs = [("3_0", _solid(10)), ("3_1", _solid(0)), ("4_0", _solid(30))]
    report = score_images(pairs, FakeDetector(weights), ScoreConfig(resamples=200), clean=[_solid(0)] * 4, checkers=[])
    record = json.loads(report.write_json(tmp_path / "score.json").read_text())
    assert [r["name"] for r in record["images"]] == ["3_0", "3_1", "4_0"]
    assert [bool(r["detections"]) for r in record["images"]] == [True, False, True]
    assert report.concepts["qrcode"].icr.value == report.concepts["text"].icr.value == 1 / 3
    for bad, fragment in [([("a", _solid(0), 1)], "item 0: a tuple must be (name, PIL image)"), ([_solid(0), ("", _solid(0))], "item 1"),
                          ([("a", "x.png")], "(str, str)"), ([3], "item 0: want a path, a PIL image or a (name, PIL image) pair, got int")]:
        with pytest.raises(ImageReadError) as e:
            score_images(bad, FakeDetector(weights), ScoreConfig(resamples=200), clean=[_solid(0)], checkers=[])
        assert fragment in str(e.value), str(e.value)


def test_one_named_pair_or_a_dict_of_named_images_is_scored_as_those_images_not_read_as_file_names(tmp_path):
    """``score_images(("3_0", image))`` or ``score_images({"3_0": image, ...})``: iterated, their names
    were opened as files ("3_0: no such image file")."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    pairs = [("3_0", _solid(10)), ("3_1", _solid(0))]

    def scored(images):
        report = score_images(images, FakeDetector(weights), ScoreConfig(resamples=200), clean=[_solid(0)], checkers=[])
        return [(r["name"], bool(r["detections"])) for r in report.images]

    assert scored(dict(pairs)) == scored(pairs) == [("3_0", True), ("3_1", False)]
    assert scored(pairs[0]) == [("3_0", True)]
    column = np.empty(2, dtype=object)  # a pandas or numpy column of PIL images is a list of them
    column[:] = [_solid(10), _solid(0)]
    assert [flag for _, flag in scored(column)] == [True, False]


def test_a_tuple_of_two_images_is_two_images_not_a_named_pair(tmp_path):
    """Only a string beside an image makes a ``(name, image)`` pair: two images in a tuple are
    scored as two unnamed images, and two paths in a tuple as those two files."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    report = score_images((_solid(10), _solid(0)), FakeDetector(weights), ScoreConfig(resamples=200), clean=[_solid(0)], checkers=[])
    assert [(r["name"], bool(r["detections"])) for r in report.images] == [("image-0", True), ("image-1", False)]
    _solid(10).save(tmp_path / "a.png")
    _solid(0).save(tmp_path / "b.png")
    paths = (str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    report = score_images(paths, FakeDetector(weights), ScoreConfig(resamples=200), clean=[_solid(0)], checkers=[])
    assert [(r["name"], bool(r["detections"])) for r in report.images] == [(paths[0], True), (paths[1], False)]


@pytest.mark.parametrize("images, said", [
    (np.zeros((2, 16, 16, 3), np.uint8), r"got a ndarray of shape \(2, 16, 16, 3\) .*Image.fromarray"),
    (torch.zeros(2, 3, 16, 16), r"got a Tensor of shape \(2, 3, 16, 16\)"),
    ([np.zeros((16, 16, 3), np.float32)], r"item 0: .*got a ndarray of shape \(16, 16, 3\) .*Image.fromarray"),
    (b"\x89PNG", "got bytes"),
    (bytearray(b"\x89PNG"), "images: .*got bytearray"),
    (7, "got int"),
])
def test_arrays_tensors_and_bytes_handed_to_the_scorer_are_refused_saying_what_they_are(tmp_path, images, said):
    """Iterated, an array's rows were each called an item that is no image, and an int raised a TypeError."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    with pytest.raises(ImageReadError, match=said):
        score_images(images, FakeDetector(weights), ScoreConfig(resamples=200), clean=[_solid(0)], checkers=[])


def _png(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless, so the fake detector sees exact colours
    return buf.getvalue()


def test_clean_shards_contribute_their_clean_twins(tmp_path):
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    (tmp_path / "clean").mkdir()
    with TarShardWriter(tmp_path / "clean" / "00000.tar") as w:
        for i in range(4):
            meta = SampleMeta(
                key=f"k{i}", caption="c", width=16, height=16, split="test", subset="icd-qrcode", source={},
                instances=[Instance("qrcode", Box(1, 1, 9, 9))] if i < 2 else [], seed=[i], recipe="t", recipe_sha256="0", version="0",
            )
            members = {"jpg": _png(_solid(10 if i < 2 else 0)), "json": json.dumps(meta.to_json()).encode()}
            if i < 2:
                members["clean.jpg"] = _png(_solid(0))
            w.write(meta.key, members)
        w.close()
    report = score_images(tmp_path / "clean", FakeDetector(weights), ScoreConfig(resamples=200), clean=tmp_path / "clean", checkers=[])
    assert report.concepts["qrcode"].icr.value == 0.5
    assert report.concepts["qrcode"].fp_rate.value == 0.0 and report.clean_images == 4


def test_a_higher_threshold_lowers_icr(tmp_path):
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    report = score_images([_solid(10)] * 4, FakeDetector(weights), ScoreConfig(conf=0.95), clean=[_solid(0)], checkers=[])
    assert report.concepts["qrcode"].icr.value == 0.0


@pytest.mark.parametrize("field, value", [
    ("conf", 1.5), ("conf", "0.5"), ("conf", True), ("resamples", 10), ("resamples", 500.0), ("seed", -1), ("seed", 1.5),
    ("level", 1), ("level", 0), ("level", "0.95"), ("batch", 0), ("batch", 2.5), ("batch", True),
])
def test_score_config_names_bad_fields(field, value):
    with pytest.raises(ValueError, match=f"ScoreConfig.{field}"):
        ScoreConfig(**{field: value})


@pytest.mark.parametrize("target", [0.3, 0.4, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("box", [Box(10, 12, 30, 28), Box(0, 0, 40, 25), Box(50, 40, 64, 64), Box(5, 5, 45, 55)])
def test_degrade_box_hits_the_target_iou(box, target):
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = degrade_box(box, target, rng, 64, 64)
        assert d.inside(64, 64)
        assert abs(box_iou(box.as_list(), d.as_list()) - target) <= 0.03


def test_degrade_box_is_seeded_and_checks_its_inputs():
    box = Box(10, 10, 30, 30)
    a = [degrade_box(box, 0.4, np.random.default_rng(7), 64, 64) for _ in range(2)]
    assert a[0] == a[1]
    assert degrade_box(box, 1.0, np.random.default_rng(0), 64, 64) == box
    with pytest.raises(ValueError, match="target_iou"):
        degrade_box(box, 0.0, np.random.default_rng(0), 64, 64)
    with pytest.raises(ValueError, match="not inside"):
        degrade_box(Box(10, 10, 70, 30), 0.5, np.random.default_rng(0), 64, 64)


def test_detection_covering_box():
    assert Detection("text", 0.5, (1.2, 3.0, 9.01, 9.9)).covering_box() == Box(1, 3, 10, 10)


def test_missing_detector_names_the_file(tmp_path):
    with pytest.raises(DetectorError, match="missing.safetensors: no such detector weights file"):
        Detector.load(tmp_path / "missing.safetensors")
    with pytest.raises(DetectorError, match="no detector.safetensors and detector.json"):
        Detector.load(tmp_path)


def test_corrupt_detector_names_the_file(tmp_path):
    from implicit_concept.content_hashes import sha256_file
    from implicit_concept.detector.weights import DetectorRecord, record_path
    from implicit_concept.files import atomic_write_json

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    record = DetectorRecord(model="yolov8n.yaml", names=CONCEPT_NAMES, imgsz=64, sha256=sha256_file(bad), thresholds=dict.fromkeys(CONCEPT_NAMES, 0.25))
    atomic_write_json(record_path(bad), record.to_json())
    with pytest.raises(DetectorError, match="broken.safetensors: not a readable safetensors file"):
        Detector.load(bad)


OFFLINE_IMPORT = """
import json, socket
asked = []
def lookup(host, *args, **kwargs):
    asked.append(host)
    raise socket.gaierror("no network in this test")
socket.getaddrinfo = lookup
from implicit_concept.detector.yolo_env import import_ultralytics
import_ultralytics()
from ultralytics.utils import ONLINE, USER_CONFIG_DIR
print(json.dumps({"asked": asked, "online": ONLINE, "font": (USER_CONFIG_DIR / "Arial.ttf").stat().st_size}))
"""


def test_ultralytics_is_imported_offline_with_our_font():
    """In a process where nothing else set ``YOLO_OFFLINE`` (this one's conftest does), ultralytics
    looks nothing up on import, which it otherwise does to decide whether it is online."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "YOLO_OFFLINE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", OFFLINE_IMPORT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["asked"] == [] and not result["online"] and result["font"] > 100_000


def test_ultralytics_lets_an_interrupt_through_where_it_swallows_errors():
    """ultralytics' ``TryExcept`` (around its plots) swallowed Ctrl-C: the command ran on to the end."""
    from implicit_concept.detector.yolo_env import import_ultralytics

    try_except = import_ultralytics("ultralytics.utils").TryExcept

    @try_except(verbose=False)
    def plot(error: BaseException) -> None:
        raise error

    plot(ValueError("a plot that fails is still skipped, as ultralytics means it"))
    for interrupt in (KeyboardInterrupt(), SystemExit(3)):
        with pytest.raises(type(interrupt)):
            plot(interrupt)


def test_corrupt_image_names_the_file(tmp_path):
    good = tmp_path / "a.png"
    _solid(10).save(good)
    buf = io.BytesIO()
    _solid(10).resize((64, 64)).save(buf, format="JPEG")
    (tmp_path / "b.jpg").write_bytes(buf.getvalue()[:200])
    names = []
    with pytest.raises(ImageReadError, match="b.jpg: not a readable image"):
        for name, _ in iter_images(tmp_path):
            names.append(name)
    assert names == ["a.png"]
    with pytest.raises(ImageReadError, match="b.jpg: not a readable image"):
        Detector(model=None, path=tmp_path / "detector.safetensors", imgsz=64, device="cpu").detect(tmp_path / "b.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="empty: no image files"):
        list(iter_images(tmp_path / "empty"))


def test_hidden_files_in_a_folder_of_images_are_not_images_wherever_a_folder_is_read(tmp_path):
    """A folder copied through macOS onto a shared drive gains ``._a.png`` (AppleDouble metadata, not
    an image): ``score`` refused the whole folder as unreadable, and so did a detector's backgrounds."""
    from benchmark.external import _images_by_stem
    from implicit_concept.detector.image_sets import image_set_digest

    folder = tmp_path / "generated"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    _solid(10).save(folder / "0_0.png")
    _solid(20).save(folder / "1_0.png")
    (folder / "._0_0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    _solid(30).save(folder / ".ipynb_checkpoints" / "0_0.png")
    assert [name for name, _ in iter_images(folder)] == ["0_0.png", "1_0.png"]
    assert image_set_digest(folder, "background") == image_set_digest([("a", _solid(10)), ("b", _solid(20))], "background")
    assert sorted(_images_by_stem(folder)) == ["0_0", "1_0"], "not listed as an image no prompt names"


def test_a_folder_with_several_unreadable_images_is_refused_once_naming_each(tmp_path, monkeypatch):
    """Scoring streams, so the folder is refused at the end of one pass, naming every broken file,
    with each readable image decoded once (not a check pass and then a scoring pass)."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    folder = tmp_path / "generated"
    folder.mkdir()
    for name in ("a.png", "c.png", "e.png"):
        _solid(10).save(folder / name)
    (folder / "b.png").write_bytes(b"")
    (folder / "d.png").write_text("not an image")
    opened = []
    monkeypatch.setattr(image_stream, "load_image", lambda path: opened.append(Path(path).name) or load_image(path))
    with pytest.raises(ImageReadError) as refused:
        score_images(folder, FakeDetector(weights), ScoreConfig(resamples=100), clean=[_solid(0)], checkers=[])
    assert opened == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    message = str(refused.value)
    assert message.startswith("2 of 5 images cannot be read")
    assert "b.png" in message and "d.png" in message and "a.png" not in message
    decoded = []
    with pytest.raises(ImageReadError):
        for name, _ in iter_images([folder / "a.png", _solid(3), folder / "b.png", folder / "c.png"]):
            decoded.append(name)
    assert decoded == [str(folder / "a.png"), "image-1", str(folder / "c.png")]
    with pytest.raises(ImageReadError, match=r"^\S*b\.png: not a readable image"):
        list(iter_images(folder / "b.png"))


def test_scales_are_validated_naming_the_field(tmp_path):
    assert load_scale("cpu").model.endswith(".yaml")
    with pytest.raises(ScaleError, match="no detector scale 'huge'"):
        load_scale("huge")
    with pytest.raises(ScaleError, match="imgsz = 100"):
        DetectorScale(name="x", model="yolov8n.yaml", imgsz=100, epochs=1, batch=1)
    with pytest.raises(ScaleError, match="model = 'yolov8n.pt'"):
        DetectorScale(name="x", model="yolov8n.pt", imgsz=64, epochs=1, batch=1)
    toml = tmp_path / "scales.toml"
    toml.write_text('[x]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 1\nbatch = 1\nlr = 3\n')
    with pytest.raises(ScaleError, match=r"'x'\.lr: unknown field"):
        load_scale("x", toml)


def test_qr_checker_decodes_a_clear_code_and_not_a_blank():
    code = qrcode.make("hello").convert("RGB").resize((64, 64), Image.NEAREST)
    checker = OpenCVQRChecker()
    assert checker.found(code) and not checker.found(Image.new("RGB", (64, 64), "white"))
    checkers, skipped = available_checkers()
    assert {c.name for c in checkers} | set(skipped) >= {"qr-decode-opencv", "ocr-tesseract"}


def test_cli_reports_a_bad_detector_path(tmp_path, capsys):
    assert main(["score", str(tmp_path), "--detector", str(tmp_path / "nope.safetensors")]) == 2
    assert f"argument --detector: {tmp_path / 'nope.safetensors'}: no such file or folder" in capsys.readouterr().err


def test_coco_export_loads_and_evaluates_in_pycocotools(tmp_path):
    """A lab's COCO tooling reads the export as is: COCO, loadRes and COCOeval on detections equal to
    the ground truth give AP 1.0 (loadRes needs the ``info`` key pycocotools copies)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from benchmark.cli import main

    shards = _write_shards(tmp_path / "icd-mixed")
    assert main(["export", str(shards), "--out", str(tmp_path / "coco"), "--format", "coco"]) == 0
    assert not (tmp_path / "coco" / "labels").exists() and not (tmp_path / "coco" / "data.yaml").exists()
    truth = COCO(str(tmp_path / "coco" / "annotations" / "test.json"))
    found = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in truth.dataset["annotations"]]
    evaluation = COCOeval(truth, truth.loadRes(found), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP at IoU 0.5


def test_export_command_writes_yolo_alone_when_asked(tmp_path):
    from benchmark.cli import main

    shards = _write_shards(tmp_path / "icd-mixed")
    assert main(["export", str(shards), "--out", str(tmp_path / "y"), "--format", "yolo"]) == 0
    assert (tmp_path / "y" / "data.yaml").is_file() and not (tmp_path / "y" / "annotations").exists()
    assert sorted(p.name for p in (tmp_path / "y" / "labels" / "test").iterdir())[:1] == ["te0000.txt"]


def _sixteen_bit_and_transparent(folder):
    """A mid-grey 16-bit PNG (30000 / 257 is 117 in 8 bits) and a fully transparent one (white)."""
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(folder / "grey16.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(folder / "transparent.png")
    return {"grey16.png": 117, "transparent.png": 255}


def test_every_reader_decodes_16_bit_and_transparent_images_as_the_dataset_builder_does(tmp_path):
    """One rule (image_decode.decode_rgb) for files, folders and images in memory: a 16-bit grey is
    not clipped to white, a transparent image is not black."""
    from implicit_concept.image_decode import decode_rgb, open_image

    levels = _sixteen_bit_and_transparent(tmp_path / "in")
    for name, level in levels.items():
        path = tmp_path / "in" / name
        builder = np.asarray(decode_rgb(open_image(path.read_bytes())))
        assert builder.min() == builder.max() == level
        assert np.array_equal(np.asarray(load_image(path)), builder)
        with Image.open(path) as opened:
            assert [np.asarray(im).tolist() for _, im in iter_images([opened])] == [builder.tolist()]
    assert {name: np.asarray(im).mean() for name, im in iter_images(tmp_path / "in")} == levels
    with pytest.raises(ImageReadError, match="image-0: an unsupported pixel mode"):
        list(iter_images(Image.fromarray(np.zeros((4, 4), np.float32))))


def test_a_folder_holding_both_shards_and_loose_images_is_refused_naming_both(tmp_path):
    """Scoring the shards alone would silently drop the images (and an unrelated tar would fail as a shard)."""
    folder = tmp_path / "mixed"
    _write_shards(folder / "sub")
    for name in ("a.png", "b.png"):
        _solid(10).save(folder / name)
    with pytest.raises(ImageReadError, match=r"mixed: holds both .tar shards \(2, first sub/test/00000.tar\) and image files \(2, first a.png\)"):
        list(iter_images(folder))
    assert [name for name, _ in iter_images(folder / "sub" / "test")] == [f"te{i:04d}" for i in range(len(SAMPLES))]
    (folder / "sub").rename(tmp_path / "shards")
    assert [name for name, _ in iter_images(folder)] == ["a.png", "b.png"]


def test_images_given_in_one_list_have_unique_names_in_the_records(tmp_path):
    """``score_images([folder_a, folder_b])``: both folders' ``0_0.png`` were recorded as ``0_0.png``,
    so the per-image records could not be told apart. A folder or shard set in a list is named after
    it as given (as a file given alone is); a name met twice is refused, naming it."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    for folder, red in (("a", 10), ("b", 0)):
        (tmp_path / folder).mkdir()
        _solid(red).save(tmp_path / folder / "0_0.png")
    a, b = tmp_path / "a", tmp_path / "b"

    def names(images):
        report = score_images(images, FakeDetector(weights), ScoreConfig(resamples=100), clean=[_solid(0)], checkers=[])
        return [(r["name"], bool(r["detections"])) for r in report.images]

    assert names([a, str(b) + "/"]) == [(str(a / "0_0.png"), True), (str(b / "0_0.png"), False)]
    assert names(a) == [("0_0.png", True)], "a folder alone keeps its images' own names"
    shards = _write_shards(tmp_path / "shards")
    assert [name for name, _ in iter_images([shards / "train", str(shards / "test") + "/"])] == [
        *(f"{shards / 'train'}/tr{i:04d}" for i in range(len(SAMPLES))), *(f"{shards / 'test'}/te{i:04d}" for i in range(len(SAMPLES)))]
    for twice, name in (([a, a / "0_0.png"], a / "0_0.png"), ([a / "0_0.png", a / "0_0.png"], a / "0_0.png"),
                        ([("3_0", _solid(10)), ("3_0", _solid(0))], "3_0"), ([_solid(0), ("image-0", _solid(0))], "image-0")):
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(name))}: given twice among the images"):
            names(twice)


def test_a_folder_of_images_is_read_with_its_subfolders_each_named_by_its_relative_path(tmp_path):
    """The library reads a folder's images below it too (as the mixed-folder check looks below it),
    and names each by its path inside the folder: two ``1.png`` in two subfolders stay two records."""
    folder = tmp_path / "images"
    for name, level in (("top.png", 10), ("a/1.png", 20), ("b/1.png", 30)):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        _solid(level).save(folder / name)
    read = {name: int(np.asarray(im)[0, 0, 0]) for name, im in iter_images(folder)}
    assert read == {"a/1.png": 20, "b/1.png": 30, "top.png": 10}


def test_a_clean_reference_of_another_shape_is_refused_naming_the_file(tmp_path):
    """The reference beside a detector is data: it decides the false-positive rate a report prints."""
    from implicit_concept.scoring import CleanReference

    path = tmp_path / "clean_reference.json"
    good = CleanReference("test/", {c: [0.0, 0.5] for c in CONCEPT_NAMES})
    good.write(path)
    assert CleanReference.read(path) == good and CleanReference.read(path).n_images == 2
    for bad in (
        "{not json", "[]", "null",
        json.dumps({"source": "s", "max_conf": {c: [0.1] for c in CONCEPT_NAMES}, "extra": 1}),
        json.dumps({"source": "s", "max_conf": {"qrcode": [0.1], "text": [0.1]}}),
        json.dumps({"source": "s", "max_conf": {**{c: [0.1] for c in CONCEPT_NAMES}, "qrcode": [0.1] * 50}}),
        json.dumps({"source": "s", "max_conf": {c: [] for c in CONCEPT_NAMES}}),
        json.dumps({"source": "s", "max_conf": {c: ["0.1"] for c in CONCEPT_NAMES}}),
        json.dumps({"source": "s", "max_conf": {c: [1.5] for c in CONCEPT_NAMES}}),
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match=r"clean_reference.json: not a clean-image reference"):
            CleanReference.read(path)


def test_a_key_in_two_shards_of_one_split_is_refused_not_overwritten(tmp_path):
    """An export names files by sample key: a second tr0000 in the train split would silently replace the first's image and labels."""
    import shutil

    shards = _write_shards(tmp_path / "icd-mixed")
    shutil.copy(shards / "train" / "00000.tar", shards / "train" / "00001.tar")
    with pytest.raises(ValueError, match=r"train/00001.tar: sample key tr0000 appears twice in the train split"):
        export_detection_dataset(shards, tmp_path / "export")


class RecordingYOLO:
    """Stands in for the ultralytics model a :class:`Detector` wraps: records each ``predict`` call and
    reports, per image, one box whose class is the image's top-left blue value (BGR's first channel)
    and whose confidence is its green value in hundredths."""

    def __init__(self):
        self.calls = []

    def predict(self, arrays, **kwargs):
        self.calls.append(([a.copy() for a in arrays], kwargs))
        results = []
        for a in arrays:
            blue, green, red = (int(v) for v in a[0, 0])
            boxes = SimpleNamespace(xyxy=torch.tensor([[1.0, 2.0, 5.5, 7.25]]), conf=torch.tensor([green / 100]), cls=torch.tensor([float(blue)]))
            results.append(SimpleNamespace(boxes=boxes))
        return results


def test_detect_many_hands_ultralytics_bgr_arrays_at_the_trained_size_in_batches_and_keeps_input_order(tmp_path):
    """ultralytics reads numpy images as OpenCV's BGR (as it read the training images); predicting at
    any size but the trained one, or in RGB, gives other boxes, silently."""
    yolo = RecordingYOLO()
    detector = Detector(yolo, tmp_path / "detector.safetensors", imgsz=32, device="cpu")
    # (R, G, B): blue names the class, green the confidence; red is what an RGB reading would take for the class.
    images = [Image.new("RGB", (16, 12), (9, 40 + 10 * i, i % 3)) for i in range(5)]
    images[3].save(tmp_path / "3.png")
    found = detector.detect_many([*images[:3], tmp_path / "3.png", images[4]], conf=0.123, batch=2)
    assert [len(arrays) for arrays, _ in yolo.calls] == [2, 2, 1]
    for arrays, kwargs in yolo.calls:
        assert kwargs["imgsz"] == 32 and kwargs["conf"] == 0.123 and kwargs["iou"] == 0.7 and kwargs["device"] == "cpu"
        assert all(a.shape == (12, 16, 3) and a.dtype == np.uint8 and a.flags["C_CONTIGUOUS"] for a in arrays)
    first = yolo.calls[0][0][0]
    assert first[0, 0].tolist() == [0, 40, 9], "blue, green, red"
    assert [[(d.concept, d.confidence) for d in dets] for dets in found] == [
        [(CONCEPT_NAMES[i % 3], pytest.approx((40 + 10 * i) / 100))] for i in range(5)]
    assert found[0][0].box == (1.0, 2.0, 5.5, 7.25) and isinstance(found[0][0].confidence, float)
    assert detector.detect(images[1], conf=0.5) == found[1] and yolo.calls[-1][1]["conf"] == 0.5
    assert detector.detect(images[1])[0].concept == CONCEPT_NAMES[1] and yolo.calls[-1][1]["conf"] == 0.25


def test_blank_images_are_counted_and_said_beside_the_icr(tmp_path):
    """One flat colour (a safety checker's black, a collapsed model's grey with a little noise) is
    blank: the detector finds nothing there, so such images lower an ICR without erasing anything."""
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    rng = np.random.default_rng(0)
    grey = Image.fromarray((128 + rng.integers(-1, 2, (16, 16, 3))).astype(np.uint8))
    noisy = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    dot = Image.new("RGB", (16, 16), (0, 0, 0))
    dot.putpixel((3, 3), (255, 255, 255))
    halves = Image.new("RGB", (16, 16), (0, 0, 0))
    halves.paste((0, 0, 40), (0, 0, 16, 8))
    images = [Image.new("RGB", (16, 16)), grey, noisy, dot, halves, Image.new("L", (16, 16), 7)]
    report = score_images(images, FakeDetector(weights), ScoreConfig(resamples=100), clean=[_solid(0)], checkers=[])
    assert report.blank_images == 3 and report.to_json()["blank_images"] == 3
    assert "3 of 6 images are blank (one flat colour)" in report.table()
    clean = score_images([noisy, dot], FakeDetector(weights), ScoreConfig(resamples=100), clean=[_solid(0)], checkers=[])
    assert clean.blank_images == 0 and "blank" not in clean.table()
