"""A directory tree of images with caption sidecars (``name.jpg`` + ``name.txt``).

Files are listed once, sorted by relative path, and split by a hash of that path, so a file keeps
its split when others are added. Images stay raw bytes here: decoding is the resizer's job, and a
bad file becomes an item with an error, never an exception.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from implicit_concept.sample import SPLITS

from .base import RawItem, Source, split_of

DEFAULT_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp")


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def decode_caption(data: bytes) -> tuple[str | None, str | None]:
    """Return ``(caption, None)`` or ``(None, reason)``; shared by every source of external captions."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, "caption_not_utf8"
    text = text.strip()
    return (text, None) if text else (None, "empty_caption")


@dataclass(frozen=True)
class FolderConfig:
    path: str
    test_fraction: float = 0.1
    #: File name endings that count as images, matched case-insensitively.
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS

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


class FolderSource(Source):
    """Each split's files, in relative-path order, cut into shards of ``shard_size``."""

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
            if p.suffix.lower() in suffixes and p.is_file()
        )
        if not files:
            raise ValueError(
                f"path: no images ({', '.join(config.extensions)}) under {str(root)!r}"
            )
        self.config = config
        self.root = root
        self.shard_size = shard_size
        self._files = {s: [f for f in files if split_of(f, config.test_fraction) == s] for s in SPLITS}

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
        path = self.root / rel
        meta = {"path": rel}
        try:
            caption_bytes = path.with_suffix(".txt").read_bytes()
        except FileNotFoundError:
            return RawItem(rel, None, None, meta, error="missing_caption")
        except OSError:
            return RawItem(rel, None, None, meta, error="unreadable_caption")
        caption, error = decode_caption(caption_bytes)
        if error:
            return RawItem(rel, None, None, meta, error=error)
        try:
            image = path.read_bytes()
        except OSError:
            return RawItem(rel, None, caption, meta, error="unreadable_file")
        return RawItem(rel, image, caption, meta)
