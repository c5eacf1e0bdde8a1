"""Files that are either whole or absent: atomic writes, folders renamed into place, claimed and
locked folders.

Every long job here can be killed at any point and resumed, and several processes may share a cache,
so nothing is ever written in place: a file or folder is written under :func:`temporary_name` and
renamed when complete. A folder that holds a job's outputs is *claimed* with a record of what made
it, and a later job with another record is refused instead of mixing the two. A folder or cache
entry is made by one process at a time: the maker holds its :func:`locked`, and a second process
waits, then reuses what the first made.

What those writes and their readers share lives here too: a full disk said one way
(:func:`space_message`, :func:`writing`, :func:`require_space`), the bounded reads of a file someone
handed over (:func:`read_regular_file`, :func:`read_json_object`), content hashes
(:func:`sha256_file`, :func:`folder_sha256`), the fields two records differ in
(:func:`json_differences`) and :func:`discard_output`.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence


#: What :func:`temporary_name` adds; ``*TEMPORARY_MARK*`` finds leftovers of a killed writer.
TEMPORARY_MARK = ".tmp-"

log = logging.getLogger(__name__)


class FolderClaimError(ValueError):
    """A folder holds the outputs of another config; the message names the folder."""


class FolderBusyError(ValueError):
    """Another process holds a folder's lock; the message names the folder and that process's pid."""


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, and unique per process."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a writer's temporary (:func:`temporary_name`): never data, whether its
    writer still runs or was killed."""
    name = Path(path).name
    return name.startswith(".") and TEMPORARY_MARK in name


#: The lock file :func:`locked` keeps inside a folder it claims with ``inside``: hidden, so no
#: reader, listing or hash of the folder takes it for data.
LOCK_NAME = ".implicit-concept.lock"

#: Errors of opening a lock file where this process may not write (a read-only mount or share).
_CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)


def lock_path(path: Path, inside: bool = False) -> Path:
    """The file :func:`locked` locks for ``path``: ``path/.implicit-concept.lock`` with ``inside``,
    else ``.NAME.lock`` beside it. Named from the real path (symlinks resolved, ``.`` and ``..``
    gone), so every spelling of one folder takes one lock."""
    real = Path(path).resolve()
    if inside:
        return real / LOCK_NAME
    if not real.name:
        raise ValueError(f"{path}: the root folder cannot be locked; choose a folder below it")
    return real.with_name(f".{real.name}.lock")


@contextmanager
def read_locked(path: Path, inside: bool = False, wait: bool = True) -> Iterator[str | None]:
    """Hold ``path``'s lock shared for the block, so that no maker (:func:`locked`) changes it while
    it is read; yields None. A maker holding it: with ``wait``, wait for it to finish; without, yield
    its pid (as text; "unknown" if unrecorded) and hold nothing. Only reads: no lock file is made,
    so this works in a read-only folder (one never locked has nothing to wait for)."""
    try:
        fd = os.open(lock_path(path, inside), os.O_RDONLY)
    except OSError:
        yield None
        return
    try:
        try:
            busy = _take(fd, fcntl.LOCK_SH, path, wait)
        except OSError:
            busy = None  # a filesystem without shared locks on read-only descriptors: read unlocked
        yield busy
    finally:
        os.close(fd)


def _take(fd: int, mode: int, path: Path, wait: bool) -> str | None:
    """Take ``flock`` ``mode`` on ``fd``: None once held; where another process holds it and not
    ``wait``, its pid (as text; "unknown" if unrecorded), holding nothing."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        if not wait:
            return pid
        log.warning("%s: in use by another process (pid %s); waiting for it", path, pid)
        fcntl.flock(fd, mode)
    return None


def _open_lock(lock: Path) -> int | None:
    """An fd on ``lock``, made if need be; None where this process cannot write there."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno not in _CANNOT_WRITE:
            raise
    try:  # a lock file another process made: waiting on it still waits for a writer elsewhere
        return os.open(lock, os.O_RDONLY)
    except OSError:
        return None


@contextmanager
def locked(path: Path, wait: bool = True, refusal: str = "wait for it to finish", holder: bool = True,
           inside: bool = False) -> Iterator[None]:
    """Hold the lock of ``path`` (a folder or file, made or not yet) for the block, so that one
    process at a time makes it.

    The lock is ``flock`` on :func:`lock_path`'s file, holding the holder's pid: the kernel drops it
    when the holder ends, however it ends, so a killed job never leaves a folder locked. It is named
    from the real path, so a folder reached through a symlink takes the same lock. ``inside``: the
    lock file lives in the folder ``path`` itself (which must exist), not in its parent: for a
    folder a user names (``--out``, a run folder), so that its parent need not be writable and
    holds no lock file. A cache entry made by renaming a folder into place locks beside it.
    With ``wait`` a second process blocks until the first is done (then finds what it made);
    without, it fails at once with :class:`FolderBusyError`, naming the folder, the holder's pid and
    ``refusal``. Not re-entrant: a process must not lock a path it already holds. With ``holder``
    false the block runs without the lock: the processes of one multi-GPU run make an entry
    together while their main process holds it, and wait for it at a barrier.

    Where the lock file cannot be written (a read-only cache or share), the block runs without it:
    writing ``path`` needs that same folder writable, so this process can only read what is already
    complete there (entries are renamed into place whole); anything it would have to write fails
    with an error naming the file.
    """
    if not holder:
        yield
        return
    path = Path(path)
    fd = _open_lock(lock_path(path, inside))
    if fd is None:
        log.debug("%s: cannot write its lock file; reading it unlocked", path)
        yield
        return
    try:
        try:
            busy = _take(fd, fcntl.LOCK_EX, path, wait)
        except OSError as e:  # a read-only descriptor where exclusive locks need a writable one (NFS)
            if e.errno != errno.EBADF:
                raise
        else:
            if busy is not None:
                raise FolderBusyError(f"{path}: in use by another process (pid {busy}); {refusal}")
            try:  # the holder's pid, for whoever finds it busy (after a wait too)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            except OSError:
                pass  # a lock file this process can only read: held all the same, its pid unrecorded
        yield
    finally:
        os.close(fd)


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
        raise naming(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save_image(image: Any, path: Path, format: str = "PNG", **options: Any) -> None:
    """``image.save`` (a PIL image, with ``options``), renamed into place whole: a kill mid-write
    leaves the image before, never half of one under its name."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    atomic_write_bytes(path, buffer.getvalue())


def naming(error: OSError, path: Path) -> OSError:
    """``error`` naming ``path`` when it names no file (a ``write`` to an open file: a full disk,
    a file size limit), so the message says which file could not be written."""
    if error.filename is not None or error.errno is None:
        return error
    return type(error)(error.errno, error.strerror or os.strerror(error.errno), str(path))


#: How a library that wraps an OS error in its own type says it: Rust's ``io::Error`` text, as
#: safetensors raises it ("I/O error: No space left on device (os error 28)").
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")


def os_error(error: BaseException, path: Path) -> OSError | None:
    """``error``, raised while ``path`` (a file or folder) was written, as the ``OSError`` it is,
    naming ``path`` when it names no file; None when it is no OS error (a bug, a bad value). A
    library's own error type that carries one in its text (safetensors' ``SafetensorError``) counts:
    raised as it was, a full disk read "Error while serializing" in a 40-line traceback."""
    if isinstance(error, OSError):
        return naming(error, path)
    found = _OS_ERROR_TEXT.search(str(error)) if isinstance(error, Exception) else None
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(path))


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Run a block that writes ``path`` (a file, or a folder of them) through a library: an OS error
    it raises, however the library wrapped it, comes out as an ``OSError`` naming ``path``
    (:func:`os_error`), which the command line says in one line; any other error as it was."""
    try:
        yield
    except Exception as e:
        found = os_error(e, Path(path))
        if found is None or found is e:
            raise
        raise found from None


#: Errors of writing that no other folder choice fixes: free space, or raise the limit, and rerun.
_NO_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
             errno.EFBIG: "the file size limit was hit (ulimit -f)"}


def out_of_space(error: OSError) -> str | None:
    """What a write error says about space ("the disk is full", ...), or None for other errors."""
    return _NO_SPACE.get(error.errno) if error.errno is not None else None


def free_bytes(path: Path) -> int | None:
    """The bytes free to this user on the disk that holds ``path`` (or would: its nearest existing
    folder); None where that cannot be asked, or the filesystem reports no size at all (some FUSE
    mounts say 0 blocks of 0 free, and take writes all the same)."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        st = os.statvfs(here)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize if st.f_blocks else None


def size_text(n: int) -> str:
    """Bytes for a person: ``812 KiB``, ``3.4 GiB``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


#: How :func:`require_space` begins its error's text: a refusal before anything was written, with its
#: figures (kept however the error is re-raised: an ``OSError``'s errno, text and file travel with it).
NOT_ENOUGH_SPACE = "not enough free space"


def space_message(error: OSError, where: Path | None = None) -> str | None:
    """One line for an error of writing that space causes (:func:`out_of_space`): the file (else
    ``where``), what ran out, how much is free there now, and that a rerun resumes; None for any other
    error. What a command says whatever step ran out (a shard, a checkpoint, a pipeline, an image)."""
    full = out_of_space(error)
    if full is None:
        return None
    target = error.filename or where
    if str(error.strerror).startswith(NOT_ENOUGH_SPACE):
        why = error.strerror
    else:
        free = free_bytes(Path(target)) if target is not None and error.errno != errno.EFBIG else None
        why = f"{full} ({error.strerror or error}{f'; {size_text(free)} free there now' if free is not None else ''})"
    return f"{f'{target}: cannot be written' if target else 'cannot write a file'}: {why}; make room and rerun the same command to resume"


def require_space(path: Path, needed: int, what: str) -> None:
    """Refuse, before a byte is written, a step that will write ``needed`` bytes (``what``, e.g. "the
    fine-tuned pipeline") to ``path`` on a disk with less free: it fails at once with both figures,
    not after the hours of work before its write. Where the free space cannot be asked, it runs."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise OSError(errno.ENOSPC, f"{NOT_ENOUGH_SPACE} for {what} ({size_text(needed)} needed, {size_text(free)} free there)",
                      str(path))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """The one JSON layout of every record the project writes: sorted keys, indented, UTF-8, and
    strict JSON, as ``JSON.parse``, jq and every other parser read it: a number that is not finite
    (NaN, infinity: Python's ``json`` would write tokens no other parser takes) is ``null``, and a
    lone surrogate (a file name that is not UTF-8, as Python holds one) its ``\\uDCxx`` escape, which
    ``json.loads`` reads back as the same name (its bytes would not be UTF-8)."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # only lone surrogates fail to encode


def finite_json(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, infinity) replaced by None, at any depth
    (dicts, lists, tuples): JSON has no such number, and ``null`` is what ``JSON.stringify`` writes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


#: The largest JSON file read as a record, state or config: far above any the project writes (the
#: tiny track's results.json is 250 KB), and parsed whole, so a file handed over cannot take the memory.
MAX_JSON_FILE_BYTES = 64 << 20


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; ValueError names the file
    otherwise. A FIFO (which would block the read forever) or a device (``/dev/zero``, endless) put
    where a file was expected is refused before a byte is read (FileNotFoundError, and
    IsADirectoryError for a folder, pass through as reading one raises them)."""
    with _open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: over {limit} bytes, more than a file of this kind holds; not read")
    return data


def _open_regular(path: Path) -> io.BufferedReader:
    """``path`` open for reading, once it is known to be a regular file: it is opened without
    blocking (opening a FIFO otherwise waits for a writer) and refused, naming it, unless it is one."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):  # what reading a folder has always raised
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        raise ValueError(f"{path}: {file_kind(mode)}, where a file was expected")
    return os.fdopen(fd, "rb")


def discard_output(*fds: int) -> None:
    """Point each file descriptor in ``fds`` at /dev/null: a reader or a terminal gone (a pipe into
    ``head``, a hangup) would fail every later write to it, the interpreter's flush at exit included."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words, for errors that say what stands where a
    file was expected: a FIFO (which would block a read), a device, a folder."""
    for test, kind in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return "not a file"


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file someone may have handed over; ValueError names the file unless it
    is one (FileNotFoundError passes through, for the caller to say what was expected there). At
    most :data:`MAX_JSON_FILE_BYTES`, from a regular file (:func:`read_regular_file`)."""
    data = read_regular_file(Path(path), MAX_JSON_FILE_BYTES)
    try:
        value = json.loads(data.decode("utf-8"))
    except ValueError as e:  # bad UTF-8, bad JSON, or an integer over Python's 4300 digits
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not an object")
    return value


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, symlinks followed: the one test behind every
    refusal to write into what is read."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_apart(out: Path, option: str, inputs: dict[str, Any]) -> None:
    """Refuse an output folder that is, holds or lies inside one of ``inputs`` (name -> path; other
    values, such as in-memory images, are skipped): writing or replacing it would destroy what it reads."""
    for name, value in inputs.items():
        if isinstance(value, (str, Path)) and (within(out, value) or within(value, out)):
            raise ValueError(f"{option} {Path(out).resolve()}: overlaps {name} {Path(value).resolve()}; "
                             "write it to a folder apart from its inputs")


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
    aside = temporary_name(_replaced_name(final))
    if replace_existing and final.exists():
        os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside)
    else:
        aside.unlink(missing_ok=True)


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


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: In :func:`json_changes`, the side of a change that has no such key (or list item).
MISSING: Any = _Missing()


def json_changes(old: Any, new: Any, *, into_lists: bool = False, where: str = "") -> list[tuple[str, Any, Any]]:
    """``(path, old value, new value)`` wherever two JSON values differ: objects are compared key by
    key (``a.b``; a key only one side has is :data:`MISSING` on the other), any other value whole.
    ``into_lists``: lists that hold objects or lists are compared item by item too (``a[3].b``).
    Two values the same at the top: no change; differing there, the path is ``(the whole record)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append((path, old.get(key, MISSING), new.get(key, MISSING)))
            else:
                out += json_changes(old[key], new[key], into_lists=into_lists, where=path)
        return out
    if into_lists and isinstance(old, list) and isinstance(new, list) and any(isinstance(v, (dict, list)) for v in old + new):
        out = []
        for i in range(max(len(old), len(new))):
            a, b = (old[i] if i < len(old) else MISSING), (new[i] if i < len(new) else MISSING)
            path = f"{where}[{i}]"
            out += [(path, a, b)] if a is MISSING or b is MISSING else json_changes(a, b, into_lists=True, where=path)
        return out
    return [] if old == new else [(where or "(the whole record)", old, new)]


def json_differences(old: Any, new: Any, *, into_lists: bool = False) -> list[str]:
    """The paths at which two JSON values differ (:func:`json_changes`): what every "did the config
    change?" check names."""
    return [path for path, _, _ in json_changes(old, new, into_lists=into_lists)]


def shown_differences(paths: Sequence[str], show: int = 8) -> str:
    """``paths`` for a message: the first ``show``, then how many more."""
    return ", ".join(paths[:show]) + (f" and {len(paths) - show} more" if len(paths) > show else "")


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


def sha256_file(path: Path) -> str:
    """The sha256 of ``path``, a regular file (a FIFO or device put in its place is refused
    naming it, not read forever)."""
    h = hashlib.sha256()
    with _open_regular(path) as f:
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
