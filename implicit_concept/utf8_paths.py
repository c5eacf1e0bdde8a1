"""Whether a folder's path can be handed to the libraries that take paths as UTF-8 text (pyarrow's
tables, tokenizers' files), and the path as its bytes spell it.

Those libraries encode the ``str`` Python holds for a path as UTF-8. That is the path on disk only
when Python reads file names as UTF-8: under ``LC_ALL=C`` with ``PYTHONUTF8=0`` it reads them as
ASCII, so ``café`` is held as escaped bytes the libraries refuse, and under a Latin-1 locale as
``cafÃ©``, which they would write under another name. Such a name is valid UTF-8: the fix is the
interpreter's setting, not a new folder, so the two causes are told apart.
"""
from __future__ import annotations

import codecs
import os
import sys


def shown_path(path: str | os.PathLike[str]) -> str:
    """``path`` as its bytes read in UTF-8 (``café`` whatever the locale), a byte that is not
    UTF-8 shown as its escape (``\\xff``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def utf8_path_problem(path: str | os.PathLike[str], held: str) -> str | None:
    """Why ``path`` (absolute: the working folder's name counts) cannot be handed to the library
    that writes or reads ``held`` there, in words to follow its shown name; None when it can."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"the folder's name is not valid UTF-8, which {held} cannot be under; choose another folder"
    encoding = codecs.lookup(sys.getfilesystemencoding()).name
    if raw.isascii() or encoding == "utf-8":
        return None
    return (f"this Python reads file names as {encoding}, not UTF-8 (a C or POSIX locale with PYTHONUTF8=0), "
            f"so {held} would miss a name beyond ASCII; rerun with PYTHONUTF8=1 (or LC_ALL=C.UTF-8)")
