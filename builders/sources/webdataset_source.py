"""Image-text tar shards in img2dataset's layout (``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``).

The tars may be local paths, ``pipe:`` commands or http(s) URLs (brace patterns in any of them), as
labs hold LAION: a stream is opened by webdataset's ``gopen`` and read with the same bounds and the
same grouping as a local file (:mod:`implicit_concept.shard_reader`). One input tar is one output
shard, so shard ``i`` of either split reads only tar ``i``. Members are grouped as webdataset does:
the key is everything before the first dot of the basename and consecutive members with the same
key form one sample. Members are read as bytes and only the image, caption and JSON ones are kept:
nothing is ever unpickled. A tar that ends early, or without its end-of-archive block, yields the
samples read so far and then one ``corrupt_tar``; one that cannot be opened (a failed command, an
HTTP error) is one ``unreadable_tar``.

Memory stays bounded whatever a tar declares: a member over ``max_member_bytes`` is not read (its
sample is a ``member_too_large``), a sparse member or an oversized header record stops the tar
(``sparse_member``, ``tar_header_too_large``, after the samples before it), and a sample's JSON is
refused above 1 MiB or 32 levels of nesting (:mod:`.source_json`).
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from braceexpand import braceexpand

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS
from implicit_concept.sample import SPLITS
from implicit_concept.shard_reader import (
    MAX_MEMBER_BYTES,
    STREAM_PREFIXES,
    TarRefused,
    TarSample,
    data_after_end,
    ended_cleanly,
    group_members,
    is_stream,
    open_tar,
)

from .base import RawItem, Source, split_of
from .folder import check_fraction, check_limits, decode_caption
from .source_json import encodable, read_source_json


class _TarStopped(Exception):
    """The tar cannot be read further; ``reason`` is counted once for the rest of it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class WebDatasetConfig:
    #: A brace pattern like ``/data/{00000..00009}.tar``, ``pipe:curl -s https://host/{00000..00009}.tar``
    #: or ``https://host/{00000..00009}.tar``, or a list of them.
    urls: str | tuple[str, ...]
    test_fraction: float = 0.1
    #: Member extensions that hold the image, by preference.
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "avif", "bmp", "gif", "tif", "tiff")
    caption_key: str = "txt"
    #: A tar member larger than this is not read: its sample is skipped as ``member_too_large``.
    max_member_bytes: int = MAX_MEMBER_BYTES
    #: An image with more pixels (from its header) is not decoded: ``too_large``.
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        urls = (self.urls,) if isinstance(self.urls, str) else self.urls
        if not (isinstance(urls, (list, tuple)) and urls and all(isinstance(u, str) and u for u in urls)):
            raise ValueError(f"urls must be a brace pattern or a list of them, got {self.urls!r}")
        other = [u for u in urls if "://" in u and not u.startswith(STREAM_PREFIXES)]
        if other:
            raise ValueError(f"urls: {other[0]!r}: local paths, pipe: commands and http(s) URLs are read, nothing else")
        object.__setattr__(self, "urls", tuple(urls))
        object.__setattr__(self, "test_fraction", check_fraction("test_fraction", self.test_fraction))
        keys = self.image_keys
        if not (isinstance(keys, (list, tuple)) and keys and all(isinstance(k, str) and k for k in keys)):
            raise ValueError(f"image_keys must be a non-empty list of extensions, got {keys!r}")
        object.__setattr__(self, "image_keys", tuple(k.lower() for k in keys))
        if not isinstance(self.caption_key, str) or not self.caption_key:
            raise ValueError(f"caption_key must be an extension such as 'txt', got {self.caption_key!r}")
        object.__setattr__(self, "caption_key", self.caption_key.lower())
        check_limits(self.max_member_bytes, "max_member_bytes", self.max_pixels)


def missing_tars_hint(path: str, given_in: str) -> str:
    """What to add to "tar files do not exist" for a path that was never going to be found: a glob
    (never expanded here, unlike in a shell) or a relative path (read from the current folder, not
    from the file that names it)."""
    if any(c in path for c in "*?["):
        return " (globs are not expanded: name the tars with a brace pattern, e.g. '/data/shards/{00000..00099}.tar')"
    if not os.path.isabs(path):
        where = ", not from the recipe file's folder" if given_in == "a recipe" else ""
        return f" (a relative path in {given_in} is read from the current folder, {os.getcwd()}{where})"
    return ""


class WebDatasetSource(Source):
    """Each split reads its items (by ``split_of`` of ``<tar basename>/<key>``) from every tar."""

    kind = "webdataset"

    def __init__(self, config: WebDatasetConfig) -> None:
        tars = tar_paths(config)
        missing = [p for p in tars if not is_stream(p) and not os.path.isfile(p)]
        if missing:
            raise ValueError(
                f"urls: {len(missing)} of {len(tars)} tar files do not exist, first {missing[0]!r}"
                f"{missing_tars_hint(missing[0], 'a recipe')}"
            )
        names = [_name(p) for p in tars]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            first, second = [t for t, n in zip(tars, names) if n == repeated[0]][:2]
            raise ValueError(f"urls: {first!r} and {second!r} share the name {repeated[0]!r}, so source ids would collide")
        self.config = config
        self.tars = tars
        self.max_pixels = config.max_pixels

    def fingerprint(self) -> dict[str, Any]:
        """Every tar's name and size; a stream's URL alone (its size is unknown until read)."""
        listing = [f"{p}\t{os.stat(p).st_size}" if not is_stream(p) and os.path.isfile(p) else f"{p}\t-" for p in self.tars]
        digest = hashlib.sha256("\n".join(listing).encode("utf-8", "surrogateescape")).hexdigest()
        sizes = [os.stat(p).st_size for p in self.tars if not is_stream(p) and os.path.isfile(p)]
        return {"kind": self.kind, "tars": len(self.tars), "streams": sum(map(is_stream, self.tars)), "bytes": sum(sizes), "sha256": digest}

    def shard_ids(self, split: str) -> list[int]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return list(range(len(self.tars)))

    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        if shard_id not in self.shard_ids(split):
            raise ValueError(f"{split} has no shard {shard_id} (shards: {len(self.tars)})")
        path = self.tars[shard_id]
        name = _name(path)
        keep = {*self.config.image_keys, self.config.caption_key, "json"}

        def wanted(key: str) -> bool:
            return split_of(f"{name}/{key}", self.config.test_fraction) == split

        try:
            for sample in _samples(path, wanted, keep, self.config.max_member_bytes):
                yield self._item(name, sample)
        except _TarStopped as exc:
            yield RawItem(name, None, None, {"tar": name}, error=exc.reason, detail=str(exc))

    def _item(self, name: str, sample: TarSample) -> RawItem:
        key, members = sample.key, sample.members
        source_id = f"{name}/{key}"
        if not encodable(source_id):
            return RawItem(source_id, None, None, {"tar": name}, error="undecodable_name")
        meta: dict[str, Any] = {"tar": name, "key": key}
        if sample.refused is not None:
            return RawItem(source_id, None, None, meta, error=sample.refused.reason, detail=sample.refused.detail)
        if "json" in members:
            found, skipped = read_source_json(members["json"])
            if skipped:
                return RawItem(source_id, None, None, meta, error=skipped, detail=f"{key}.json")
            meta.update(found)
        image_ext = next((k for k in self.config.image_keys if k in members), None)
        if image_ext is None:
            return RawItem(source_id, None, None, meta, error="no_image", detail=f"no member {key}.{{{','.join(self.config.image_keys)}}}")
        meta["image_ext"] = image_ext
        if self.config.caption_key not in members:
            return RawItem(source_id, None, None, meta, error="missing_caption", detail=f"no member {key}.{self.config.caption_key}")
        caption, error = decode_caption(members[self.config.caption_key])
        if error:
            return RawItem(source_id, None, None, meta, error=error, detail=f"{key}.{self.config.caption_key}")
        return RawItem(source_id, members[image_ext], caption, meta)


def tar_paths(config: WebDatasetConfig) -> list[str]:
    """The tars ``urls`` names, in shard order (whether or not they exist here)."""
    return [path for pattern in config.urls for path in braceexpand(pattern)]


def _samples(path: str, wanted: Callable[[str], bool], keep: set[str], max_member_bytes: int) -> Iterator[TarSample]:
    """Yield each wanted sample whose tar records are all there.

    A sample is known complete once the next one begins, or the tar ends with its end-of-archive
    block. On a read error, a refused header or a missing end block, the sample being read is
    dropped (it may lack members) and ``_TarStopped`` is raised after the complete ones were yielded.
    """
    complete: TarSample | None = None
    key: str | None = None
    try:
        tf = open_tar(path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        reason = "corrupt_tar" if isinstance(exc, (tarfile.TarError, EOFError, zlib.error)) else "unreadable_tar"
        raise _TarStopped(reason, f"{path}: {type(exc).__name__}: {exc}") from exc
    try:
        with tf:
            for sample in group_members(tf, wanted, keep, max_member_bytes):
                if complete is not None:
                    yield complete
                complete, key = sample, sample.key
            ended = ended_cleanly(tf)
            after = data_after_end(tf) if ended else None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if complete is not None:
            yield complete
        if isinstance(exc, TarRefused):
            raise _TarStopped(exc.reason, f"{exc.detail} (after {key!r})") from exc
        raise _TarStopped("corrupt_tar", f"{type(exc).__name__}: {exc} (after {key!r})") from exc
    if not ended:
        raise _TarStopped("corrupt_tar", f"no end-of-archive block after {key!r}")
    if complete is not None:
        yield complete
    if after is not None:
        # Never dropped without a word: what follows is recorded, not read (tar itself stops there too).
        raise _TarStopped("data_after_end_of_archive", f"{path}: data at byte {after}, after the end-of-archive block "
                          f"(after {key!r}): tars joined with cat? It is not read; split them or write one tar")


def _name(location: str) -> str:
    """A tar's name in source ids: its basename. For a pipe: command, the basename of its last word
    that names a tar (``pipe:aws s3 cp s3://b/00000.tar -`` is ``00000.tar``, as the same tar read
    from disk), else of its last word that is not an option or ``-``."""
    if not location.startswith("pipe:"):
        return os.path.basename(location.rstrip("/")) or location
    try:
        words = shlex.split(location[len("pipe:"):])
    except ValueError:
        words = location[len("pipe:"):].split()
    tars = [w for w in words if _TAR_NAME.search(w.rstrip("/"))]
    plain = [w for w in words if w != "-" and not w.startswith("-")]
    chosen = (tars or plain or words or [location])[-1]
    return os.path.basename(chosen.rstrip("/")) or chosen


#: A word of a pipe: command that names a tar shard.
_TAR_NAME = re.compile(r"\.(tar|tar\.gz|tgz)$", re.IGNORECASE)
