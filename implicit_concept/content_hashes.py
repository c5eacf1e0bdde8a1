"""Content hashes: what names a cache entry, a dataset or a model is its bytes, not its path.

A moved or differently spelled folder hashes the same (:func:`folder_sha256`); changed bytes at the
same path do not. A FIFO or device put where a file was is refused, not hashed forever.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

from implicit_concept.bounded_reads import open_regular


def sha256_file(path: Path) -> str:
    """The sha256 of ``path``, a regular file (a FIFO or device put in its place is refused
    naming it, not read forever)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_known_sha256: dict[tuple[str, int, int, int], str] = {}


def folder_sha256(folder: Path, only: Sequence[str] | None = None, digest: Callable[[Path], str] | None = None) -> str:
    """The content of ``folder`` (or of its entries named in ``only``) as one sha256: every file's
    path inside it and sha256, hidden files (temporaries, locks) left out. A moved or differently
    spelled folder hashes the same; changed bytes at the same path do not.

    Each file's hash is remembered for this process by path, size and mtime: a run names the same
    gigabytes of weights many times, and reading them costs seconds (about 1.7 GB/s) each time.
    ``digest``: what a file's hash is, if not the sha256 of its bytes (a config hashed without the
    path it was loaded from, say).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; its content names what is cached from it")
    roots = [folder / name for name in only] if only is not None else [folder]
    files = sorted({f for root in roots for f in ([root] if root.is_file() else root.rglob("*")) if f.is_file()})
    h = hashlib.sha256()
    for f in files:
        inside = f.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in inside.split("/")):
            continue
        st = f.stat()
        known = (getattr(digest, "__qualname__", None), str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if known not in _known_sha256:
            _known_sha256[known] = (digest or sha256_file)(f)
        h.update(f"{inside}\0{_known_sha256[known]}\n".encode("utf-8"))
    return h.hexdigest()
