"""Data labs can load: the dataset card is a Hugging Face card, so ``datasets.load_dataset(root,
subset)`` (and ``streaming=True``) gives images and boxes; every ``KEY.json`` has one shape, so no
field is dropped by schema inference; the per-shard parquet carries img2dataset's fields."""
from __future__ import annotations

import json
import tarfile

import pytest

from implicit_concept.sample import JSON_SHAPE, SCHEMA_VERSION

datasets = pytest.importorskip("datasets")

_TYPES = {"string": str, "int64": int, "float64": float, "bool": bool}


def _matches(value, shape, where="json") -> list[str]:
    """Where ``value`` departs from ``shape`` (:data:`JSON_SHAPE`'s notation)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict) or set(value) != set(shape):
            return [f"{where}: keys {sorted(value) if isinstance(value, dict) else type(value).__name__}, want {sorted(shape)}"]
        return [p for k in shape for p in _matches(value[k], shape[k], f"{where}.{k}")]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: {type(value).__name__}, want a list"]
        return [p for i, v in enumerate(value) for p in _matches(v, shape[0], f"{where}[{i}]")]
    ok = isinstance(value, _TYPES[shape]) and not (shape != "bool" and isinstance(value, bool))
    return [] if ok else [f"{where}: {value!r} is not {shape}"]


def test_every_key_json_has_the_declared_shape(debug_dataset):
    seen = 0
    for tar in sorted(debug_dataset.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            for info in tf:
                if info.name.endswith(".json"):
                    record = json.loads(tf.extractfile(info).read())
                    assert not _matches(record, JSON_SHAPE), (tar, info.name, _matches(record, JSON_SHAPE)[:3])
                    assert record["schema"] == SCHEMA_VERSION == 3
                    seen += 1
    assert seen == 4 * 96


def test_load_dataset_gives_images_and_boxes_per_subset(debug_dataset, tmp_path):
    ds = datasets.load_dataset(str(debug_dataset), "icd-qrcode", cache_dir=str(tmp_path / "cache"))
    assert {name: len(split) for name, split in ds.items()} == {"train": 64, "test": 32}
    features = ds["train"].features
    assert features["json"]["screen"]["caption_names"] == datasets.List(datasets.Value("string"))  # declared, not guessed
    assert features["json"]["instances"].feature["params"] == datasets.Value("string")
    sample = next(s for s in ds["train"] if s["json"]["instances"])
    assert sample["jpg"].size == (64, 64) and sample["clean.jpg"].size == (64, 64) and sample["mask.png"].mode == "L"
    instance = sample["json"]["instances"][0]
    assert instance["concept"] == "qrcode" and len(instance["box"]) == 4
    assert json.loads(instance["params"])["version"] >= 1
    assert sample["txt"] == sample["json"]["caption"]
    # Every field as written, with its type: a box of int64, box_norm of float64, a bool a bool.
    with tarfile.open(next((debug_dataset / "icd-qrcode" / "train").glob("*.tar"))) as tf:
        written = json.loads(tf.extractfile(f"{sample['__key__']}.json").read())
    assert json.dumps(sample["json"], sort_keys=True) == json.dumps(written, sort_keys=True)
    assert features["json"]["width"] == datasets.Value("int64") and features["json"]["screen"]["caption_stripped"] == datasets.Value("bool")


def test_every_params_key_survives_loading(debug_dataset, tmp_path):
    """Schema inference on records with differing ``params`` dropped keys; as JSON text none is lost."""
    ds = datasets.load_dataset(str(debug_dataset), "icd-mixed", split="train", cache_dir=str(tmp_path / "cache"))
    loaded = {(s["__key__"], i): json.loads(inst["params"]) for s in ds for i, inst in enumerate(s["json"]["instances"])}
    written = {}
    for tar in sorted((debug_dataset / "icd-mixed" / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for info in tf:
                if info.name.endswith(".json"):
                    record = json.loads(tf.extractfile(info).read())
                    written.update({(record["key"], i): json.loads(inst["params"]) for i, inst in enumerate(record["instances"])})
    assert loaded == written and len({c for p in written.values() for c in p}) > 20


def test_streaming_gives_the_same_samples(debug_dataset, tmp_path):
    streamed = datasets.load_dataset(str(debug_dataset), "icd-text", split="test", streaming=True)
    keys = [(s["__key__"], s["json"]["caption"], s["jpg"].size) for s in streamed]
    assert len(keys) == 32 and all(size == (64, 64) for _, _, size in keys)


def test_the_card_names_license_tasks_and_every_subsets_files(debug_dataset):
    import yaml

    text = (debug_dataset / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "apache-2.0" and "object-detection" in front["task_categories"]
    assert [c["config_name"] for c in front["configs"]] == ["icd-qrcode", "icd-watermark", "icd-text", "icd-mixed"]
    assert [c.get("default", False) for c in front["configs"]] == [True, False, False, False], "load_dataset(root) needs a default"
    assert front["configs"][0]["data_files"] == [{"split": "train", "path": "icd-qrcode/train/*.tar"}, {"split": "test", "path": "icd-qrcode/test/*.tar"}]


def test_the_shard_parquet_has_img2datasets_fields(debug_dataset):
    import hashlib

    import pyarrow.parquet as pq

    from implicit_concept.shard_reader import iter_tar_members

    rows = pq.read_table(debug_dataset / "icd-qrcode" / "train" / "00000.parquet").to_pylist()
    jpgs = {key: m["jpg"] for key, m in iter_tar_members(debug_dataset / "icd-qrcode" / "train" / "00000.tar")}
    assert {r["status"] for r in rows} == {"success"} and all(r["error_message"] is None for r in rows)
    assert {r["key"]: r["sha256"] for r in rows} == {k: hashlib.sha256(v).hexdigest() for k, v in jpgs.items()}
    # A tool filtering the table (contaminated rows, by concept, by count) finds what KEY.json holds.
    records = {}
    with tarfile.open(debug_dataset / "icd-qrcode" / "train" / "00000.tar") as tf:
        for info in tf:
            if info.name.endswith(".json"):
                record = json.loads(tf.extractfile(info).read())
                records[record["key"]] = (record["contaminated"], ",".join(sorted({i["concept"] for i in record["instances"]})), len(record["instances"]))
    assert {r["key"]: (r["contaminated"], r["concepts"], r["num_instances"]) for r in rows} == records
    assert {c for c, _, _ in records.values()} == {True, False}


def test_an_item_a_screen_dropped_is_filtered_in_the_table_not_a_read_or_decode_failure():
    from builders.shard_table import DECODE_FAILURES, FILTERED, status_of

    assert {status_of(r) for r in FILTERED} == {"filtered"}
    assert {status_of(r) for r in DECODE_FAILURES} == {"failed_to_decode"}
    assert status_of("missing_caption") == "failed_to_read"


def test_the_card_declares_only_the_members_the_recipe_writes():
    """A declared member no shard holds is a column of None in every row (or a cast error)."""
    from dataclasses import replace

    from builders.dataset_card import hf_features
    from builders.recipe import load_recipe

    recipe = load_recipe("icd-debug")
    names = ["jpg", "txt", "json", "clean.jpg", "mask.png", "__key__", "__url__"]
    assert [m["name"] for m in hf_features(recipe)] == names
    assert [m["name"] for m in hf_features(replace(recipe, write_clean=False))] == [n for n in names if n != "clean.jpg"]
    assert [m["name"] for m in hf_features(replace(recipe, write_mask=False))] == [n for n in names if n != "mask.png"]
