"""A shared model folder as it was made, and a cheap check that it still is.

Every method is handed the same fine-tune folder by ``ctx.finetune`` (``np``, ``sld``, ``esd`` and
a lab's plug-in all start from ``sd``), and the same cached base (``ctx.base``, which every fine-tune
and later run start from), so a method that writes into one (``save_pretrained`` to the
path it was given) would change what every later method samples, silently. Made, a folder is sealed:
each file's size, mtime and sha256 beside it. Reused, it is checked by ``stat`` alone; a file whose
size or mtime moved is hashed again, so a copy that kept the bytes but not the times (``cp -r``)
passes and is sealed anew (where the seal can be written: a read-only copy is hashed at each use),
while changed bytes, or a file added or removed, are refused.

The dataset's splits are shared the same way (every fine-tune trains on ``ctx.train_shards``, cached
under the dataset's recorded checksums, not the bytes read), but hold no seal of their own: their
files' sizes and mtimes are listed in memory while a run uses them (:func:`stat_listing`), and a
method that wrote into them is refused before a fine-tune trains on what it wrote.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from implicit_concept.content_hashes import sha256_file
from implicit_concept.file_locks import CANNOT_WRITE
from implicit_concept.files import atomic_write_json
from implicit_concept.json_records import read_json_object


class FolderChanged(ValueError):
    """A sealed folder's files are not the ones it was made with (a ``ValueError``: the command says
    it in one line, naming the file)."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _entry(path: Path, sha256: str | None = None) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256 or sha256_file(path)}


def seal(folder: Path, record: Path) -> None:
    """Record every file of ``folder`` (size, mtime, sha256) in ``record``, written whole."""
    atomic_write_json(record, {"folder": folder.name,
                               "files": {str(p.relative_to(folder)): _entry(p) for p in _files(folder)}})


def check_seal(folder: Path, record: Path, remedy: str) -> None:
    """Refuse, naming the first file that differs and ``remedy``, a folder whose files are not those
    ``record`` sealed. A folder sealed by no record (made before seals were kept) is sealed now."""
    if not record.is_file():
        seal(folder, record)
        return
    sealed = read_json_object(record).get("files")
    if not isinstance(sealed, dict):
        raise FolderChanged(f"{record}: not a seal (no 'files' object); delete it to seal {folder} as it is now")
    present = {str(p.relative_to(folder)): p for p in _files(folder)}
    for name in sorted(set(sealed) ^ set(present)):
        what = "added" if name in present else "removed"
        raise FolderChanged(f"{folder / name}: {what} since the folder was made ({record}); {remedy}")
    moved = {}
    for name, path in present.items():
        entry, stat = sealed[name], path.stat()
        if (stat.st_size, stat.st_mtime_ns) == (entry.get("size"), entry.get("mtime_ns")):
            continue
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise FolderChanged(f"{path}: changed since the folder was made ({record}); {remedy}")
        moved[name] = _entry(path, digest)
    if moved:
        try:
            atomic_write_json(record, {"folder": folder.name, "files": {**sealed, **moved}})
        except OSError as e:
            if e.errno not in CANNOT_WRITE:
                raise  # a read-only copy (a share, chmod a-w) passes: its bytes are checked; their new times hashed again next use


def stat_listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file below ``folder`` by its size and mtime (none for a folder that is not there)."""
    return {str(p.relative_to(folder)): (st.st_size, st.st_mtime_ns) for p in _files(folder) for st in [p.stat()]}


def check_listing(folder: Path, listing: dict[str, tuple[int, int]], remedy: str) -> None:
    """Refuse, naming the first file added, removed or changed and ``remedy``, a folder whose files are
    not those :func:`stat_listing` listed."""
    now = stat_listing(folder)
    for name in sorted(set(listing) ^ set(now)):
        raise FolderChanged(f"{folder / name}: {'added' if name in now else 'removed'} since the run listed it; {remedy}")
    for name in sorted(now):
        if now[name] != listing[name]:
            raise FolderChanged(f"{folder / name}: changed since the run listed it; {remedy}")
