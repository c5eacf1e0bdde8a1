"""Reading a file someone handed over: a regular file of bounded size, or a one-line refusal.

A record, a weights file or a caption may be a FIFO (a read blocks forever), a device (``/dev/zero``
reads forever) or far larger than any file of its kind; each is refused, naming it, before a byte
is read (:func:`read_regular_file`, :func:`open_regular`, :func:`file_kind`).
"""
from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; ValueError names the file
    otherwise. A FIFO (which would block the read forever) or a device (``/dev/zero``, endless) put
    where a file was expected is refused before a byte is read (FileNotFoundError, and
    IsADirectoryError for a folder, pass through as reading one raises them)."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: over {limit} bytes, more than a file of this kind holds; not read")
    return data


def open_regular(path: Path) -> io.BufferedReader:
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


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words, for errors that say what stands where a
    file was expected: a FIFO (which would block a read), a device, a folder."""
    for test, kind in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return kind
    return "not a file"
