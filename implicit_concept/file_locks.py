"""One process at a time makes a folder or cache entry: ``flock`` on a lock file named from the
real path, held for the making, dropped by the kernel however the holder ends.

Several processes may share a cache or a run folder (two terminals, a cluster's nodes on one
filesystem); a second maker waits for the first, then reuses what it made (:func:`locked`), and a
reader holds the lock shared so nothing changes while it reads (:func:`read_locked`).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


class FolderBusyError(ValueError):
    """Another process holds a folder's lock; the message names the folder and that process's pid."""


class LocksUnavailable(OSError):
    """A lock file's filesystem keeps no locks; ``filename`` is the lock file, ``strerror`` what to do."""


#: The lock file :func:`locked` keeps inside a folder it claims with ``inside``: hidden, so no
#: reader, listing or hash of the folder takes it for data.
LOCK_NAME = ".implicit-concept.lock"

#: Errors of opening a lock file where this process may not write (a read-only mount or share).
CANNOT_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)

#: ``flock``'s errors where the filesystem keeps no locks (an NFS mount without its lock service,
#: Lustre without ``-o flock``, some FUSE and SMB mounts).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


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
def read_locked(path: Path, wait: bool = True) -> Iterator[str | None]:
    """Hold the lock inside the folder ``path`` (the one :func:`locked` takes with ``inside``: every
    folder a reader waits on is claimed so) shared for the block, so that no maker changes it while
    it is read; yields None. A maker holding it: with ``wait``, wait for it to finish; without, yield
    its pid (as text; "unknown" if unrecorded) and hold nothing. Only reads: no lock file is made,
    so this works in a read-only folder (one never locked has nothing to wait for)."""
    try:
        fd = os.open(lock_path(path, inside=True), os.O_RDONLY)
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


def _holder(record: bytes) -> str:
    """Who a lock file says holds it: its pid, and its host where that is not this one (a cluster's
    node, a container: a pid that ``ps`` here would not find, or would find as another process)."""
    fields = record.decode("ascii", "replace").split()
    if not fields:
        return "unknown"
    if len(fields) > 1 and fields[1] != socket.gethostname():
        return f"{fields[0]} on {fields[1]}"
    return fields[0]


def _take(fd: int, mode: int, path: Path, wait: bool) -> str | None:
    """Take ``flock`` ``mode`` on ``fd``: None once held; where another process holds it and not
    ``wait``, its pid (as text; "unknown" if unrecorded), holding nothing."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(os.pread(fd, 512, 0))
        if not wait:
            return pid
        log.warning("%s: in use by another process (pid %s); waiting for it", path, pid)
        fcntl.flock(fd, mode)
    return None


def _open_lock(lock: Path) -> int | None:
    """An fd on ``lock``, made if need be; None where this process cannot write there."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        # The mode the umask grants: each member of a group sharing the folder records itself as holder.
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if e.errno not in CANNOT_WRITE:
            raise
    try:  # a lock file another process made: waiting on it still waits for a writer elsewhere
        return os.open(lock, os.O_RDONLY)
    except OSError:
        return None


def _no_locks(lock: Path, path: Path, e: OSError) -> LocksUnavailable:
    """The error naming ``lock`` where its filesystem cannot lock it: the bare "No locks
    available" named no file and no way forward."""
    return LocksUnavailable(e.errno, f"cannot be locked: its filesystem keeps no file locks (flock: {e.strerror}), which keep two "
                            f"commands from writing {path} at once; use a folder on a local disk, or mount this one with "
                            "locking (NFS: its lock service; Lustre: -o flock)", str(lock))


@contextmanager
def locked(path: Path, wait: bool = True, refusal: str = "wait for it to finish", holder: bool = True,
           inside: bool = False) -> Iterator[None]:
    """Hold the lock of ``path`` (a folder or file, made or not yet) for the block, so that one
    process at a time makes it.

    The lock is ``flock`` on :func:`lock_path`'s file, holding the holder's pid and host: the kernel
    drops it when the holder ends, however it ends, so a killed job never leaves a folder locked
    (nor does a lock file left behind lock anything: deleting it lets a second writer in). It is
    named from the real path, so a folder reached through a symlink takes the same lock. ``inside``: the
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
    with an error naming the file. Where its filesystem keeps no locks at all, a
    :class:`LocksUnavailable` names the lock file and where to work instead.
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
            if e.errno in _NO_LOCKS:
                raise _no_locks(lock_path(path, inside), path, e) from None
            if e.errno != errno.EBADF:
                raise
        else:
            if busy is not None:
                raise FolderBusyError(f"{path}: in use by another process (pid {busy}); {refusal}")
            try:  # the holder's pid and host, for whoever finds it busy (after a wait too)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n".encode("ascii", "replace"), 0)
            except OSError:
                pass  # a lock file this process can only read: held all the same, its pid unrecorded
        yield
    finally:
        os.close(fd)
