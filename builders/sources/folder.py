"""A directory tree of images with caption sidecars (``name.jpg`` + ``name.txt``).

Files are listed once, sorted by relative path, and split by a hash of that path, so a file keeps
its split when others are added. Every format Pillow reads by default is listed (GIF gives its first
frame, TIFF its first page). Images stay raw bytes here: decoding is the resizer's job, and a bad
file becomes an item with an error and its text, never an exception.

Only regular files are read, never through a symlink, and only up to a cap: a caption that is a
symlink to ``/dev/zero`` would fill memory, a FIFO would hang the build, and a symlink to any
readable file would copy it into the dataset. Such an entry is a counted skip
(``not_a_regular_file``, ``file_too_large``, ``caption_too_large``).
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS
from implicit_concept.sample import SPLITS
from implicit_concept.validate import check_int

from .base import RawItem, Source, split_of

#: The photo and web formats Pillow reads (a GIF or APNG gives its first frame, a TIFF its first page).
DEFAULT_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "avif", "bmp", "gif", "tif", "tiff")
#: One image file read into memory at most, unless the source config sets another.
DEFAULT_MAX_BYTES = 64 << 20
#: A caption is copied into KEY.txt, KEY.json and the manifest: longer ones are refused.
MAX_CAPTION_BYTES = 64 << 10


class NotRegularFile(OSError):
    """A path names a symlink, FIFO, device or folder, not a regular file."""


class FileTooLarge(OSError):
    """A regular file holds more bytes than its cap."""


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_limits(max_bytes: Any, bytes_field: str, max_pixels: Any) -> None:
    """The caps every source of external files carries: bytes read per file, pixels decoded per image."""
    check_int(bytes_field, max_bytes, 1 << 10, 1 << 32)
    check_int("max_pixels", max_pixels, 1, PILLOW_MAX_PIXELS)


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """Return ``(caption, None)`` or ``(None, reason)``; shared by every source of external captions."""
    if len(data) > MAX_CAPTION_BYTES:
        return None, "caption_too_large"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, "caption_not_utf8"
    text = text.strip()
    return (text, None) if text else (None, "empty_caption")


def read_regular_file(root: Path, rel: str, max_bytes: int) -> bytes:
    """The bytes of ``root/rel``, a regular file reached without following any symlink below ``root``.

    Raises ``FileNotFoundError``, :class:`NotRegularFile`, :class:`FileTooLarge` (over ``max_bytes``)
    or another ``OSError``. Opened non-blocking, so a FIFO is refused rather than waited on.
    """
    *folders, name = rel.split("/")
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            inner = _open_below(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, directory)
            os.close(directory)
            directory = inner
        fd = _open_below(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, directory)
    finally:
        os.close(directory)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(f"{root / rel}: not a regular file")
        if info.st_size > max_bytes:
            raise FileTooLarge(f"{root / rel}: {info.st_size} bytes, over the cap of {max_bytes}")
    except OSError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(f"{root / rel}: grew over the cap of {max_bytes} bytes while read")
    return data


def _open_below(name: str, flags: int, directory: int) -> int:
    try:
        return os.open(name, flags | os.O_CLOEXEC, dir_fd=directory)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise NotRegularFile(f"{name}: a symlink or not a regular file") from None
        raise


@dataclass(frozen=True)
class FolderConfig:
    path: str
    test_fraction: float = 0.1
    #: File name endings that count as images, matched case-insensitively.
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
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
        check_limits(self.max_file_bytes, "max_file_bytes", self.max_pixels)


class FolderSource(Source):
    """Each split's files, in relative-path order, cut into shards of ``shard_size``.

    Every entry with an image ending that is not a folder is listed, symlinks and FIFOs included,
    so each one is counted when it is refused.
    """

    kind = "folder"

    def __init__(self, config: FolderConfig, *, shard_size: int) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
        root = Path(config.path)
        if not root.is_dir():
            raise ValueError(f"path: {str(root)!r} does not exist or is not a directory")
        suffixes = {"." + e for e in config.extensions}
        files = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.suffix.lower() in suffixes and not _is_folder(p)
        )
        if not files:
            raise ValueError(
                f"path: no images ({', '.join(config.extensions)}) under {str(root)!r}"
            )
        self.config = config
        self.root = root
        self.shard_size = shard_size
        self.max_pixels = config.max_pixels
        self._listed = files
        self._files = {s: [f for f in files if split_of(f, config.test_fraction) == s] for s in SPLITS}

    def fingerprint(self) -> dict[str, Any]:
        """Every listed image and its caption: name, size and modification time (not followed)."""
        digest, total = hashlib.sha256(), 0
        for rel in self._listed:
            for name in (rel, _caption_of(rel)):
                try:
                    info = os.lstat(self.root / name)
                except OSError:
                    entry = f"{name}\t-"
                else:
                    entry = f"{name}\t{info.st_size}\t{info.st_mtime_ns}"
                    total += info.st_size
                digest.update(entry.encode("utf-8", "surrogateescape") + b"\n")
        return {"kind": self.kind, "path": str(self.root), "files": len(self._listed), "bytes": total, "sha256": digest.hexdigest()}

    def files(self, split: str) -> list[str]:
        """Relative paths of ``split``'s images, in shard order."""
        if split not in self._files:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return self._files[split]

    def shard_ids(self, split: str) -> list[int]:
        return list(range(math.ceil(len(self.files(split)) / self.shard_size)))

    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        if shard_id not in range(len(self.shard_ids(split))):
            raise ValueError(f"{split} has no shard {shard_id} (shards: {len(self.shard_ids(split))})")
        start = shard_id * self.shard_size
        for rel in self.files(split)[start : start + self.shard_size]:
            yield self._item(rel)

    def _item(self, rel: str) -> RawItem:
        meta = {"path": rel}
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return RawItem(rel, None, None, {}, error="undecodable_name")
        caption_rel = _caption_of(rel)
        try:
            caption_bytes = read_regular_file(self.root, caption_rel, MAX_CAPTION_BYTES)
        except FileNotFoundError:
            return RawItem(rel, None, None, meta, error="missing_caption", detail=f"no {caption_rel}")
        except NotRegularFile as e:
            return RawItem(rel, None, None, meta, error="not_a_regular_file", detail=f"caption {caption_rel}: {e}")
        except FileTooLarge as e:
            return RawItem(rel, None, None, meta, error="caption_too_large", detail=str(e))
        except OSError as e:
            return RawItem(rel, None, None, meta, error="unreadable_caption", detail=f"{caption_rel}: {e}")
        caption, error = decode_caption(caption_bytes)
        if error:
            return RawItem(rel, None, None, meta, error=error, detail=caption_rel)
        try:
            image = read_regular_file(self.root, rel, self.config.max_file_bytes)
        except NotRegularFile as e:
            return RawItem(rel, None, caption, meta, error="not_a_regular_file", detail=str(e))
        except FileTooLarge as e:
            return RawItem(rel, None, caption, meta, error="file_too_large", detail=str(e))
        except OSError as e:
            return RawItem(rel, None, caption, meta, error="unreadable_file", detail=str(e))
        return RawItem(rel, image, caption, meta)


def _caption_of(rel: str) -> str:
    return rel.rsplit(".", 1)[0] + ".txt"


def _is_folder(path: Path) -> bool:
    """A folder itself, not through a symlink (a symlink is listed, then refused when read)."""
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return True
