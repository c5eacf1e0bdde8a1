"""Reading ICD shards back as :class:`~implicit_concept.sample.Sample` objects, and the one rule
(:func:`group_runs`, webdataset's) by which any tar's members become samples.

Accepts a shard set folder (every ``*.tar`` below it, sorted), one tar, or a brace pattern
(``data/icd-qrcode/train/{00000..00003}.tar``), and, as webdataset does, ``pipe:`` commands and
http(s) URLs: those run the commands webdataset's ``gopen`` runs (``curl`` for http), opened by
:mod:`~implicit_concept.streams` (failures in words, stalls stopped), and are read as a stream.
webdataset's own tar iterator reads every member whole, through tarfile's unbounded header parsing,
and drops hard links, so it is not used: a local file and a stream go through the same bounded
reading and grouping below. Only images, text and JSON are decoded: nothing is ever unpickled.

A tar's headers say how much memory reading it takes, and a hostile one lies: a 10 KB tar can hold a
sparse member of 2 GiB, a 2 MB ``.tar.gz`` a member (or a long-name header) of 2 GB of zeros, a
stream of millions of empty members. So every tar is read within bounds: members above a byte cap
are not read, sparse members and oversized header records refuse the tar, and headers are
forgotten once read. A hard link to a member read earlier in the same tar gets that member's bytes
(from the same sample, or re-read from a local file; a stream cannot go back, and a link it cannot
resolve makes its sample ``unresolved_hard_link``).
"""
from __future__ import annotations

import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator, NamedTuple

from braceexpand import braceexpand

from implicit_concept.bounded_reads import file_kind
from implicit_concept.file_locks import read_locked
from implicit_concept.image_decode import DEFAULT_MAX_PIXELS, decode_rgb, load_pixels, open_image
from implicit_concept.json_records import parse_json
from implicit_concept.sample import Sample, SampleMeta
from implicit_concept.sample_error import SampleError
from implicit_concept.streams import open_stream

#: The largest member read into memory, unless a caller sets its own cap.
MAX_MEMBER_BYTES = 64 << 20
#: The largest header record (GNU long name, pax header) parsed, and the most pax settings kept.
MAX_HEADER_BYTES = 1 << 20
#: Header records that may precede one member (pax, long name, long link); tarfile recurses on each.
MAX_HEADER_CHAIN = 8
#: The largest KEY.json parsed: each one is a few kilobytes.
MAX_JSON_BYTES = 1 << 20
#: What our own shards hold (img2dataset's layout); the shard reader reads nothing else.
SHARD_EXTENSIONS = ("jpg", "txt", "json", "clean.jpg", "mask.png")
#: Kept members of a local tar whose place is remembered, so that a later hard link can be resolved.
MAX_LINK_TARGETS = 1 << 16
#: The record at the top of a built dataset's folder, written before its first shard: the folder a
#: build holds the lock of (inside it) while it writes.
DATASET_RECORD = "recipe.json"
#: What a shard or source location may start with to be opened as a stream (:mod:`~implicit_concept.streams`).
STREAM_PREFIXES = ("pipe:", "http://", "https://")

_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class ShardError(ValueError):
    """A shard or one of its members cannot be read; the message names the file."""


class TarRefused(tarfile.TarError):
    """A tar holds what is never read (a sparse member, an oversized header); ``reason`` is counted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TarSample(NamedTuple):
    """One sample's members, or why they were not read (``refused``: a member over the cap)."""

    key: str
    members: dict[str, bytes]
    refused: SampleError | None = None


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header parsing, refusing what would make it read without bound, and noting
    whether the tar ended on its end-of-archive block (tarfile stops quietly at a missing one)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        tar._ended = False  # type: ignore[attr-defined]
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar._ended = True  # type: ignore[attr-defined]
            raise

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise TarRefused("sparse_member", f"{self.name!r} is a sparse member")
        if self.type not in _HEADER_TYPES:
            return super()._proc_member(tar)
        if self.size > MAX_HEADER_BYTES:
            raise TarRefused("tar_header_too_large", f"a {self.size}-byte header record before {self.name!r}")
        chain = getattr(tar, "_header_chain", 0) + 1
        if chain > MAX_HEADER_CHAIN:
            raise TarRefused("tar_header_too_large", f"more than {MAX_HEADER_CHAIN} header records before one member")
        tar._header_chain = chain  # type: ignore[attr-defined]
        try:
            member = super()._proc_member(tar)
        finally:
            tar._header_chain = chain - 1  # type: ignore[attr-defined]
        if sum(len(k) + len(v) for k, v in tar.pax_headers.items()) > MAX_HEADER_BYTES:
            raise TarRefused("tar_header_too_large", f"global pax settings over {MAX_HEADER_BYTES} bytes")
        if member.issparse():
            raise TarRefused("sparse_member", f"{member.name!r} is a sparse member")
        return member

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict, tar: tarfile.TarFile) -> None:
        # Its map is read from the data area with no bound; the member is refused anyway.
        raise TarRefused("sparse_member", f"{next.name!r} is a sparse member")


class _StreamTarFile(tarfile.TarFile):
    """A tar read from a stream, closed (its command ended, its connection let go) however the block
    reading it ends: tarfile's own ``__exit__`` leaves a file it was handed open when the block raised,
    or when a generator reading it was closed early, and a ``pipe:`` command ran on, blocked."""

    def __exit__(self, *exc_info: object) -> None:  # type: ignore[override]
        self.close()


def is_stream(location: str | Path) -> bool:
    """Whether ``location`` is a ``pipe:`` command or an http(s) URL rather than a local path."""
    return isinstance(location, str) and location.startswith(STREAM_PREFIXES)


def open_tar(path: str | Path, mode: str = "r:*") -> tarfile.TarFile:
    """Open a tar for reading with bounded header parsing (see the module docstring): a local file,
    or a ``pipe:`` command or http(s) URL opened by :func:`~implicit_concept.streams.open_stream` and read as a stream."""
    if not is_stream(path):
        try:
            return tarfile.open(path, mode, tarinfo=_BoundedTarInfo)
        except tarfile.ReadError:  # tarfile's own text is a line per compression it tried
            raise tarfile.ReadError(describe_non_tar(path)) from None
    stream = io.BufferedReader(open_stream(str(path)), 1 << 16)
    try:
        # By its bytes, not its name (a local tar is opened so too): gzip's reader takes concatenated
        # members, tarfile's stream does not.
        head = stream.peek(512)[:512]
        try:
            if head[:2] == b"\x1f\x8b":
                tar = _StreamTarFile.open(fileobj=gzip.GzipFile(fileobj=stream, mode="rb"), mode="r|", tarinfo=_BoundedTarInfo)
            else:
                tar = _StreamTarFile.open(fileobj=stream, mode="r|*", tarinfo=_BoundedTarInfo)
        except tarfile.ReadError:
            # What it is instead (an HTML page served in the tar's place); a failed command's error replaces this at close.
            raise tarfile.ReadError(describe_head(head, "stream")) from None
    except BaseException:
        stream.close()
        raise
    tar.streaming = True  # type: ignore[attr-defined]
    close = tar.close

    def close_both() -> None:
        try:
            close()
        finally:
            stream.close()

    tar.close = close_both  # type: ignore[method-assign]
    return tar


#: What a file that tarfile cannot open often is instead, by its first bytes.
_NOT_TAR_SIGNATURES = (
    (b"\x28\xb5\x2f\xfd", "zstd data, not a tar: decompress it (zstd -d), or name it as 'pipe:zstd -dc FILE'"),
    (b"PK\x03\x04", "a zip archive, not a tar"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive, not a tar"),
    (b"\x1f\x8b", "gzip data that does not hold a readable tar (cut short, or another file compressed)"),
    (b"BZh", "bzip2 data that does not hold a readable tar"),
    (b"\xfd7zXZ\x00", "xz data that does not hold a readable tar"),
    (b"PAR1", "a parquet table, not a tar (img2dataset writes one beside each tar it makes, and puts the images "
              "in it only with --output_format parquet): name the .tar files, made with --output_format webdataset"),
)


def describe_non_tar(path: str | Path) -> str:
    """What a local file that does not open as a tar is, in words: empty, another archive, text (an
    error page saved by a failed download), or bytes without a tar header. tarfile itself says
    'file could not be opened successfully' with a line per compression it tried."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if head.startswith(b"\x1f\x8b") and _gzip_holds_tar(path):
        return "a gzip-compressed tar, where a plain tar is read (gunzip it)"
    return describe_head(head, "file")


def _gzip_holds_tar(path: str | Path) -> bool:
    """Whether gzip data begins with a valid tar header: a compressed tar handed to a reader of
    plain ones (``verify``) is then named as one, not as a broken file."""
    try:
        with gzip.open(path, "rb") as f:
            block = f.read(tarfile.BLOCKSIZE)
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except (OSError, EOFError, zlib.error, tarfile.HeaderError):
        return False
    return True


def describe_head(head: bytes, what: str) -> str:
    """What a ``what`` (a file, a stream) that begins with ``head`` (its first 512 bytes) and does not
    open as a tar is, in words."""
    if not head:
        return f"an empty {what} (0 bytes), not a tar"
    for magic, what in _NOT_TAR_SIGNATURES:
        if head.startswith(magic):
            return what
    printable = sum(32 <= b < 127 or b in b"\t\r\n" for b in head)
    if printable == len(head):
        start = head.decode("ascii").strip()[:40]
        return f"text, not a tar (it begins {start!r}: an error page or a listing saved in the tar's place?)"
    return f"not a readable tar (its first {len(head)} bytes hold no valid tar header; they begin {head[:8].hex(' ')})"


def ended_cleanly(tar: tarfile.TarFile) -> bool:
    """Whether the last header read was the end-of-archive block (not a cut or garbled tar)."""
    return bool(getattr(tar, "_ended", False))


def data_after_end(tar: tarfile.TarFile, chunk: int = 1 << 20) -> int | None:
    """After a tar ended on its end-of-archive block: the offset of the first non-zero byte that
    follows (another tar joined on with ``cat``, or garbage), or None when only zeros follow. A
    local file is read from the end block on; a stream, from where tarfile stopped."""
    fileobj = tar.fileobj
    offset = tar.offset
    if not getattr(tar, "streaming", False):
        fileobj.seek(offset)
    else:
        offset = fileobj.tell() if hasattr(fileobj, "tell") else offset
    while data := fileobj.read(chunk):
        stripped = data.lstrip(b"\0")
        if stripped:
            return offset + len(data) - len(stripped)
        offset += len(data)
    return None


def iter_headers(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Every member header, in order. tarfile keeps each header it reads; these are forgotten."""
    while (info := tar.next()) is not None:
        tar.members.clear()
        if info.issparse():
            raise TarRefused("sparse_member", f"{info.name!r} is a sparse member")
        yield info


def list_shards(path: str | Path) -> list[Path | str]:
    """The shards ``path`` names, in order; streams (``pipe:``, http(s)) are passed on unopened."""
    if is_stream(path):
        return list(braceexpand(str(path)))
    p = Path(path)
    if p.is_dir():
        _wait_for_build(p)
        shards = sorted(p.rglob("*.tar"))
    elif "{" in str(path):
        shards = [Path(s) for s in braceexpand(str(path))]
        _wait_for_build(shards[0])
    else:
        _wait_for_build(p)
        shards = [p]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise ShardError(f"{missing[0]}: {_not_a_file(Path(missing[0]))}")
    if not shards:
        raise ShardError(f"{path}: no .tar shards found")
    return shards


def _wait_for_build(path: Path) -> None:
    """Wait while a build writes the dataset ``path`` lies in (the folder of its record, ``path`` or
    up to three levels above: a subset, split or shard): listed meanwhile, its shards were those
    finished so far, and a reader (show, export, a detector's training) went on with part of the
    data, saying nothing. A build started after the listing only adds shards whole."""
    real = path.resolve()
    for folder in [real, *real.parents][:4]:
        if (folder / DATASET_RECORD).is_file():
            with read_locked(folder):
                return


def _not_a_file(path: Path) -> str:
    """What stands where a shard file is named, in words: nothing, a folder, a symlink that leads
    nowhere (its target missing, or a loop), or a FIFO or device (which would block or never end)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "no such shard file"
    if stat.S_ISDIR(mode):
        return "a folder, not a shard file"
    if stat.S_ISLNK(mode):
        return f"a symlink to {os.readlink(path)!r}, which leads to no file (its target missing, or a loop)"
    return f"{file_kind(mode)}, not a regular file; not read"


def split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's rule: key = directory + basename up to its first dot; extension = the rest."""
    directory, base = posixpath.split(name)
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return posixpath.join(directory, stem), ext.lower()


#: The keys of a tar remembered to find one repeated after other keys' members (``duplicate_key``);
#: an img2dataset shard holds 10 000. Past this many, a repeat of a key not remembered goes unseen.
MAX_REMEMBERED_KEYS = 1 << 17
#: The member names of one run kept for its messages.
MAX_LISTED_NAMES = 16


def is_hidden(name: str) -> bool:
    """Whether the file name, or a folder's on its path, starts with a dot: webdataset gives such a
    tar member no key (``._a.jpg`` is macOS tar's metadata of ``a.jpg``), and what lies in a hidden
    folder (``.thumbnails/``, ``.Trash-1000/``, ``.ipynb_checkpoints/``: another tool's copies of
    the photos, or deleted ones) is no more the lab's data, in a tar or a folder. ``./``, the prefix
    of ``tar -C DIR .``'s members, is not a hidden folder."""
    return any(part.startswith(".") and part not in (".", "..") for part in name.split("/"))


@dataclass
class TarRun:
    """A key's consecutive members (one sample as webdataset groups them): every member's name (up
    to :data:`MAX_LISTED_NAMES`), the kept ones read (by extension), or why they were not
    (``refused``); ``repeat`` when the key had a run earlier in the tar (its members are not read)."""

    key: str
    repeat: bool = False
    names: list[str] = field(default_factory=list)
    unlisted: int = 0
    members: dict[str, bytes] = field(default_factory=dict)
    names_by_ext: dict[str, str] = field(default_factory=dict)
    refused: SampleError | None = None

    def listing(self) -> str:
        more = f" and {self.unlisted} more" if self.unlisted else ""
        return ", ".join(self.names) + more


@dataclass(frozen=True)
class LooseMember:
    """A member that is part of no sample: ``kind`` is ``hidden`` (its name starts with a dot),
    ``no_extension``, or what a non-file member is (``symlink``, ``FIFO`` ...)."""

    name: str
    kind: str


_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "FIFO"}


def group_runs(
    tar: tarfile.TarFile,
    wanted: Callable[[str], bool] = lambda key: True,
    keep: Collection[str] = SHARD_EXTENSIONS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[TarRun | LooseMember]:
    """The one grouping rule of tar members into samples, for our shards and for source shards alike,
    webdataset's (``base_plus_ext``): the key is the member's directory and its name up to the first
    dot (:func:`split_member_name`), and consecutive regular members (and hard links) of one key
    are one sample. A member whose name starts with a dot (macOS tar's ``._a.jpg``, ``.DS_Store``)
    has no key, and one without an extension neither: each is part of no sample and never splits
    one; it is yielded as a :class:`LooseMember`, as is a symlink, device or FIFO. Folders are left out.

    Only ``wanted`` runs (by key) and loose members (by name) are yielded; of a run, only the
    extensions in ``keep`` are read. A kept member over ``max_member_bytes`` is not read and the run
    comes back ``refused`` (``member_too_large``), as does one with a hard link that cannot be
    resolved (``unresolved_hard_link``, see the module docstring) or a member name twice
    (``duplicate_member``). Read errors and :class:`TarRefused` propagate; the caller names the file."""
    run: TarRun | None = None
    take = False
    seen: set[str] = set()
    read: dict[str, str] = {}
    places: dict[str, tuple[int, int]] | None = None if getattr(tar, "streaming", False) else {}
    for info in iter_headers(tar):
        name = info.name
        if info.isdir():
            continue
        if not (info.isreg() or info.islnk()):
            if wanted(name):
                yield LooseMember(name, _KINDS.get(info.type, "special member"))
            continue
        parts = None if is_hidden(name) else split_member_name(name)
        if parts is None:
            if wanted(name):
                yield LooseMember(name, "hidden" if is_hidden(name) else "no_extension")
            continue
        key, ext = parts
        if run is None or key != run.key:
            if run is not None and take:
                yield run
            take = wanted(key)
            run, read = TarRun(key, repeat=take and key in seen), {}
            if take and len(seen) < MAX_REMEMBERED_KEYS:
                seen.add(key)
        if places is not None and info.isreg() and ext in keep and len(places) < MAX_LINK_TARGETS:
            places[posixpath.normpath(name)] = (info.offset_data, info.size)
        if not take:
            continue
        if len(run.names) < MAX_LISTED_NAMES:
            run.names.append(name)
        else:
            run.unlisted += 1
        if run.repeat or run.refused is not None or ext not in keep:
            continue
        if ext in run.members:
            run.refused = SampleError("duplicate_member", f"member {name!r} appears twice in its sample; which copy is meant is unknown")
            run.members = {}
            continue
        size = places.get(posixpath.normpath(info.linkname), (0, 0))[1] if info.islnk() and places is not None else info.size
        if size > max_member_bytes:
            run.refused = SampleError("member_too_large", f"member {name!r} is {size} bytes, over the cap of {max_member_bytes}")
            run.members = {}
            continue
        data = tar.extractfile(info).read() if info.isreg() else _link_target(tar, info, run.members, read, places)
        if data is None:
            run.refused = SampleError("unresolved_hard_link", f"member {name!r} is a hard link to {info.linkname!r}, not read before it in this tar{' (a stream cannot go back)' if places is None else ''}")
            run.members = {}
            continue
        run.members[ext] = data
        run.names_by_ext[ext] = name
        read[posixpath.normpath(name)] = ext
    if run is not None and take:
        yield run


def group_members(
    tar: tarfile.TarFile,
    keep: Collection[str] = SHARD_EXTENSIONS,
    max_member_bytes: int = MAX_MEMBER_BYTES,
) -> Iterator[TarSample]:
    """:func:`group_runs`' samples alone (loose members left out): a key that comes back after
    other keys' members is ``refused`` (``duplicate_key``), its members not read."""
    for run in group_runs(tar, keep=keep, max_member_bytes=max_member_bytes):
        if isinstance(run, LooseMember):
            continue
        refused = run.refused
        if run.repeat:
            refused = SampleError("duplicate_key", f"key {run.key!r} again, after other keys' members: the tar is not sorted")
        yield TarSample(run.key, run.members, refused)


def _link_target(
    tar: tarfile.TarFile, info: tarfile.TarInfo, members: dict[str, bytes], read: dict[str, str],
    places: dict[str, tuple[int, int]] | None,
) -> bytes | None:
    """The bytes of the member a hard link names: read already in this sample, or re-read from the
    local file where it was seen; None when neither."""
    target = posixpath.normpath(info.linkname)
    if target in read:
        return members[read[target]]
    if places is None or target not in places:
        return None
    offset, size = places[target]
    tar.fileobj.seek(offset)
    data = tar.fileobj.read(size)
    if len(data) != size:
        raise tarfile.ReadError(f"hard link {info.name!r}: its target {info.linkname!r} is cut short")
    return data


def iter_tar_members(shard: Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of one shard (only :data:`SHARD_EXTENSIONS`).
    A tar cut short at a member boundary (a copy stopped at a block) reads to its cut without any
    error from tarfile, as a shorter shard; one with data after its end block (tars joined with
    ``cat``) stops at the first: both are refused after the last sample, never read as whole."""
    last = None
    try:
        with open_tar(shard) as tar:
            for sample in group_members(tar, max_member_bytes=max_member_bytes):
                if sample.refused is not None:
                    raise ShardError(f"{shard}: sample {sample.key}: {sample.refused.detail}; not read")
                last = sample.key
                yield sample.key, sample.members
            after = data_after_end(tar) if ended_cleanly(tar) else -1
    except TarRefused as e:
        raise ShardError(f"{shard}: refused ({e.reason}): {e.detail}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise ShardError(f"{shard}: unreadable or truncated tar ({e})") from None
    where = f"after sample {last}" if last is not None else "before any sample"
    if after == -1:
        raise ShardError(f"{shard}: truncated tar: no end-of-archive block {where} (a copy cut short?)")
    if after is not None:
        raise ShardError(f"{shard}: data at byte {after}, after the end-of-archive block ({where}): "
                         "tars joined with cat? It is not read; split them or write one tar")


def read_meta(shard: Path | str, key: str, members: dict[str, bytes]) -> SampleMeta:
    """A sample's KEY.json as a checked :class:`SampleMeta`, the one way every reader of our shards
    takes it (the shard reader, the detector's export): over the cap, nested too deeply or of another
    shape, it is a :class:`ShardError` naming the shard and sample, never a traceback."""
    if "json" not in members:
        raise ShardError(f"{shard}: sample {key} has no 'json' member")
    raw = members["json"]
    if len(raw) > MAX_JSON_BYTES:
        raise ShardError(f"{shard}: sample {key}: KEY.json is {len(raw)} bytes, over the cap of {MAX_JSON_BYTES}")
    try:
        stored = parse_json(raw, f"{shard}: sample {key}: KEY.json")
    except ValueError as e:  # the one rule for JSON records: nested too deeply, a key twice, NaN
        raise ShardError(str(e)) from None
    try:
        return SampleMeta.from_json(stored)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShardError(f"{shard}: sample {key}: KEY.json is not an ICD sample record ({type(e).__name__}: {e})") from None


def decode_sample(
    shard: Path, key: str, members: dict[str, bytes], with_extras: bool = True
) -> Sample:
    meta = read_meta(shard, key, members)
    try:
        image = decode_rgb(open_image(members["jpg"]), DEFAULT_MAX_PIXELS, orient=False)  # the boxes are drawn in the stored grid
        clean = decode_rgb(open_image(members["clean.jpg"]), DEFAULT_MAX_PIXELS, orient=False) if with_extras and "clean.jpg" in members else None
        mask = load_pixels(members["mask.png"], DEFAULT_MAX_PIXELS) if with_extras and "mask.png" in members else None
    except KeyError as e:
        raise ShardError(f"{shard}: sample {key} has no {e.args[0]!r} member") from None
    except SampleError as e:
        raise ShardError(f"{shard}: sample {key}: image not decoded ({e})") from None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ShardError(f"{shard}: sample {key} cannot be decoded ({e})") from None
    for ext, decoded in (("jpg", image), ("clean.jpg", clean), ("mask.png", mask)):
        # The boxes are in KEY.json's grid: on an image of another size they would mark the wrong pixels.
        if decoded is not None and decoded.size != (meta.width, meta.height):
            raise ShardError(f"{shard}: sample {key}: {ext} is {decoded.size[0]}x{decoded.size[1]}, "
                             f"its KEY.json says {meta.width}x{meta.height}")
    if mask is not None and mask.mode != "L":
        raise ShardError(f"{shard}: sample {key}: mask.png is in mode {mask.mode}, not L (8-bit alpha)")
    return Sample(meta=meta, image=image, clean=clean, mask=mask)


def iter_samples(path: str | Path, with_extras: bool = True) -> Iterator[Sample]:
    for shard in list_shards(path):
        for key, members in iter_tar_members(shard):
            yield decode_sample(shard, key, members, with_extras=with_extras)
