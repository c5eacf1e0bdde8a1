"""Files that are either whole or absent: atomic writes, folders renamed into place, claimed folders.

Every long job here can be killed at any point and resumed, and several processes may share a cache,
so nothing is ever written in place: a file or folder is written under :func:`temporary_name` and
renamed when complete. A folder that holds a job's outputs is *claimed* with a record of what made
it, and a later job with another record is refused instead of mixing the two.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import pandas as pd

#: What :func:`temporary_name` adds; ``*TEMPORARY_MARK*`` finds leftovers of a killed writer.
TEMPORARY_MARK = ".tmp-"


class FolderClaimError(ValueError):
    """A folder holds the outputs of another config; the message names the folder."""


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, and unique per process."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = temporary_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """The one JSON layout of every record the project writes: sorted keys, indented, UTF-8."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def atomic_write_parquet(path: Path, frame: "pd.DataFrame") -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_dir(final: Path, replace_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error it becomes ``final``.

    An existing ``final`` is removed first with ``replace_existing`` (a stale export). Otherwise, if
    another process renamed its own folder into ``final`` first, ours is dropped: both were made
    from the same inputs. On an error the temporary folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    tmp = temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace_existing and final.exists():
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def claim(record_file: Path, record: dict[str, Any], refusal: str, keys: Sequence[str] | None = None) -> None:
    """Write ``record`` to ``record_file``, or check that the record already there is the same
    (in ``keys`` only, when given: a record may also hold what does not decide the outputs).

    ``refusal`` ends the error message ("use another --name or remove the folder").
    """
    record = json.loads(json.dumps(record))
    if record_file.is_file():
        previous = json.loads(record_file.read_text(encoding="utf-8"))
        if keys is not None:
            previous, record = ({k: r.get(k) for k in keys} for r in (previous, record))
        if previous != record:
            raise FolderClaimError(f"{record_file.parent}: was made with another config ({record_file.name} differs); {refusal}")
    else:
        record_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record_file, record)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
