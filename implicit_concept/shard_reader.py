"""Reading ICD shards back as :class:`~implicit_concept.sample.Sample` objects.

Accepts a shard set folder (every ``*.tar`` below it, sorted), one tar, or a brace pattern
(``data/icd-qrcode/train/{00000..00003}.tar``). Only images, text and JSON are decoded: nothing is
ever unpickled.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

from braceexpand import braceexpand
from PIL import Image

from implicit_concept.sample import Sample, SampleMeta


class ShardError(ValueError):
    """A shard or one of its members cannot be read; the message names the file."""


def list_shards(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        shards = sorted(p.rglob("*.tar"))
    elif "{" in str(path):
        shards = [Path(s) for s in braceexpand(str(path))]
    else:
        shards = [p]
    missing = [s for s in shards if not s.is_file()]
    if missing:
        raise ShardError(f"{missing[0]}: no such shard file")
    if not shards:
        raise ShardError(f"{path}: no .tar shards found")
    return shards


def iter_tar_members(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group a tar's members by key (everything before the first dot of the basename)."""
    current: str | None = None
    group: dict[str, bytes] = {}
    try:
        with tarfile.open(shard, "r") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if key != current and current is not None:
                    yield current, group
                    group = {}
                current = key
                f = tar.extractfile(info)
                group[ext] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{shard}: unreadable or truncated tar ({e})") from None
    if current is not None:
        yield current, group


def decode_sample(shard: Path, key: str, members: dict[str, bytes], with_extras: bool = True) -> Sample:
    try:
        meta = SampleMeta.from_json(json.loads(members["json"]))
        image = Image.open(io.BytesIO(members["jpg"])).convert("RGB")
        clean = Image.open(io.BytesIO(members["clean.jpg"])).convert("RGB") if with_extras and "clean.jpg" in members else None
        mask = Image.open(io.BytesIO(members["mask.png"])) if with_extras and "mask.png" in members else None
    except KeyError as e:
        raise ShardError(f"{shard}: sample {key} has no {e.args[0]!r} member") from None
    except (OSError, ValueError, TypeError) as e:
        raise ShardError(f"{shard}: sample {key} cannot be decoded ({e})") from None
    return Sample(meta=meta, image=image, clean=clean, mask=mask)


def iter_samples(path: str | Path, with_extras: bool = True) -> Iterator[Sample]:
    for shard in list_shards(path):
        for key, members in iter_tar_members(shard):
            yield decode_sample(shard, key, members, with_extras=with_extras)
