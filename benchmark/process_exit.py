"""How a command's process ends: its results on stdout closed to what prints after them, and an
exit that does not wait forever on threads or child processes code it called (a method's ``build``,
its pipeline) left running; a reader of stdout gone said quietly, as a program killed by SIGPIPE."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import threading
import time

from implicit_concept.files import discard_output
from implicit_concept.worker_processes import end_with_its_tree

#: How long a finished command waits for threads and child processes it did not start and that are
#: still running (a method's logger sending its last lines) before it exits without them.
LEFT_RUNNING_GRACE_S = 10.0


def exit_past_leftovers(code: int) -> None:
    """Exit with ``code``. The interpreter's exit waits for every non-daemon thread and
    ``multiprocessing`` child, so one that never ends kept a finished run from ever exiting. A child
    still running after the grace is ended with the command (as a daemon child is); a thread cannot
    be ended, so the process exits past it (``os._exit``), exit handlers run first."""
    results_ended()
    threads, children = left_running(LEFT_RUNNING_GRACE_S)
    if not threads and not children:
        sys.exit(code)
    if threading.current_thread() is threading.main_thread():  # a Ctrl-C ended the wait, or none is waited for now:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one would cut what follows short with a traceback
    for child in children:
        end_with_its_tree(child)
    names = ", ".join([f"thread {t.name}" for t in threads] + [f"process {c.name} ({c.pid})" for c in children])
    last_words(f"implicit-concept: {len(threads) + len(children)} left running by code the command called (a method's build "
               f"or pipeline), not daemon: {names}; {'ended, and ' if children else ''}not waited for")
    if not threads:
        sys.exit(code)
    atexit._run_exitfuncs()  # what os._exit skips: temporary files removed, log handlers flushed
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass  # a reader gone: the exit status says the rest
    os._exit(code)


def results_ended() -> None:
    """stdout, which holds the results only, closed to what prints after them: ``sys.stdout`` is stderr."""
    try:
        sys.stdout.flush()
    except OSError:
        discard_output(1)  # a reader gone: the exit status says the rest
    sys.stdout = sys.stderr


def left_running(grace_s: float) -> tuple[list[threading.Thread], list[multiprocessing.process.BaseProcess]]:
    """The non-daemon threads besides this one, and non-daemon ``multiprocessing`` children, still
    running after up to ``grace_s`` seconds of waiting for them (a Ctrl-C ends the wait)."""
    threads = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    children = [c for c in multiprocessing.active_children() if not c.daemon]
    deadline = time.monotonic() + grace_s
    try:
        for waited in [*threads, *children]:
            waited.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass
    return [t for t in threads if t.is_alive()], [c for c in children if c.is_alive()]


def last_words(line: str) -> None:
    """``line`` on stderr, and stdout flushed, where they can still be written: a terminal gone
    (a hangup) or a reader gone takes nothing, and the exit status says the rest."""
    try:
        print(line, file=sys.stderr, flush=True)
        sys.stdout.flush()
    except OSError:
        discard_output(1, 2)


def stdout_closed() -> bool:
    """Whether stdout's reader has gone; if so, stdout is pointed at /dev/null so that nothing else
    (the interpreter's flush at exit included) fails writing to it."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poller.poll(0))  # a pipe with no reader
        if not closed:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                closed = True
        if closed:
            discard_output(fd)
        return closed
    except (AttributeError, ValueError, OSError):  # no file behind stdout (captured), or no poll
        return False
