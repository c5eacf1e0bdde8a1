"""Reading ICD shards back as :class:`~implicit_concept.sample.Sample` objects.

Accepts a shard set folder (every ``*.tar`` below it, sorted), one tar, or a brace pattern
(``data/icd-qrcode/train/{00000..00003}.tar``). Only images, text and JSON are decoded: nothing is
ever unpickled.
"""
from __future__ import annotations

import io
import json
import posixpath
import tarfile
from pathlib import Path
from typing import Callable, Collection, Iterator

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


def split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = directory + basename up to its first dot; extension = the rest."""
    directory, base = posixpath.split(name)
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return posixpath.join(directory, stem), ext.lower()


def group_members(
    tar: tarfile.TarFile, wanted: Callable[[str], bool] = lambda key: True, keep: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The one grouping rule of tar members into samples, for our shards and for source shards alike:
    consecutive regular members with the same key (:func:`split_member_name`) form one sample.

    Only samples whose key is ``wanted`` are read, and of those only the extensions in ``keep``
    (all when None). Read errors propagate; the caller names the file.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    take = False
    for info in tar:
        parts = split_member_name(info.name) if info.isreg() else None
        if parts is None:
            continue
        if parts[0] != key:
            if key is not None and take:
                yield key, members
            key, members, take = parts[0], {}, wanted(parts[0])
        if take and (keep is None or parts[1] in keep):
            members[parts[1]] = tar.extractfile(info).read()
    if key is not None and take:
        yield key, members


def iter_tar_members(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of one shard."""
    try:
        with tarfile.open(shard, "r") as tar:
            yield from group_members(tar)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{shard}: unreadable or truncated tar ({e})") from None


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
