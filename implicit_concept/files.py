"""Files that are either whole or absent: atomic writes, folders renamed into place, claimed folders.

Every long job here can be killed at any point and resumed, and several processes may share a cache,
so nothing is ever written in place: a file or folder is written under :func:`temporary_name` and
renamed when complete, and the temporaries a killed writer left are dropped on the next write. A
folder that holds a job's outputs is *claimed* with a record of what made it, and a later job with
another record is refused instead of mixing the two (the one process making it holds its lock:
:mod:`implicit_concept.file_locks`). An output folder is kept apart from what it reads
(:func:`check_apart`).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from implicit_concept.disk_space import naming, out_of_space
from implicit_concept.file_locks import LOCK_NAME
from implicit_concept.json_records import json_differences, json_text, read_json_object, shown_differences


#: What :func:`temporary_name` adds; ``*TEMPORARY_MARK*`` finds leftovers of a killed writer.
TEMPORARY_MARK = ".tmp-"

log = logging.getLogger(__name__)


class FolderClaimError(ValueError):
    """A folder holds the outputs of another config; the message names the folder."""


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, and unique per process."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a writer's temporary (:func:`temporary_name`): never data, whether its
    writer still runs or was killed."""
    name = Path(path).name
    return name.startswith(".") and TEMPORARY_MARK in name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, renamed into place; the temporaries of earlier writers of
    ``path`` that were killed mid-write are dropped (:func:`remove_dead_writers_temporaries`)."""
    path = Path(path)
    tmp = temporary_name(path)
    remove_dead_writers_temporaries(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a full disk keeps no partial copy
        raise naming(e, path, tmp) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_unless_same(path: Path, data: bytes) -> None:
    """:func:`atomic_write_bytes`, unless ``path`` is a file holding ``data`` already: a finished
    build rerun writes nothing, so a read-only copy of it serves (a benchmark's ``--data``)."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data) and Path(path).read_bytes() == data:
            return
    except OSError:
        pass  # absent or unreadable: written
    atomic_write_bytes(path, data)


def atomic_save_image(image: Any, path: Path, format: str = "PNG", **options: Any) -> None:
    """``image.save`` (a PIL image, with ``options``), renamed into place whole: a kill mid-write
    leaves the image before, never half of one under its name."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def discard_output(*fds: int) -> None:
    """Point each file descriptor in ``fds`` at /dev/null: a reader or a terminal gone (a pipe into
    ``head``, a hangup) would fail every later write to it, the interpreter's flush at exit included."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, symlinks followed: the one test behind every
    refusal to write into what is read."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def visible_entries(folder: Path) -> list[str]:
    """The names in ``folder`` that are not hidden, sorted: what makes an output folder "not empty"
    to a command deciding whether it may write there (its lock and a killed writer's temporaries,
    both hidden, do not count)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))


def check_apart(out: Path, option: str, inputs: dict[str, Any]) -> None:
    """Refuse an output folder that is, holds or lies inside one of ``inputs`` (name -> path; other
    values, such as in-memory images, are skipped): writing or replacing it would destroy what it reads."""
    for name, value in inputs.items():
        if isinstance(value, (str, Path)) and (within(out, value) or within(value, out)):
            raise ValueError(f"{option} {Path(out).resolve()}: overlaps {name} {Path(value).resolve()}; "
                             "write it to a folder apart from its inputs")


def foreign_output(folder: Path, names: Sequence[str]) -> str | None:
    """The first of ``names`` in ``folder`` that the command writing them there did not write, as
    "NAME (why)"; None if there is none. Such a command replaces or removes them while it holds
    ``folder`` (its lock file inside, kept after), and writes plain files: one in a folder it never
    held is a lab's own (another tool's, its notes), and a link is never its own (replacing it
    loses the link). Checked before the folder is held, as holding it leaves the lock file."""
    folder = Path(folder)
    held_before = (folder / LOCK_NAME).is_file()
    for name in names:
        path = folder / name
        if path.is_symlink():
            return f"{name} (a symbolic link)"
        if path.exists() and not held_before:
            return f"{name} (in a folder this command never wrote to)"
    return None


@contextmanager
def atomic_dir(final: Path, replace_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error it becomes ``final``.

    An existing ``final`` is replaced with ``replace_existing`` (a stale export): renamed aside to a
    temporary name of its own (:func:`_replaced_name`) and removed only once the new folder is in
    place, so a kill at any point leaves ``final`` whole (the old or the new) or absent, never half
    removed (a rerun refused a half-removed export as "not an export"). Otherwise, if another
    process renamed its own folder into ``final`` first, ours is dropped: both were made from the
    same inputs. On an error the temporary folder is removed and ``final`` is untouched; a full disk
    that names no file (a ``write`` to an open one) is said naming ``final``.
    """
    final = Path(final)
    tmp = temporary_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    remove_dead_writers_temporaries(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and out_of_space(e):  # a write to an open file names none: say which folder filled
            raise naming(e, final) from None
        raise
    try:
        umask_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = temporary_name(_replaced_name(final))
    if replace_existing and final.exists():
        os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise naming(e, final, tmp) from None
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask (read by setting it, so set back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def umask_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the mode the umask grants what is made new (a file
    with an execute bit keeps it): a library may choose its own, and safetensors writes every
    file 0600 whatever the umask, which left a shared cache's weights and a run's models
    unreadable to the group that reads every other file of them. Links are left alone."""
    umask = current_umask()
    for root, folders, files in os.walk(folder):
        for path in [root, *(os.path.join(root, name) for name in folders + files)]:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            wanted = (0o777 if stat.S_ISDIR(mode) or mode & 0o111 else 0o666) & ~umask
            if stat.S_IMODE(mode) != wanted:
                os.chmod(path, wanted)


def _replaced_name(final: Path) -> Path:
    """The path whose :func:`temporary_name` holds the ``final`` an :func:`atomic_dir` replaces, until
    its new one is in place (a temporary like any other: a killed writer's is removed later)."""
    return final.with_name(f"{final.name}.replaced")


def remove_dead_writers_temporaries(final: Path) -> None:
    """Remove the temporaries of ``final`` (:func:`temporary_name`) whose writer is no longer running
    on this machine: a writer killed while it wrote (a fine-tune's pipeline, a base, a run's
    ``results.html`` or an image) left one that no later writer, with its own pid, would ever reuse,
    and a resumed run kept it forever (gigabytes at the paper track's scale). So did one killed
    while :func:`atomic_dir` replaced ``final``: the old folder, renamed aside. A temporary of a
    process that runs, or of a pid not ours to look at, is left alone."""
    prefixes = [f".{name}{TEMPORARY_MARK}" for name in (final.name, _replaced_name(final).name)]
    try:
        leftovers = [(p, prefix) for p in final.parent.iterdir() for prefix in prefixes
                     if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()]
    except OSError:
        return
    for leftover, prefix in leftovers:
        pid = int(leftover.name[len(prefix):])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("%s: removing the temporary of a writer that is gone (pid %d)", leftover, pid)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except OSError:
            pass  # running, as another user: not ours to judge


def claim(record_file: Path, record: dict[str, Any], refusal: str, keys: Sequence[str] | None = None) -> None:
    """Write ``record`` to ``record_file``, or check that the record already there is the same
    (in ``keys`` only, when given: a record may also hold what does not decide the outputs).

    ``refusal`` ends the error message ("use another --name or remove the folder").
    """
    record = json.loads(json.dumps(record))
    if record_file.is_file():
        try:
            previous = read_json_object(record_file)
        except ValueError as e:
            raise FolderClaimError(f"{e}; not a record of what made {record_file.parent}: {refusal}") from None
        if keys is not None:
            previous, record = ({k: r.get(k) for k in keys} for r in (previous, record))
        differ = json_differences(previous, record)
        if differ:
            raise FolderClaimError(f"{record_file.parent}: was made with another config "
                                   f"({record_file.name} differs in {shown_differences(differ)}); {refusal}")
    else:
        record_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record_file, record)
