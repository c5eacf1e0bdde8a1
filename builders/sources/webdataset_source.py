"""Image-text tar shards in img2dataset's layout (``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``).

The tars may be local paths, ``pipe:`` commands or http(s) URLs (brace patterns in any of them), as
labs hold LAION: a stream is opened by :mod:`implicit_concept.streams` (webdataset's ``gopen``
commands; a failed or stalled one is said in words) and read with the same bounds and the
same grouping as a local file and as the project's own shards
(:func:`implicit_concept.shard_reader.group_runs`, with its bounded header reading). One input tar
is one output shard, so shard ``i`` of either split reads only tar ``i``. Members are grouped as webdataset does (its ``base_plus_ext``): the key is the member's
directory and its name up to the first dot, and consecutive members with the same key form one
sample; a key is recorded and split by its name in NFC, less a leading ``./`` (:func:`recorded_member`). A member whose name starts with a dot (macOS tar's ``._a.jpg`` AppleDouble metadata,
``.DS_Store``) or has no extension has no key: it is part of no sample, never splits one, and is a
record of its own (``hidden_file``, ``no_image``), as is a symlink or device member
(``not_a_regular_file``). Every member not used leaves a record: an image beside the one used (the
first by ``image_keys``, the folder source's extensions in its order) is a ``duplicate_image``, a key
that comes back after other keys' members (an unsorted tar) is a ``duplicate_key``, and a sample with
no image or no caption names its members and why one was not taken (a dot in the stem, an extension
not read). Members are read as bytes and only the image, caption and JSON ones are kept: nothing is
ever unpickled. A tar that ends early, or without its end-of-archive block, or whose compressed data
is damaged (gzip, bzip2 or xz: ``_DAMAGED``), yields the samples read so far and then one
``corrupt_tar``; one that cannot be opened (a failed command, an HTTP error) is
one ``unreadable_tar``. A stream is first read again (:data:`STREAM_ATTEMPTS` reads in all) when it
failed once bytes came (a dropped connection, a stall, a command's error mid-way).

Memory stays bounded whatever a tar declares: a member over ``max_member_bytes`` is not read (its
sample is a ``member_too_large``), a sparse member or an oversized header record stops the tar
(``sparse_member``, ``tar_header_too_large``, after the samples before it), and a sample's JSON is
refused above 1 MiB or 32 levels of nesting (:mod:`.source_json`); a tar's keys are remembered (to
find a repeated one) up to :data:`~implicit_concept.shard_reader.MAX_REMEMBERED_KEYS`, and a sample's member names up to
:data:`~implicit_concept.shard_reader.MAX_LISTED_NAMES`.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import posixpath
import re
import shlex
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from braceexpand import UnbalancedBracesError, braceexpand

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS
from implicit_concept.sample import SPLITS
from implicit_concept.shard_reader import (
    MAX_MEMBER_BYTES,
    MAX_REMEMBERED_KEYS,
    STREAM_PREFIXES,
    LooseMember,
    TarRefused,
    TarRun,
    data_after_end,
    describe_non_tar,
    ended_cleanly,
    group_runs,
    is_stream,
    open_tar,
    split_member_name,
)
from implicit_concept.streams import StreamFailed

from .base import (
    DEFAULT_EXTENSIONS, HIDDEN, MAX_PLANNED_SHARDS, RawItem, Source, SourceNotFound, check_fraction, check_limits, hidden_detail, raise_cap,
    recorded_name, split_of, undecodable_detail,
)
from .caption_text import read_caption
from .source_json import encodable, json_caption_hint, read_source_json


#: Reads of a stream that fails in a way another read may not, and the wait before the next (times the reads so far).
STREAM_ATTEMPTS = 3
STREAM_RETRY_SECONDS = 2.0


class _TarStopped(Exception):
    """The tar cannot be read further; ``reason`` is counted once for the rest of it."""

    def __init__(self, reason: str, detail: str, transient: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        #: A stream's failure that reading it again may not meet (a dropped connection, a stall).
        self.transient = transient


@dataclass(frozen=True)
class WebDatasetConfig:
    #: A brace pattern like ``/data/{00000..00009}.tar``, ``pipe:curl -s https://host/{00000..00009}.tar``
    #: or ``https://host/{00000..00009}.tar``, or a list of them.
    urls: str | tuple[str, ...]
    test_fraction: float = 0.1
    #: Member extensions that hold the image, by preference: the folder source's, in its order.
    image_keys: tuple[str, ...] = DEFAULT_EXTENSIONS
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
        for url in urls:
            _refuse_credentials(url)
        object.__setattr__(self, "urls", tuple(urls))
        object.__setattr__(self, "test_fraction", check_fraction("test_fraction", self.test_fraction))
        keys = self.image_keys
        if not (isinstance(keys, (list, tuple)) and keys and all(isinstance(k, str) and k for k in keys)):
            raise ValueError(f"image_keys must be a non-empty list of extensions, got {keys!r}")
        object.__setattr__(self, "image_keys", tuple(k.lower() for k in keys))
        if not isinstance(self.caption_key, str) or not self.caption_key:
            raise ValueError(f"caption_key must be an extension such as 'txt', got {self.caption_key!r}")
        object.__setattr__(self, "caption_key", self.caption_key.lower())
        # One member, one use: a caption_key of "json" made the sidecar's raw JSON text the caption.
        if "json" in self.image_keys:
            raise ValueError("image_keys: 'json' is a sample's metadata member (read into source.meta), not an image")
        if self.caption_key in (*self.image_keys, "json"):
            used = "the metadata member read into source.meta" if self.caption_key == "json" else "one of image_keys"
            raise ValueError(f"caption_key {self.caption_key!r} is {used}: a caption is a text member of its own, such as 'txt'")
        check_limits(self.max_member_bytes, "max_member_bytes", self.max_pixels)


def missing_tars_hint(path: str, given_in: str) -> str:
    """What to add to "tar files do not exist" for a path that was never going to be found: a glob
    (never expanded here, unlike in a shell) or a relative path (read from the current folder, not
    from the file that names it); else what the folder holds: no such folder, or the tars there and
    the brace pattern that names them (img2dataset leaves out a shard it could not write, so the
    numbers may have gaps; or they are 6 digits where 5 were given)."""
    if path.startswith("~"):
        return f" (a '~' is not expanded here, only by a shell and outside quotes: write the full path, {os.path.expanduser(path)!r}?)"
    if any(c in path for c in "*?["):
        example = tars_pattern(Path(path).parent) or "'/data/shards/{00000..00099}.tar'"
        return f" (globs are not expanded: name the tars with a brace pattern, e.g. {example})"
    if not os.path.isabs(path):
        where = ", not from the recipe file's folder" if given_in == "a recipe" else ""
        return f" (a relative path in {given_in} is read from the current folder, {os.getcwd()}{where})"
    folder = Path(path).parent
    if not folder.is_dir():
        return f" (no folder {str(folder)!r})"
    example = tars_pattern(folder)
    return f" ({str(folder)!r} holds no .tar, .tar.gz or .tgz file)" if example is None else f" (the tars in that folder: {example})"


#: The endings of a tar shard's file name.
TAR_ENDINGS = (".tar", ".tar.gz", ".tgz")
#: Runs of consecutive numbers a suggested brace pattern spells out at most.
MAX_PATTERN_RUNS = 12


def tars_pattern(folder: Path) -> str | None:
    """A brace pattern naming every tar in ``folder``, quoted (numbered ones as ranges, gaps left out:
    ``'/d/{{00000..00002},00004}.tar'``; the first and last past :data:`MAX_PATTERN_RUNS` gaps), else
    its first tar's path; None when it holds none."""
    try:
        tars = sorted(p.name for p in folder.iterdir() if p.name.endswith(TAR_ENDINGS) and not p.name.startswith("."))
    except OSError:
        return None
    if not tars:
        return None
    stems = [t.split(".", 1)[0] for t in tars]
    suffix = tars[0][len(stems[0]):]
    numbered = all(t == f"{s}{suffix}" and s.isdigit() and len(s) == len(stems[0]) for s, t in zip(stems, tars))
    if not numbered or len(tars) == 1:
        return f"'{folder / tars[0]}'"
    runs: list[list[str]] = []
    for stem in stems:
        if runs and int(stem) == int(runs[-1][-1]) + 1:
            runs[-1][1:] = [stem]
        else:
            runs.append([stem])
    if len(runs) > MAX_PATTERN_RUNS:  # a pattern too long to read
        return (f"'{folder / tars[0]}' to '{folder / tars[-1]}', {len(tars)} tars with {len(runs) - 1} gaps: "
                f"list them in a recipe's urls")
    ranges = [f"{run[0]}..{run[-1]}" if len(run) > 1 else run[0] for run in runs]
    braces = f"{{{ranges[0]}}}" if len(ranges) == 1 else "{" + ",".join(f"{{{r}}}" if ".." in r else r for r in ranges) + "}"
    return f"'{folder / f'{braces}{suffix}'}'"


class WebDatasetSource(Source):
    """Each split reads its items (by ``split_of`` of ``<tar basename>/<key>``) from every tar."""

    kind = "webdataset"

    def __init__(self, config: WebDatasetConfig) -> None:
        tars = tar_paths(config)
        missing = [p for p in tars if not is_stream(p) and not os.path.isfile(p)]
        if missing:
            raise SourceNotFound(
                f"urls: {len(missing)} of {len(tars)} tar files do not exist, first {missing[0]!r}"
                f"{missing_tars_hint(missing[0], 'a recipe')}"
            )
        names = [recorded_name(_name(p)) for p in tars]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            first, second = [t for t, n in zip(tars, names) if n == repeated[0]][:2]
            raise ValueError(f"urls: {first!r} and {second!r} share the name {repeated[0]!r}, so source ids would collide")
        self.config = config
        self.tars = tars
        self.max_pixels = config.max_pixels

    def fingerprint(self) -> dict[str, Any]:
        """Every tar's name, size and modification time, as a folder's files (a member appended with
        ``tar -r`` may fit in the tar's last record, leaving its size as it was); a stream's URL alone
        (its size is unknown until read). A local tar is its name, as in source ids, not its folder's
        path: tars moved whole resume where they stopped."""
        stats = {p: os.stat(p) for p in self.tars if not is_stream(p) and os.path.isfile(p)}
        names = {p: public_location(p) if is_stream(p) else _name(p) for p in self.tars}
        listing = [f"{names[p]}\t{stats[p].st_size}\t{stats[p].st_mtime_ns}" if p in stats else f"{names[p]}\t-" for p in self.tars]
        digest = hashlib.sha256("\n".join(listing).encode("utf-8", "surrogateescape")).hexdigest()
        sizes = [info.st_size for info in stats.values()]
        return {"kind": self.kind, "tars": len(self.tars), "streams": sum(map(is_stream, self.tars)), "bytes": sum(sizes), "sha256": digest}

    def shard_ids(self, split: str) -> list[int]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return list(range(len(self.tars)))

    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        if shard_id not in self.shard_ids(split):
            raise ValueError(f"{split} has no shard {shard_id} (shards: {len(self.tars)})")
        path = self.tars[shard_id]
        name = recorded_name(_name(path))
        keep = {*self.config.image_keys, self.config.caption_key, "json"}
        forms: dict[str, str] = {}

        def wanted(rel: str) -> bool:
            return split_of(f"{name}/{recorded_member(rel)}", self.config.test_fraction) == split

        # A stream cut short once bytes came (a dropped connection, a stall, a command's error) is read
        # again from its start, its samples already given passed over: the shard is then what an
        # unbroken read gives, not what the network allowed that day.
        given, attempts = 0, STREAM_ATTEMPTS if is_stream(path) else 1
        for attempt in range(1, attempts + 1):
            try:
                for index, event in enumerate(_events(path, wanted, keep, self.config.max_member_bytes)):
                    if index < given:
                        continue
                    given += 1
                    yield from self._event_items(name, event, forms)
                return
            except _TarStopped as exc:
                if exc.transient and attempt < attempts:
                    time.sleep(STREAM_RETRY_SECONDS * attempt)
                    continue
                tried = f" ({attempts} reads)" if exc.transient and attempts > 1 else ""
                yield RawItem(name, None, None, {"tar": name}, error=exc.reason, detail=recorded_name(f"{exc}{tried}"))
                return

    def _event_items(self, name: str, event: TarRun | LooseMember, forms: dict[str, str]) -> Iterator[RawItem]:
        """The records of one run or loose member, its names as recorded (:func:`recorded_member`: a
        tar made on a Mac, or of ``.``, gives the items of the same tar made elsewhere); a key that came
        before written another way is a ``name_form_clash``. ``forms`` holds the tar's keys so far, by
        recorded name."""
        if isinstance(event, TarRun):
            key = recorded_member(event.key)
            earlier = forms.get(key)
            if earlier is not None and earlier != event.key:
                source_id = f"{name}/{event.key}"
                yield RawItem(source_id, None, None, {"tar": name}, error="name_form_clash", detail=(
                    f"{name}/{key}: key {ascii(event.key)} and the earlier key {ascii(earlier)} are one name written two "
                    f"ways (Unicode forms NFC and NFD: members added on a Mac?; or with and without './'): its members "
                    f"{ascii(event.listing())} are not read; give the key's members one name"))
                return
            if len(forms) < MAX_REMEMBERED_KEYS:
                forms.setdefault(key, event.key)
            items = self._items(name, event)
        else:
            source_id = f"{name}/{event.name}"
            if not encodable(source_id):
                items = iter([RawItem(source_id, None, None, {"tar": name}, error="undecodable_name", detail=undecodable_detail(source_id))])
            else:
                items = iter([RawItem(source_id, None, None, {"tar": name, "member": event.name}, *_loose_record(event))])
        for item in items:
            names = {k: recorded_member(v) if k in ("key", "member") else v for k, v in item.meta.items()}
            source_id = f"{name}/{recorded_member(item.source_id[len(name) + 1:])}"
            yield RawItem(source_id, item.image, item.caption, names, item.error, recorded_name(item.detail))

    def _items(self, name: str, run: TarRun) -> Iterator[RawItem]:
        """The item of one run of a key's members, then a ``duplicate_image`` record for each image
        member beside the one used (the first by ``image_keys``, as in a folder)."""
        key, members = run.key, run.members
        source_id = f"{name}/{key}"
        if not encodable(source_id):
            yield RawItem(source_id, None, None, {"tar": name}, error="undecodable_name", detail=undecodable_detail(source_id))
            return
        meta: dict[str, Any] = {"tar": name, "key": key}
        if run.repeat:
            yield RawItem(source_id, None, None, meta, error="duplicate_key", detail=(
                f"key {key!r} again, after other keys' members: its members {run.listing()} are not read (an item of key "
                f"{key!r} came earlier in this tar). A sample's members must be consecutive, as webdataset groups them: "
                f"the tar is not sorted by name; sort it (e.g. GNU tar --sort=name) to make them one item"))
            return
        if run.refused is not None:
            cap = raise_cap("max_member_bytes") if run.refused.reason == "member_too_large" else ""
            yield RawItem(source_id, None, None, meta, error=run.refused.reason, detail=f"{run.refused.detail}{cap}")
            return
        images = [k for k in self.config.image_keys if k in members]
        yield self._item(source_id, run, meta, images)
        for ext in images[1:]:
            member = run.names_by_ext[ext]
            duplicate = f"{name}/{member}"
            if not encodable(duplicate):
                yield RawItem(duplicate, None, None, {"tar": name}, error="undecodable_name", detail=undecodable_detail(duplicate))
                continue
            yield RawItem(duplicate, None, None, {"tar": name, "key": key, "member": member}, error="duplicate_image",
                          detail=f"{member}: {run.names_by_ext[images[0]]} of the same key is used")

    def _item(self, source_id: str, run: TarRun, meta: dict[str, Any], images: list[str]) -> RawItem:
        key, members = run.key, run.members
        if "json" in members:
            found, skipped = read_source_json(members["json"])
            if skipped:
                return RawItem(source_id, None, None, meta, error=skipped, detail=f"{key}.json")
            meta.update(found)
        if not images:
            return RawItem(source_id, None, None, meta, error="no_image", detail=(
                f"key {key!r}: no image member ({', '.join(self.config.image_keys)}) among its members {run.listing()}"
                f"{self._hints(run)}"))
        meta["image_ext"] = images[0]
        caption_key = self.config.caption_key
        if caption_key not in members:
            return RawItem(source_id, None, None, meta, error="missing_caption", detail=(
                f"key {key!r}: no caption member {key}.{caption_key} among its members {run.listing()}{self._hints(run)}"
                f"{json_caption_hint(meta, run.names_by_ext.get('json'), f'{key}.{caption_key}')}"))
        caption, error, why = read_caption(members[caption_key])
        if error:
            return RawItem(source_id, None, None, meta, error=error, detail=f"{run.names_by_ext[caption_key]}: {why}")
        return RawItem(source_id, members[images[0]], caption, meta)

    def _hints(self, run: TarRun) -> str:
        """Why members a person takes for an image or caption are not: a dot in the file stem (the
        key ends at the first dot), an extension that is not read."""
        known = {*self.config.image_keys, self.config.caption_key, "json"}
        dotted, unknown = [], []
        for member in run.names:
            ext = split_member_name(member)[1]
            last = ext.rsplit(".", 1)[-1]
            if "." in ext and last in known:
                dotted.append((member, ext, posixpath.basename(member)[: -len(last) - 1], last))
            elif ext not in known and last not in known:
                unknown.append((member, ext))
        hints = []
        if dotted:
            stem, last = dotted[0][2:]
            names, exts = ", ".join(repr(d[0]) for d in dotted), ", ".join(repr(d[1]) for d in dotted)
            plural = len(dotted) > 1
            hints.append(f"{names} {'are' if plural else 'is'} key {run.key!r} with extension{'s' if plural else ''} {exts}, "
                         f"not key {stem!r}: a key ends at the first dot of a name (webdataset's rule), so name files "
                         f"without a dot before the extension ({stem.replace('.', '_')}.{last})")
        if unknown:
            names, exts = ", ".join(repr(u[0]) for u in unknown), ", ".join(repr(u[1]) for u in unknown)
            plural = len(unknown) > 1
            hints.append(f"extension{'s' if plural else ''} {exts} of {names} {'are' if plural else 'is'} not read "
                         f"(images: {', '.join(self.config.image_keys)}; caption: {self.config.caption_key}; a recipe's "
                         f"[source] image_keys and caption_key read others)")
        return "".join(f"; {h}" for h in hints)


def recorded_member(name: str) -> str:
    """A member's name or key as source ids and the split hash hold it: NFC (:func:`recorded_name`),
    without the ``./`` that ``tar -cf shard.tar -C DIR .`` puts before every name, so a tar repacked
    another way is the same items."""
    name = recorded_name(name)
    while name.startswith("./"):
        name = name[2:]
    return name


def _loose_record(member: LooseMember) -> tuple[str, str]:
    """The reason and text recorded for a member that is part of no sample."""
    if member.kind == "hidden":
        return HIDDEN, hidden_detail(member.name, "member")
    if member.kind == "no_extension":
        return "no_image", f"{member.name}: no extension, so no key (webdataset's rule): part of no sample; not read"
    return "not_a_regular_file", f"{member.name}: a tar {member.kind} member, not a file; not read"


def tar_paths(config: WebDatasetConfig) -> list[str]:
    """The tars ``urls`` names, in shard order (whether or not they exist here)."""
    return expand_tars(config.urls)


def _refuse_credentials(url: str) -> None:
    """A user or password in a URL would be published: the recipe, the dataset card and the records
    of a build all hold its source as given. curl finds them in ``~/.netrc`` instead."""
    if not url.startswith(("http://", "https://")):
        return
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return
    shown = parts._replace(netloc=f"***@{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}").geturl()
    raise ValueError(f"urls: {shown!r}: holds a user or password, which the recipe, the dataset card and the build's records "
                     "would publish; put them in ~/.netrc (curl reads it) and leave them out of the URL")


def expand_tars(patterns: tuple[str, ...] | list[str], field: str = "urls") -> list[str]:
    """The names brace ``patterns`` expand to, counted first: braceexpand builds every name of a
    range before the first (``{000000000000..999999999999}`` would fill memory), so more than
    :data:`MAX_PLANNED_SHARDS` in all is refused, naming the pattern, before any is made."""
    total = 0
    for pattern in patterns:
        try:
            total += brace_count(pattern)
        except UnbalancedBracesError:
            raise ValueError(f"{field}: {pattern!r}: unbalanced braces") from None
        except RecursionError:
            raise ValueError(f"{field}: {pattern!r}: braces nested too deeply") from None
        if total > MAX_PLANNED_SHARDS:
            raise ValueError(f"{field}: {pattern!r} names more than {MAX_PLANNED_SHARDS} tars, the shards a split may have")
    return [path for pattern in patterns for path in braceexpand(pattern)]


def brace_count(pattern: str) -> int:
    """How many names ``braceexpand(pattern)`` gives, without making them: its grammar (0.1.7's
    parse_pattern, parse_expression, parse_sequence), counted. Raises ``UnbalancedBracesError`` as it does."""
    total, start, depth, pos = 1, 0, 0, 0
    while pos < len(pattern):
        if pattern[pos] == "\\":
            pos += 2
            continue
        if pattern[pos] == "{":
            if depth == 0:
                start = pos
            depth += 1
        elif pattern[pos] == "}":
            depth -= 1
            if depth == 0:
                expr = pattern[start + 1:pos]
                counted = _brace_expression_count(expr)
                total *= brace_count(expr) if counted is None else counted
                start = pos + 1
        pos += 1
    if depth != 0:
        raise UnbalancedBracesError(f"Unbalanced braces: '{pattern}'")
    return total


_INT_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.-?(\d+))?$")
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _brace_expression_count(expr: str) -> int | None:
    """The names of one ``{...}``: a range's length, a sequence's sum; None when it is neither."""
    if match := _INT_RANGE.match(expr):
        first, last, step = int(match[1]), int(match[2]), (int(match[3]) or 1) if match[3] else 1
        return len(range(first, last + 1, step) if first < last else range(first, last - 1, -step))
    if match := _CHAR_RANGE.match(expr):
        first, last, step = _ALPHABET.index(match[1]), _ALPHABET.index(match[2]), (int(match[3]) or 1) if match[3] else 1
        return len(_ALPHABET[first:last + 1:step] if first < last else _ALPHABET[first:(last or -len(_ALPHABET)) - 1:-step])
    parts, start, depth, pos = [], 0, 0, 0
    while pos < len(expr):
        if expr[pos] == "\\":
            pos += 2
            continue
        if expr[pos] == "{":
            depth += 1
        elif expr[pos] == "}":
            depth -= 1
        elif expr[pos] == "," and depth == 0:
            parts.append(expr[start:pos])
            start = pos + 1
        pos += 1
    if depth != 0 or not parts:
        return None
    return sum(brace_count(part) for part in [*parts, expr[start:]])


#: What reading a tar raises where its bytes are damaged: tarfile's errors, and each decompressor's
#: (gzip's ``BadGzipFile`` and bzip2's are ``OSError``; xz's ``LZMAError`` is not, and stopped the build).
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def _events(path: str, wanted: Callable[[str], bool], keep: set[str], max_member_bytes: int) -> Iterator[TarRun | LooseMember]:
    """Yield each wanted run whose tar records are all there, and each loose member.

    A run is known complete once the next one begins, or the tar ends with its end-of-archive
    block. On a read error, a refused header or a missing end block, the run being read is
    dropped (it may lack members) and ``_TarStopped`` is raised after the complete ones were yielded.
    """
    complete: TarRun | LooseMember | None = None
    last: str | None = None
    try:
        tf = open_tar(path)
    except (*_DAMAGED, OSError) as exc:
        reason = "corrupt_tar" if isinstance(exc, _DAMAGED) else "unreadable_tar"
        if isinstance(exc, StreamFailed):  # its text names the stream and says what failed
            raise _TarStopped(reason, str(exc).replace(path, _recorded(path)), exc.transient) from exc
        if reason == "corrupt_tar":
            said = str(exc) if is_stream(path) else describe_non_tar(path)
        else:
            said = f"{type(exc).__name__}: {exc.strerror or exc}"
        raise _TarStopped(reason, f"{_recorded(path)}: {said}") from exc
    try:
        with tf:
            for event in group_runs(tf, wanted, keep, max_member_bytes):
                if complete is not None:
                    yield complete
                complete, last = event, event.key if isinstance(event, TarRun) else event.name
            ended = ended_cleanly(tf)
            after = data_after_end(tf) if ended else None
    except (*_DAMAGED, OSError) as exc:
        if complete is not None:
            yield complete
        if isinstance(exc, TarRefused):
            raise _TarStopped(exc.reason, f"{exc.detail} ({_after(last)})") from exc
        if isinstance(exc, StreamFailed):
            raise _TarStopped("corrupt_tar", f"{str(exc).replace(path, _recorded(path))} ({_after(last)})", exc.transient) from exc
        said = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise _TarStopped("corrupt_tar", f"{type(exc).__name__}: {said} ({_after(last)})") from exc
    if not ended:
        raise _TarStopped("corrupt_tar", f"no end-of-archive block ({_after(last)})")
    if complete is not None:
        yield complete
    if after is not None:
        # Never dropped without a word: what follows is recorded, not read (tar itself stops there too).
        raise _TarStopped("data_after_end_of_archive", f"{_recorded(path)}: data at byte {after}, after the end-of-archive block "
                          f"({_after(last)}): tars joined with cat? It is not read; split them or write one tar")


def _after(last: str | None) -> str:
    """Where a tar's read stopped, as its skip record says it: after the last sample it gave, or
    before any (the record said "after None")."""
    return f"after {last!r}" if last is not None else "before any sample of the split"


def _recorded(location: str) -> str:
    """A tar as a skip's message and source ids name it: a local one by its name in NFC (the message
    is recorded in the shards' tables, the same bytes wherever the tars lie), a stream as
    :func:`public_location` gives it."""
    return public_location(location) if is_stream(location) else recorded_name(_name(location))


def public_location(location: str) -> str:
    """An http(s) URL less its query and fragment, as records hold it (a presigned URL's token
    changes when it is signed again, while the tar does not, and is a credential the dataset's
    records would publish); any other location as given."""
    if not location.startswith(("http://", "https://")):
        return location
    return urlsplit(location)._replace(query="", fragment="").geturl()


def _name(location: str) -> str:
    """A tar's name in source ids: its basename (an http(s) URL's, less its query: a signed URL's
    token changes, the tar does not). For a pipe: command, the last tar a word of it names, wherever
    in the word (``pipe:aws s3 cp s3://b/00000.tar -`` and ``pipe:sh -c 'curl -s URL/00000.tar | zstd -d'``
    are ``00000.tar``, as the same tar read from disk), else the basename of its last word that is
    not an option or ``-``."""
    if not location.startswith("pipe:"):
        path = urlsplit(location).path if location.startswith(("http://", "https://")) else location
        return posixpath.basename(path.rstrip("/")) or location
    try:
        words = shlex.split(location[len("pipe:"):])
    except ValueError:
        words = location[len("pipe:"):].split()
    tars = [found for w in words for found in _TAR_NAME.findall(w)]
    if tars:
        return tars[-1]
    plain = [w for w in words if w != "-" and not w.startswith("-")]
    chosen = (plain or words or [location])[-1]
    return os.path.basename(chosen.rstrip("/")) or chosen


#: A tar a word of a pipe: command names: a name ending in .tar (compressed or not) or .tgz, at the end of the
#: word or before what ends a path in a shell command or a URL (``;``, ``|``, a quote, ``?``).
_TAR_NAME = re.compile(r"([^\s/'\";|&<>()=:]+\.(?:tar(?:\.(?:gz|zst|xz|bz2|lz4))?|tgz))(?![\w.-])", re.IGNORECASE)
