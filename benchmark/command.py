"""``implicit-concept``'s entry point, kept light so that it is in place within the interpreter's
first milliseconds: a Ctrl-C pressed while the command is still importing and reading its command
line (its first half second) ends it with one line and status 130, as a later one does, where
Python printed its ``KeyboardInterrupt`` traceback, cut somewhere in an import."""
from __future__ import annotations

import os
import signal


def console_main() -> None:
    """Import and run the command (``benchmark.cli``), a Ctrl-C in the import taken as above."""
    try:
        from benchmark.cli import console_main as run_command
    except KeyboardInterrupt:
        os._exit(interrupted_while_starting())  # modules half made: nothing of them is run, exit handlers included
    run_command()


def interrupted_while_starting() -> int:
    """Say on stderr that the command was interrupted before its work began, and give its exit
    status; a second Ctrl-C from here on is ignored. Writes with ``os.write``: ``sys.stderr`` may be
    one that a cut import left half set up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.write(2, b"implicit-concept: interrupted while starting; rerun the same command\n")
    except OSError:  # a terminal or reader gone: the exit status says it
        pass
    return 128 + signal.SIGINT
