"""What every probe's command line shares with ``implicit-concept``'s: a bad argument refused on one
line of stderr (exit 2) before any heavy import or work, Ctrl-C ending it with exit 130 and ``| head``
with 141, no traceback.

A probe measures for minutes to an hour; an unwritable ``--json`` found at its end loses the figures,
and a negative count or a missing folder found after torch loads costs seconds for a usage error.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from benchmark.cli import Parser, int_at_least, one_line, path_problem
from benchmark.process_exit import stdout_closed
from implicit_concept.bounded_reads import file_kind
from implicit_concept.files import atomic_write_json
from implicit_concept.worker_processes import interrupts_not_lost

count = int_at_least


def number(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` (``nan`` is none)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    wanted = f"a number >= {low:g}" if high == math.inf else f"a number from {low:g} to {high:g}"
    parse.__name__ = wanted
    return parse


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """``python -m module``'s parser: its usage errors on one line of stderr, exit 2."""
    return Parser(prog=f"python -m {module}", description=description)


def existing(kind: str) -> Callable[[str], str]:
    """An argparse type: a path that exists as ``kind`` (``folder``, ``path``, ``source``) and can be read."""

    def check(text: str) -> str:
        problem = path_problem(text, kind)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    check.__name__ = f"existing {kind}"
    return check


def output(kind: str, empty: bool = False) -> Callable[[str], str]:
    """An argparse type: a ``file`` or ``folder`` the probe can write at its end: not something else
    standing there, and below a folder this user may write in; with ``empty``, a folder that holds
    nothing yet (a probe that makes fixed files there would fail on, or measure, the last run's)."""

    def check(text: str) -> str:
        path = Path(text)
        if path.exists():
            if path.is_dir() != (kind == "folder"):
                raise argparse.ArgumentTypeError(f"{text}: {file_kind(path.stat().st_mode)}, where a {kind} is to be written")
            if not os.access(path, os.W_OK | (os.X_OK if kind == "folder" else 0)):
                raise argparse.ArgumentTypeError(f"{text}: cannot be written (permission denied)")
            if empty and any(path.iterdir()):
                raise argparse.ArgumentTypeError(f"{text}: not empty; name a new or empty folder (nothing in it is removed)")
            return text
        above = next(p for p in path.absolute().parents if p.exists())
        if not above.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: cannot be made below {above}, which is not a folder")
        if not os.access(above, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"{text}: cannot be made in {above} (permission denied)")
        return text

    check.__name__ = f"writable {kind}"
    return check


def write_json(path: str | Path, result: Any) -> None:
    """``--json``'s file, written whole, its folder made: ``reports/speed.json`` with no ``reports``
    yet lost an hour's figures at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit status. As for ``implicit-concept``: a reader that left (``| head``) ends it
    quietly; an input the library refused (a ``ValueError`` naming the file: a folder with no images,
    no detector) is one line and 2; Ctrl-C one line and 130 (each probe's children are stopped by
    their own machinery: pools' workers and measuring children ignore it)."""
    try:
        with interrupts_not_lost():
            code = main(argv) or 0
        sys.stdout.flush()  # a reader that closed the pipe early is found here, not at exit
        return code
    except BrokenPipeError:
        if stdout_closed():  # `python -m benchmark.perf.NAME | head`: stop quietly, as a program killed by SIGPIPE
            return 128 + 13
        raise
    except (ValueError, FileNotFoundError) as e:
        print(f"{_prog()}: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():  # a second Ctrl-C would cut the line short with a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"{_prog()}: interrupted", file=sys.stderr)
        return 130


def _prog() -> str:
    """``python -m benchmark.perf.NAME`` as it was started, else the script's name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name
