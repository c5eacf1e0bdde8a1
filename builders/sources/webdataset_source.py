"""Image-text tar shards in img2dataset's layout (``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``).

One input tar is one output shard, so shard ``i`` of either split reads only tar ``i``. Members
are grouped as webdataset does: the key is everything before the first dot of the basename and
consecutive members with the same key form one sample. Members are read as bytes and only the
image, caption and JSON ones are kept: nothing is ever unpickled. A tar that ends early, or
without its end-of-archive block, yields the samples read so far and then one ``corrupt_tar``.
"""
from __future__ import annotations

import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from braceexpand import braceexpand

from implicit_concept.sample import SPLITS
from implicit_concept.shard_reader import group_members

from .base import RawItem, Source, split_of
from .folder import check_fraction, decode_caption

_BLOCK = 512


class _CorruptTar(Exception):
    pass


@dataclass(frozen=True)
class WebDatasetConfig:
    #: A brace pattern like ``/data/{00000..00009}.tar``, or a list of them; local files only.
    urls: str | tuple[str, ...]
    test_fraction: float = 0.1
    #: Member extensions that hold the image, by preference.
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_key: str = "txt"

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else self.urls
        if not (isinstance(urls, (list, tuple)) and urls and all(isinstance(u, str) and u for u in urls)):
            raise ValueError(f"urls must be a brace pattern or a list of them, got {self.urls!r}")
        remote = [u for u in urls if "://" in u]
        if remote:
            raise ValueError(f"urls: only local files are read, got {remote[0]!r}")
        object.__setattr__(self, "urls", tuple(urls))
        object.__setattr__(self, "test_fraction", check_fraction("test_fraction", self.test_fraction))
        keys = self.image_keys
        if not (isinstance(keys, (list, tuple)) and keys and all(isinstance(k, str) and k for k in keys)):
            raise ValueError(f"image_keys must be a non-empty list of extensions, got {keys!r}")
        object.__setattr__(self, "image_keys", tuple(k.lower() for k in keys))
        if not isinstance(self.caption_key, str) or not self.caption_key:
            raise ValueError(f"caption_key must be an extension such as 'txt', got {self.caption_key!r}")
        object.__setattr__(self, "caption_key", self.caption_key.lower())


class WebDatasetSource(Source):
    """Each split reads its items (by ``split_of`` of ``<tar basename>/<key>``) from every tar."""

    kind = "webdataset"

    def __init__(self, config: WebDatasetConfig) -> None:
        tars = [path for pattern in config.urls for path in braceexpand(pattern)]
        missing = [p for p in tars if not os.path.isfile(p)]
        if missing:
            raise ValueError(
                f"urls: {len(missing)} of {len(tars)} tar files do not exist, first {missing[0]!r}"
            )
        names = [os.path.basename(p) for p in tars]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"urls: tars share the basename {repeated[0]!r}, so source ids would collide")
        self.config = config
        self.tars = tars

    def shard_ids(self, split: str) -> list[int]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return list(range(len(self.tars)))

    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        if shard_id not in self.shard_ids(split):
            raise ValueError(f"{split} has no shard {shard_id} (shards: {len(self.tars)})")
        path = self.tars[shard_id]
        name = os.path.basename(path)
        keep = {*self.config.image_keys, self.config.caption_key, "json"}

        def wanted(key: str) -> bool:
            return split_of(f"{name}/{key}", self.config.test_fraction) == split

        try:
            for key, members in _samples(path, wanted, keep):
                yield self._item(name, key, members)
        except _CorruptTar as exc:
            yield RawItem(name, None, None, {"tar": name, "detail": str(exc)}, error="corrupt_tar")

    def _item(self, name: str, key: str, members: dict[str, bytes]) -> RawItem:
        source_id = f"{name}/{key}"
        meta: dict[str, Any] = {"tar": name, "key": key}
        if "json" in members:
            try:
                meta["json"] = json.loads(members["json"])
            except ValueError:
                meta["json_error"] = "invalid_json"
        image_ext = next((k for k in self.config.image_keys if k in members), None)
        if image_ext is None:
            return RawItem(source_id, None, None, meta, error="no_image")
        meta["image_ext"] = image_ext
        if self.config.caption_key not in members:
            return RawItem(source_id, None, None, meta, error="missing_caption")
        caption, error = decode_caption(members[self.config.caption_key])
        if error:
            return RawItem(source_id, None, None, meta, error=error)
        return RawItem(source_id, members[image_ext], caption, meta)


def _samples(
    path: str, wanted: Callable[[str], bool], keep: set[str]
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for each wanted sample whose tar records are all there.

    A sample is known complete once the next one begins, or the tar ends with its end-of-archive
    block. On a read error or a missing end block, the sample being read is dropped (it may lack
    members) and ``_CorruptTar`` is raised after the complete ones were yielded.
    """
    complete: tuple[str, dict[str, bytes]] | None = None
    key: str | None = None
    try:
        with tarfile.open(path, "r:*") as tf:
            for sample in group_members(tf, wanted, keep):
                if complete is not None:
                    yield complete
                complete, key = sample, sample[0]
            ended = _ended_cleanly(tf)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if complete is not None:
            yield complete
        raise _CorruptTar(f"{type(exc).__name__}: {exc} (after {key!r})") from exc
    if not ended:
        raise _CorruptTar(f"no end-of-archive block after {key!r}")
    if complete is not None:
        yield complete


def _ended_cleanly(tf: tarfile.TarFile) -> bool:
    """tarfile stops quietly at a missing or cut header; a complete tar ends with a zero block."""
    tf.fileobj.seek(tf.offset)
    block = tf.fileobj.read(_BLOCK)
    return len(block) == _BLOCK and not any(block)
