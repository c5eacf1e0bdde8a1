"""A directory tree of images with caption sidecars (``name.jpg`` + ``name.txt``).

Files are listed once and grouped by key (the relative path without its extension), as a tar's
members are; each key is one item, split by a hash of the key (its name in NFC, as every record
holds it: a copy through a Mac is the same dataset), so it keeps its split when others are added.
Every format Pillow reads by default is listed (GIF gives its first frame, TIFF its first page).
Images stay raw bytes here: decoding is the resizer's job, and a bad file becomes an item with an
error and its text, never an exception.

Only regular files are read, never through a symlink, and only up to a cap: a caption that is a
symlink to ``/dev/zero`` would fill memory, a FIFO would hang the build, and a symlink to any
readable file would copy it into the dataset. Such an entry is a counted skip
(``not_a_regular_file``, ``file_too_large``, ``caption_too_large``).
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import math
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from implicit_concept.bounded_reads import file_kind
from implicit_concept.image_decode import DEFAULT_MAX_PIXELS
from implicit_concept.sample import SPLITS
from implicit_concept.shard_reader import MAX_JSON_BYTES, is_hidden

from .base import (
    DEFAULT_EXTENSIONS, HIDDEN, RawItem, Source, SourceNotFound, check_fraction, check_limits, hidden_detail, raise_cap, recorded_name,
    split_of, undecodable_detail,
)
from .caption_text import MAX_CAPTION_BYTES, read_caption
from .source_json import json_caption_hint, read_source_json
from .webdataset_source import TAR_ENDINGS, tars_pattern

#: One image file read into memory at most, unless the source config sets another.
DEFAULT_MAX_BYTES = 64 << 20
#: A caption's file ending, matched case-insensitively (``IMG.JPG`` + ``IMG.TXT``).
CAPTION_EXTENSION = "txt"
#: A sample's metadata sidecar (img2dataset's ``files`` output writes one beside each image).
JSON_EXTENSION = "json"


#: Why a file listed when the source was opened is not read.
_GONE = "listed when the build started, gone when read: the folder changed while the build ran (its files are listed once)"


class NotRegularFile(OSError):
    """A path names a symlink, FIFO, device or folder, not a regular file."""


class FileTooLarge(OSError):
    """A regular file holds more bytes than its cap."""


def read_regular_file(root: Path, rel: str, max_bytes: int, shown: str | None = None) -> bytes:
    """The bytes of ``root/rel``, a regular file reached without following any symlink below ``root``.

    Raises ``FileNotFoundError``, :class:`NotRegularFile`, :class:`FileTooLarge` (over ``max_bytes``)
    or another ``OSError``. Opened non-blocking, so a FIFO is refused rather than waited on. What
    they say names ``shown`` (``rel`` as recorded, by default ``rel``), not ``root``: it is recorded
    in the shards' tables, which are the same bytes wherever the folder lies.
    """
    *folders, name = rel.split("/")
    rel = rel if shown is None else shown
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            try:
                inner = _open_below(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, directory)
            except NotRegularFile as e:
                raise NotRegularFile(f"{rel}: its folder {recorded_name(folder)} is {e}") from None
            os.close(directory)
            directory = inner
        try:
            fd = _open_below(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, directory)
        except NotRegularFile as e:
            raise NotRegularFile(f"{rel}: {e}") from None
    finally:
        os.close(directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{rel}: {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{rel}: {info.st_size} bytes, over the cap of {max_bytes}")
    except OSError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(f"{rel}: grew over the cap of {max_bytes} bytes while read")
    return data


def _open_below(name: str, flags: int, directory: int) -> int:
    """``name`` opened in ``directory``, or NotRegularFile saying what stands there."""
    try:
        return os.open(name, flags | os.O_CLOEXEC, dir_fd=directory)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise NotRegularFile(_what_stands(name, directory)) from None
        raise


#: What to do with a folder whose files are links (a Hugging Face cache snapshot, git-annex, DVC, a
#: subset made with ``ln -s``): the links are not followed, so the build needs the files themselves.
SYMLINK_ADVICE = ("never followed (a link may lead anywhere, and what it leads to would be copied into the dataset): "
                  "build from a copy that holds the files themselves (cp -rL FOLDER COPY)")


def _what_stands(name: str, directory: int | None) -> str:
    """What ``name`` in ``directory`` (None: ``name`` is a path) is, when it is not a regular file: a
    symlink (and what it leads to, by ``stat`` alone), a FIFO, a socket, a device."""
    try:
        info = os.lstat(name, dir_fd=directory)
    except OSError:
        return "not a regular file"
    if not stat.S_ISLNK(info.st_mode):
        return f"{file_kind(info.st_mode)}, not a regular file"
    try:
        target = os.stat(name, dir_fd=directory).st_mode
    except OSError:
        return f"a symlink to nothing (a broken link), {SYMLINK_ADVICE}"
    return f"a symlink to {file_kind(target)}, {SYMLINK_ADVICE}"



@dataclass(frozen=True)
class FolderConfig:
    path: str
    test_fraction: float = 0.1
    #: File name endings that count as images, matched case-insensitively.
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    #: A caption's file ending (``caption`` for kohya-style ``a.jpg`` + ``a.caption``), matched case-insensitively.
    caption_extension: str = CAPTION_EXTENSION
    #: An image file larger than this is not read: ``file_too_large``.
    max_file_bytes: int = DEFAULT_MAX_BYTES
    #: An image with more pixels (from its header) is not decoded: ``too_large``.
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, Path)) or not str(self.path):
            raise ValueError(f"path must be a directory path, got {self.path!r}")
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "test_fraction", check_fraction("test_fraction", self.test_fraction))
        ext = self.extensions
        names = isinstance(ext, (list, tuple)) and all(isinstance(e, str) and e.strip(".") for e in ext)
        if not (names and ext):
            raise ValueError(f"extensions must be a non-empty list of file endings, got {ext!r}")
        object.__setattr__(self, "extensions", tuple(e.lower().lstrip(".") for e in ext))
        caption = self.caption_extension
        if not isinstance(caption, str) or not caption.strip(".") or "/" in caption or "." in caption.lstrip("."):
            raise ValueError(f"caption_extension must be one file ending such as 'txt' or 'caption', got {caption!r}")
        object.__setattr__(self, "caption_extension", caption.lower().lstrip("."))
        if self.caption_extension == JSON_EXTENSION:
            raise ValueError("caption_extension: 'json' files are a key's metadata (read into source.meta), not its caption")
        taken = [e for e in self.extensions if e in (self.caption_extension, JSON_EXTENSION)]
        if taken:
            raise ValueError(f"extensions: {taken[0]!r} files are a key's caption or metadata, not its image")
        check_limits(self.max_file_bytes, "max_file_bytes", self.max_pixels)


@dataclass(frozen=True)
class _Entry:
    """The files of one key (a path without its extension): the image used, its caption, its JSON
    metadata if any, and the files not used with why (the reason counted and the text recorded)."""

    key: str
    image: str | None
    caption: str
    json: str | None
    unused: tuple[tuple[str, str, str], ...]
    #: Where a caption this key lacks may be instead (appended to ``missing_caption``'s text).
    hint: str = ""
    #: Whether ``caption`` was listed (a file), not only the name it would have.
    caption_listed: bool = False
    #: The names above as the files have them on disk, where that is another Unicode form.
    on_disk: tuple[tuple[str, str], ...] = ()

    def path(self, name: str) -> str:
        """The real name of the file recorded as ``name``."""
        return dict(self.on_disk).get(name, name)


def _tars_hint(root: Path) -> str:
    """A folder of tar shards given as a folder source: the brace pattern that names them."""
    example = tars_pattern(root)
    if example is None:
        return ""
    count = sum(1 for p in root.iterdir() if p.name.endswith(TAR_ENDINGS) and not p.name.startswith("."))
    return (f"; it holds {count} tar file{'s' if count > 1 else ''}: a source of tar shards is their path or "
            f"a brace pattern, e.g. {example}")


class FolderSource(Source):
    """Each split's keys, in key order, cut into shards of ``shard_size``.

    As in a tar, one key is one item: ``a.jpg`` and ``a.png`` beside ``a.txt`` are one item (the
    image by the order of ``extensions``), so they cannot land in different splits. Every entry
    that is not a folder is listed, symlinks and FIFOs included, so each one is counted when it is
    refused, and every file not used is a skip record of its own: an image beside a preferred one
    (``duplicate_image``), files of a key two of whose endings are one in two letter cases
    (``x.jpg`` and ``x.JPG``, ``x.txt`` and ``x.TXT``: ``duplicate_member``, as in a tar), files of a
    key without any image (``no_image``), a file whose name, or a folder's on its path, starts with a dot
    (``hidden_file``: macOS's ``._a.jpg``, ``.DS_Store``, a file manager's ``.thumbnails/``; a tar's alike). ``a.json`` beside a used image is its
    metadata, as in img2dataset's ``files``
    output: read as a tar's ``KEY.json`` is, into the sample's ``source.meta``; other files of the
    key are not read.
    """

    kind = "folder"

    def __init__(self, config: FolderConfig, *, shard_size: int) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        root = Path(config.path)
        if not root.is_dir():
            tilde = (f" (a '~' is not expanded here, only by a shell and outside quotes: {os.path.expanduser(config.path)!r}?)"
                     if config.path.startswith("~") else "")
            raise SourceNotFound(f"path: {str(root)!r} does not exist or is not a directory{tilde}")
        listed, unlisted, linked = _list(root)
        if "" in unlisted:
            raise ValueError(f"path: {str(root)!r} cannot be listed ({unlisted['']})")
        entries = _entries(listed, config.extensions, unlisted, linked, config.caption_extension, root)
        if not any(e.image for e in entries):
            hidden = sum(is_hidden(rel) for rel in listed)
            aside = f" ({hidden} hidden files, whose names or folders start with a dot, are not read)" if hidden else ""
            raise ValueError(
                f"path: no images ({', '.join(config.extensions)}) under {str(root)!r}{aside}{_tars_hint(root)}"
            )
        self.config = config
        self.root = root
        self.shard_size = shard_size
        self.max_pixels = config.max_pixels
        self._listed = listed
        self._unlisted = unlisted
        self._entries = {s: [e for e in entries if split_of(e.key, config.test_fraction) == s] for s in SPLITS}

    def fingerprint(self) -> dict[str, Any]:
        """Every listed file: name (relative to the folder, as recorded: NFC), size and modification
        time (not followed); not where the folder lies, so a folder moved whole, or copied through a
        Mac, resumes where it stopped."""
        digest, total = hashlib.sha256(), 0
        for real, name in sorted(((real, recorded_name(real)) for real in self._listed), key=lambda r: (r[1], r[0])):
            try:
                info = os.lstat(self.root / real)
            except OSError:
                entry = f"{name}\t-"
            else:
                entry = f"{name}\t{info.st_size}\t{info.st_mtime_ns}"
                total += info.st_size
            digest.update(entry.encode("utf-8", "surrogateescape") + b"\n")
        for name in sorted(self._unlisted):
            digest.update(f"{recorded_name(name)}/\tunlisted".encode("utf-8", "surrogateescape") + b"\n")
        return {"kind": self.kind, "files": len(self._listed), "bytes": total, "sha256": digest.hexdigest()}

    def files(self, split: str) -> list[str]:
        """Relative paths of the images ``split`` uses, in shard order, as they are on disk."""
        return [e.path(e.image) for e in self._split(split) if e.image is not None]

    def _split(self, split: str) -> list[_Entry]:
        if split not in self._entries:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return self._entries[split]

    def shard_ids(self, split: str) -> list[int]:
        return list(range(math.ceil(len(self._split(split)) / self.shard_size)))

    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        if shard_id not in range(len(self.shard_ids(split))):
            raise ValueError(f"{split} has no shard {shard_id} (shards: {len(self.shard_ids(split))})")
        start = shard_id * self.shard_size
        for entry in self._split(split)[start : start + self.shard_size]:
            if entry.image is not None:
                yield self._item(entry)
            for rel, reason, detail in entry.unused:
                yield RawItem(rel, None, None, {"path": rel}, error=reason, detail=detail)

    def _item(self, entry: _Entry) -> RawItem:
        """The item of ``entry``'s image: its files read by their real names, recorded by their names
        in NFC."""
        rel, caption_rel, json_rel = entry.image or "", entry.caption, entry.json
        meta: dict[str, Any] = {"path": rel}
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return RawItem(rel, None, None, {}, error="undecodable_name", detail=undecodable_detail(rel))
        if json_rel is not None:
            try:
                found, skipped = read_source_json(read_regular_file(self.root, entry.path(json_rel), MAX_JSON_BYTES, json_rel))
            except FileTooLarge:
                found, skipped = {}, "json_too_large"
            except NotRegularFile as e:
                return RawItem(rel, None, None, meta, error="not_a_regular_file", detail=f"metadata {e}")
            except OSError as e:
                return RawItem(rel, None, None, meta, error="unreadable_json", detail=f"{json_rel}: {e}")
            if skipped:
                return RawItem(rel, None, None, meta, error=skipped, detail=json_rel)
            meta.update(found)
        try:
            caption_bytes = read_regular_file(self.root, entry.path(caption_rel), MAX_CAPTION_BYTES, caption_rel)
        except FileNotFoundError:
            if entry.caption_listed:
                return RawItem(rel, None, None, meta, error="missing_caption", detail=f"{caption_rel}: {_GONE}")
            return RawItem(rel, None, None, meta, error="missing_caption", detail=f"no {caption_rel}{entry.hint}{json_caption_hint(meta, json_rel, caption_rel)}")
        except NotRegularFile as e:
            return RawItem(rel, None, None, meta, error="not_a_regular_file", detail=f"caption {e}")
        except FileTooLarge as e:
            return RawItem(rel, None, None, meta, error="caption_too_large", detail=str(e))
        except OSError as e:
            return RawItem(rel, None, None, meta, error="unreadable_caption", detail=f"{caption_rel}: {e}")
        caption, error, why = read_caption(caption_bytes)
        if error:
            return RawItem(rel, None, None, meta, error=error, detail=f"{caption_rel}: {why}")
        try:
            image = read_regular_file(self.root, entry.path(rel), self.config.max_file_bytes, rel)
        except NotRegularFile as e:
            return RawItem(rel, None, caption, meta, error="not_a_regular_file", detail=str(e))
        except FileTooLarge as e:
            return RawItem(rel, None, caption, meta, error="file_too_large", detail=f"{e}{raise_cap('max_file_bytes')}")
        except FileNotFoundError:
            return RawItem(rel, None, caption, meta, error="unreadable_file", detail=f"{rel}: {_GONE}")
        except OSError as e:
            return RawItem(rel, None, caption, meta, error="unreadable_file", detail=str(e))
        return RawItem(rel, image, caption, meta)


def file_split(rel: str, test_fraction: float) -> str:
    """The split the file ``rel`` (``a/b.jpg``) lands in: by a hash of its key (``a/b``), so an
    image and its caption cannot part, in NFC (a copy through a Mac splits alike). Whatever writes
    a folder for a given split asks this."""
    return split_of(split_name(recorded_name(rel))[0], test_fraction)


def split_name(rel: str) -> tuple[str, str]:
    """``(key, extension)``: the path up to the last dot of its file name, and the lower-cased rest
    (``".jpg"`` is key ``""``, extension ``"jpg"``; a name without a dot has extension ``""``)."""
    folder, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _list(root: Path) -> tuple[list[str], dict[str, str], set[str]]:
    """Every entry under ``root`` that is not a folder (a symlink to one included), as sorted
    relative paths; the folders that could not be listed, by relative path (``""`` for ``root``
    itself), with why; and the symlinks to folders among the entries. Nothing is dropped without a
    word: each of those becomes a skip record."""
    listed: list[str] = []
    unlisted: dict[str, str] = {}
    linked: set[str] = set()

    def failed(error: OSError) -> None:
        where = Path(error.filename or root)
        rel = "" if where == root else where.relative_to(root).as_posix()
        unlisted[rel] = error.strerror or str(error)

    for folder, dirs, files in os.walk(root, onerror=failed, followlinks=False):
        here = Path(folder)
        links = [(here / d).relative_to(root).as_posix() for d in dirs if _is_link(here / d)]
        linked.update(links)
        listed.extend([*((here / name).relative_to(root).as_posix() for name in files), *links])
    return sorted(listed), unlisted, linked


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(path.lstat().st_mode)
    except OSError:
        return False


def _entries(listed: list[str], extensions: tuple[str, ...], unlisted: dict[str, str] | None = None,
             linked: set[str] | None = None, caption_ext: str = CAPTION_EXTENSION, root: Path | None = None) -> list[_Entry]:
    """``listed`` grouped by key, in key order, each name as recorded (:func:`recorded_name`, NFC:
    "café.jpg" from a Mac and "café.txt" from a script are one key, and a copy of the folder through
    a Mac is the same dataset), its real name kept for reading (``_Entry.on_disk``). The image used is
    the first by the order of ``extensions`` that is a regular file under ``root`` (a symlink, FIFO or
    device beside a file is a ``not_a_regular_file`` record, as such a tar member is, and the file is
    used). Two files whose names are one in two forms are a key no file of which is read
    (``name_form_clash``, each named in escapes), and so are two whose endings are one in two letter
    cases (``duplicate_member``, a tar's rule). A folder of ``unlisted`` is an entry of its own (its
    path the key): a skip, ``unreadable_folder``; so is a symlink to a folder, ``linked``
    (``not_a_regular_file``)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    real: dict[str, list[str]] = {}
    hidden = []
    links = {}
    for rel in listed:
        name = recorded_name(rel)
        if is_hidden(rel):
            hidden.append(name)
            continue
        if rel in (linked or ()):  # keyed as a folder is, apart from the files of the same name
            links[f"{name}/"] = (name, f"{name}: a symlink to a folder, never followed (a link may lead anywhere), so the "
                                       f"files there are not read; give that folder as a source of its own, or copy it in")
            continue
        if name not in real:
            key, ext = split_name(name)
            groups.setdefault(key, []).append((name, ext))
        real.setdefault(name, []).append(rel)
    near = _NearMisses(groups, extensions, caption_ext)
    folders = {f"{recorded_name(rel)}/": why for rel, why in (unlisted or {}).items() if rel}
    entries = []
    for key in sorted([*groups, *folders, *hidden, *links]):
        if key in links:
            entries.append(_Entry(key, None, "", None, ((*links[key][:1], "not_a_regular_file", links[key][1]),)))
            continue
        if key in folders:
            unused = ((key, "unreadable_folder", f"{key}: cannot be listed ({folders[key]}); its files are not read"),)
            entries.append(_Entry(key, None, "", None, unused))
            continue
        if key not in groups:
            entries.append(_Entry(key, None, "", None, ((key, HIDDEN, hidden_detail(key)),)))
            continue
        files = groups[key]
        clashes = [(n, real[n]) for n, _ in files if len(real[n]) > 1]
        if clashes:
            unused = tuple((r, "name_form_clash", _clash_detail(n, r, [o for o in rels if o != r]))
                           for n, rels in clashes for r in rels)
            unused += tuple((n, "name_form_clash", f"{n}: not read: {clashes[0][0]} of the same key is {len(clashes[0][1])} "
                                                   f"files in two Unicode forms, so which files are one item is unknown")
                            for n, _ in files if len(real[n]) == 1)
            entries.append(_Entry(key, None, "", None, unused))
            continue
        cased = _case_twins(files, (*extensions, caption_ext, JSON_EXTENSION))
        if cased:
            entries.append(_Entry(key, None, "", None, tuple((r, "duplicate_member", _case_detail(r, key, cased)) for r, _ in files)))
            continue
        images = sorted((r for r, e in files if e in extensions), key=lambda r: (extensions.index(split_name(r)[1]), r))
        captions = [r for r, e in files if e == caption_ext]
        caption = captions[0] if captions else f"{key}.{caption_ext}"
        jsons = [r for r, e in files if e == JSON_EXTENSION]
        hint = "" if captions and images else near.hint(key, images, files)
        if not images:
            names = ", ".join(r for r, _ in files)
            unused = [(files[0][0], "no_image", f"no image ({', '.join(extensions)}) named {key!r}: {names}{hint}")]
        else:
            odd = {r: why for r in images if len(images) > 1 and root is not None and (why := _not_regular(root, real[r][0], r))}
            used = next((r for r in images if r not in odd), images[0])
            unused = [(r, "not_a_regular_file", odd[r]) for r in images if r in odd and r != used]
            images = [used, *(r for r in images if r not in odd and r != used)]
            unused += [(r, "duplicate_image", f"{r}: {used} of the same name is used") for r in images[1:]]
        on_disk = tuple((n, real[n][0]) for n, _ in files if real[n][0] != n)
        entries.append(_Entry(key, images[0] if images else None, caption, jsons[0] if jsons else None, tuple(unused), hint,
                              bool(captions), on_disk))
    return sorted(entries, key=lambda e: e.key)


def _clash_detail(name: str, real: str, others: list[str]) -> str:
    """The recorded text of the file ``real`` whose name is ``name`` in another Unicode form than
    each of ``others`` (each spelled in escapes, since they look the same)."""
    spelled = " and ".join(ascii(o) for o in others)
    return (f"{name}: the file {ascii(real)} and {spelled} are one name in two Unicode forms (composed NFC, decomposed "
            f"NFD: a Mac's copy beside the original?), so which is meant is unknown and neither is read; keep one")


def _not_regular(root: Path, real: str, shown: str) -> str | None:
    """What stands at the listed ``root/real`` where it is not a regular file, as its read would say it
    (recorded as ``shown``); None for a regular file, or one gone (its read says so)."""
    try:
        mode = os.lstat(root / real).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else f"{shown}: {_what_stands(str(root / real), None)}"


def _case_twins(files: list[tuple[str, str]], read: tuple[str, ...]) -> list[str]:
    """The files of one key whose endings, read by this source, are one ending in two letter cases
    (``x.jpg`` and ``x.JPG``): a tar holding both is refused as a member twice (``duplicate_member``),
    and so is the folder's key, whichever of them sorts first."""
    by_ending: dict[str, list[str]] = {}
    for rel, ext in files:
        if ext in read:
            by_ending.setdefault(ext, []).append(rel)
    return next((sorted(rels) for rels in by_ending.values() if len(rels) > 1), [])


def _case_detail(rel: str, key: str, cased: list[str]) -> str:
    return (f"{rel}: not read: {' and '.join(cased)} are one file name in two letter cases (a Mac's or Windows' disk holds "
            f"one of them), so which is meant is unknown and no file of key {key!r} is read, as in a tar; keep one")


#: What ``_NearMisses`` looks for when it looks for an image, not a file ending (no ending holds a slash).
_IMAGE = "/image"
#: Files that hold a folder's captions in tools this source does not follow (Hugging Face's imagefolder).
_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


class _NearMisses:
    """Where the caption of an image without one, or the image of a caption without one, may be,
    named otherwise: ``a.jpg.txt`` (key ``a.jpg``), a name that differs only in case (``IMG_1.JPG``
    and ``img_1.txt``), a sidecar of another extension (``a.caption``), the same name in another
    folder (``images/a.jpg`` and ``captions/a.txt``), a Hugging Face ``metadata.jsonl`` in its folder
    or above. Indexed once, so each key costs a few look-ups."""

    def __init__(self, groups: dict[str, list[tuple[str, str]]], extensions: tuple[str, ...], caption: str) -> None:
        self.groups, self.extensions, self.caption = groups, extensions, caption
        self.folded: dict[str, list[str]] = {}
        self.named: dict[str, list[str]] = {}
        for key in groups:
            self.folded.setdefault(key.casefold(), []).append(key)
            self.named.setdefault(posixpath.basename(key), []).append(key)
        self.metadata: dict[str, str] = {}
        #: Each folder's first two images and captions (a folder per sample: ``s1/image.jpg``, ``s1/caption.txt``).
        self.within: dict[tuple[str, str], list[str]] = {}
        for files in groups.values():
            for rel, ext in files:
                folder = posixpath.dirname(rel)
                if posixpath.basename(rel).lower() in _METADATA_FILES:
                    self.metadata[folder] = rel
                kind = _IMAGE if ext in extensions else self.caption if ext == self.caption else None
                if kind is not None and len(found := self.within.setdefault((folder, kind), [])) < 2:
                    found.append(rel)

    def _has(self, key: str, wanted: str) -> str | None:
        found = [r for r, e in self.groups.get(key, [])
                 if (e in self.extensions if wanted == _IMAGE else e == wanted)]
        return found[0] if found else None

    def _elsewhere(self, key: str, wanted: str) -> list[str]:
        """Files of the same name and the ``wanted`` kind, without a partner of their own, in other
        folders: two at most, of the first eight names looked at (a name in every folder costs no more)."""
        partner = _IMAGE if wanted == self.caption else self.caption
        others = itertools.islice((k for k in self.named.get(posixpath.basename(key), []) if k != key), 8)
        return [found for k in others if (found := self._has(k, wanted)) is not None and self._has(k, partner) is None][:2]

    def _alone(self, key: str, kind: str) -> list[str]:
        """The hint for a key whose folder holds one file of ``kind`` (an image, a caption), under another name."""
        found = self.within.get((posixpath.dirname(key), kind), [])
        partner = _IMAGE if kind == self.caption else self.caption
        if len(found) != 1 or split_name(found[0])[0] == key or self._has(split_name(found[0])[0], partner) is not None:
            return []
        image_key = split_name(found[0])[0] if kind == _IMAGE else key
        return [f"{found[0]} is the only {'image' if kind == _IMAGE else 'caption'} in its folder, but a caption is "
                f"read from the image's name: {image_key}.{self.caption}"]

    def hint(self, key: str, images: list[str], files: list[tuple[str, str]]) -> str:
        """The text appended to the record of ``key``, whose files are ``files``."""
        twins = [k for k in self.folded.get(key.casefold(), []) if k != key]
        hints = []
        if images:
            for image in images:
                if (double := self._has(image, self.caption)) is not None:
                    hints.append(f"{double} is the caption of key {image!r} (a key ends at the last dot), not of {image}: "
                                 f"name it {key}.{self.caption}")
            cased = [found for k in twins if (found := self._has(k, self.caption)) is not None]
            others = [(r, e) for r, e in files if e not in self.extensions and e not in (self.caption, JSON_EXTENSION)]
            hints += [f"{t} differs from {images[0]} only in letter case, and names are matched exactly" for t in cased]
            hints += [f"{r}: extension {e!r} is not read as a caption (a caption is {key}.{self.caption}; a recipe's "
                      f"[source] caption_extension = {e!r} reads those)" for r, e in others]
            hints += [f"{c} has its name in another folder: a caption is read from beside its image" for c in self._elsewhere(key, self.caption)]
            hints += self._alone(key, self.caption)
            folder = posixpath.dirname(key)
            while True:
                if folder in self.metadata:
                    hints.append(f"{self.metadata[folder]} (Hugging Face imagefolder's captions) is not read: "
                                 f"write each caption beside its image, {key}.{self.caption}")
                    break
                if not folder:
                    break
                folder = posixpath.dirname(folder)
            return "".join(f"; {h}" for h in hints)
        unread = [(r, e) for r, e in files if e and e not in (*self.extensions, self.caption, JSON_EXTENSION)
                  and posixpath.basename(r).lower() not in _METADATA_FILES]
        hints += [f"{r}: extension {e!r} is not read as an image (a recipe's [source] extensions reads others Pillow decodes)"
                  for r, e in unread]
        if any(e == self.caption for _, e in files):
            stem, ext = split_name(key)
            if ext in self.extensions and (image := self._has(stem, _IMAGE)) is not None:
                hints.append(f"the caption of {image}? It is read from {stem}.{self.caption} (a key ends at the last dot)")
            hints += [f"{t} differs only in letter case, and names are matched exactly" for k in twins if (t := self._has(k, _IMAGE))]
            hints += [f"{i} has its name in another folder: a caption is read from beside its image" for i in self._elsewhere(key, _IMAGE)]
            hints += self._alone(key, _IMAGE)
        elif any(posixpath.basename(r).lower() in _METADATA_FILES for r, _ in files):
            hints.append(f"Hugging Face imagefolder's captions are not read: write each caption beside its image, as name.{self.caption}")
        return "".join(f"; {h}" for h in hints)

