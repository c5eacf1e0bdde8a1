"""A full disk said one way, whatever step ran out of room and whatever library was writing.

A build, a fine-tune or a benchmark writes for hours; the error that ends one for lack of space must
name the file, what ran out (the disk, a quota, the file size limit), how much is free there now,
and that a rerun resumes (:func:`space_message`). Libraries wrap the OS error in their own types
(:func:`writing` unwraps them), a ``write`` to an open file names no file (:func:`naming`), and a
step that knows its size is refused before it writes (:func:`require_space`).
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def naming(error: OSError, path: Path, temporary: Path | None = None) -> OSError:
    """``error`` naming ``path`` when it names no file (a ``write`` to an open file: a full disk,
    a file size limit) or names ``temporary``, the hidden file ``path`` was written as before its
    rename (a folder in the shard's place), so the message says the file a user knows."""
    if error.errno is None or (error.filename is not None and (temporary is None or error.filename != str(temporary))):
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
