"""Checks a built dataset folder end to end: checksums, schema, boxes, counts.

Returns every problem found rather than stopping at the first, so one run tells the whole story.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from builders.dataset_card import CHECKSUMS
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.files import sha256_file
from implicit_concept.sample import SampleMeta
from implicit_concept.shard_reader import ShardError, iter_tar_members

REQUIRED_MEMBERS = ("jpg", "txt", "json")


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    instances: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.shards > 0


def verify_dataset(out: Path) -> VerifyReport:
    out = Path(out)
    report = VerifyReport()
    listing = out / CHECKSUMS
    if not listing.exists():
        report.problems.append(f"{listing}: missing (is {out} a finished build?)")
        return report
    for line in listing.read_text().splitlines():
        expected, rel = line.split(maxsplit=1)
        _verify_shard(out / rel, expected, report)
    return report


def _verify_shard(tar: Path, expected_sha: str, report: VerifyReport) -> None:
    report.shards += 1
    if not tar.exists():
        report.problems.append(f"{tar}: listed in {CHECKSUMS} but missing")
        return
    actual = sha256_file(tar)
    if actual != expected_sha:
        report.problems.append(f"{tar}: sha256 {actual} differs from {CHECKSUMS} ({expected_sha})")
    stats_file = tar.with_name(f"{tar.stem}_stats.json")
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else None
    if stats is None:
        report.problems.append(f"{stats_file}: missing")
    elif stats["sha256"] != actual:
        report.problems.append(f"{stats_file}: sha256 does not match the tar")
    keys: list[str] = []
    try:
        for key, members in iter_tar_members(tar):
            keys.append(key)
            _verify_sample(tar, key, members, report)
    except ShardError as e:
        report.problems.append(str(e))
    if len(set(keys)) != len(keys):
        report.problems.append(f"{tar}: duplicate keys")
    if stats is not None and stats["successes"] != len(keys):
        report.problems.append(f"{tar}: {len(keys)} samples but stats say {stats['successes']}")
    parquet = tar.with_suffix(".parquet")
    if not parquet.exists():
        report.problems.append(f"{parquet}: missing")
    elif list(pd.read_parquet(parquet)["key"]) != keys:
        report.problems.append(f"{parquet}: keys differ from the tar's")
    report.samples += len(keys)


def _verify_sample(tar: Path, key: str, members: dict[str, bytes], report: VerifyReport) -> None:
    where = f"{tar}:{key}"
    missing = [m for m in REQUIRED_MEMBERS if m not in members]
    if missing:
        report.problems.append(f"{where}: missing member(s) {missing}")
        return
    try:
        meta = SampleMeta.from_json(json.loads(members["json"]))
        image = Image.open(io.BytesIO(members["jpg"]))
        image.load()
    except (ValueError, KeyError, TypeError, OSError) as e:
        report.problems.append(f"{where}: unreadable sample ({e})")
        return
    if meta.key != key:
        report.problems.append(f"{where}: json key {meta.key!r} differs from member name")
    if image.size != (meta.width, meta.height):
        report.problems.append(f"{where}: image is {image.size}, json says {(meta.width, meta.height)}")
    if members["txt"].decode("utf-8") != meta.caption:
        report.problems.append(f"{where}: txt differs from json caption")
    for inst in meta.instances:
        report.instances += 1
        if inst.concept not in CONCEPT_NAMES:
            report.problems.append(f"{where}: unknown concept {inst.concept!r}")
        if not inst.box.inside(meta.width, meta.height):
            report.problems.append(f"{where}: {inst.concept} box {inst.box.as_list()} outside the image")
