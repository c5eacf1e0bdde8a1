"""Worker processes that stop with the command that started them, quietly.

A command's pool workers (the build's shard builders, the benchmark's ``--jobs`` processes) leave
stopping to their parent: Ctrl-C reaches every process of the terminal's group, and a worker that
took it as a ``KeyboardInterrupt`` would print its own traceback. So a worker ignores SIGINT, takes
SIGTERM as the default (it ends, printing nothing), and the parent, on its interrupt, terminates
its workers (:func:`stopping_workers`).

A worker also ends when its parent is gone, however the parent ended (SIGKILL, a SIGTERM to it
alone): a watch thread compares ``os.getppid()`` with the parent it started under, once a second,
and ends the process when they differ (the orphan was re-parented). Polling is chosen over Linux's
``PR_SET_PDEATHSIG`` because that fires when the *thread* that forked the worker ends, not the
process (a pool started from a helper thread would kill its workers early), is Linux-only, and is
lost across an ``exec``; the watch works on any POSIX system and whatever thread started the pool.

A command a process runs in a process group of its own (a ``pipe:`` source's shell, kept from the
terminal's Ctrl-C) is registered here (:func:`own_group`) and ended with the process that started
it, however that process stops (its interrupt, its pool's SIGTERM, its parent gone): a command
waiting on the network would otherwise outlive the build, re-parented, for as long as it waits.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

#: Seconds between a worker's looks at its parent.
PARENT_CHECK_S = 1.0


def start_worker() -> None:
    """Call first in a pool worker's initializer: ignore Ctrl-C (the parent stops the pool), end on
    SIGTERM without a traceback (a forked worker would otherwise run its parent's handler), and end
    once the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held back by workers_starting: now dropped
    _groups.clear()  # a forked worker's copy of its parent's: those are the parent's to end
    signal.signal(signal.SIGTERM, _terminated)
    threading.Thread(target=_watch_parent, args=(_parent_pid(),), name="watch-parent", daemon=True).start()


def _parent_pid() -> int:
    """The pid of the process that started this worker, as multiprocessing recorded it when it made
    the worker; not ``os.getppid()`` now: a spawned worker imports for seconds before its initializer
    runs, and a parent killed in those seconds has already left it to init (or a subreaper), which
    it would then watch forever, idle, holding its memory. A process multiprocessing did not start:
    its parent now."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getppid()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            while _starting:  # a command being started: ended once it is registered
                time.sleep(0.01)
            end_groups()
            os._exit(1)  # nothing to save: every output is written under a temporary name and renamed whole


def _terminated(signum, frame) -> None:
    """A worker's SIGTERM: the commands it started end with it, then it ends as SIGTERM's default would."""
    if _starting:
        _held.append(signum)
        return
    end_groups()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_groups: set[int] = set()  # process groups this process started and has not yet seen end
_ended: set[int] = set()  # those of them ended by end_groups, until released
_starting: list[bool] = []  # inside starting_group
_held: list[int] = []  # signals that came inside it


@contextmanager
def starting_group() -> Iterator[None]:
    """Around starting a command in a process group of its own and :func:`own_group` on it: a stop
    (SIGINT, SIGTERM) that comes between the fork and the registering is held until then, and taken
    after (taken at once, the command would outlive this process, never registered)."""
    _starting.append(True)
    try:
        yield
    finally:
        _starting.pop()
        if not _starting and _held:
            signum = _held[-1]
            _held.clear()
            signal.raise_signal(signum)


def own_group(pgid: int) -> None:
    """Process group ``pgid`` (a command started with ``start_new_session``) ends when this process stops."""
    _groups.add(pgid)


def release_group(pgid: int) -> bool:
    """``pgid`` has ended (its caller waited for it); True when it was ended by this process stopping,
    not by itself: its exit status is no failure of the command."""
    _groups.discard(pgid)
    ended = pgid in _ended
    _ended.discard(pgid)
    return ended


def end_groups() -> None:
    """End (SIGKILL) every registered process group: this process is stopping. Safe in a signal handler."""
    for pgid in list(_groups):
        _ended.add(pgid)
        _groups.discard(pgid)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:  # it has ended already
            pass


@contextmanager
def workers_starting() -> Iterator[None]:
    """Around the calls that start a spawned pool's workers (``pool.map``, ``pool.submit``): a
    spawned worker imports for seconds before its initializer runs, with Python's own Ctrl-C
    handler, so the terminal's Ctrl-C would print its ``KeyboardInterrupt`` traceback. SIGINT is
    blocked in this thread for the block; a process started in it inherits the block across its
    exec and holds Ctrl-C pending until :func:`start_worker` ignores it. This process loses
    nothing: a Ctrl-C in the block is taken by another thread, or on leaving it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextmanager
def stopping_workers(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """``with stopping_workers(ProcessPoolExecutor(...)) as pool:``: on a normal end, or an error a
    task raised, the pool shuts down as usual (running tasks finish); on an interrupt (Ctrl-C,
    SIGTERM as :class:`Interrupted`) its workers are terminated at once, not waited for."""
    try:
        yield pool
    except BaseException as e:
        # A generator's pool is closed by GeneratorExit when an interrupt unwinds its consumer.
        if isinstance(e, KeyboardInterrupt) or _interrupted.is_set():
            terminate(pool)
        else:
            pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)


def terminate(pool: ProcessPoolExecutor) -> None:
    """End ``pool``'s workers now (SIGTERM) and drop its queued tasks."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(5)


@contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Around a library call that installs its own SIGINT or SIGTERM handler (``ray.init``: SIGTERM
    then ends the command with status 1 after a C++ stack dump, its pools unstopped and no word of
    resuming): this process's handlers, Python's and the C-level ones under them, are put back after
    it. A signal the library's handler took in the call as ``sys.exit(signum)`` (Ray's) is raised as
    :class:`Interrupted`, as it would have been without that handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except SystemExit as e:
        replaced = [sig for sig, handler in before.items() if signal.getsignal(sig) is not handler]
        if e.code in replaced and callable(before[e.code]):  # not another exit that shares a signal's number
            _interrupted.set()
            _last_signal.append(e.code)
            raise Interrupted(signal.Signals(e.code).name) from None
        raise
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT), raised where the command's main thread is, so that it stops as on
    Ctrl-C: its pools terminate their workers and it exits without a traceback."""


_interrupted = threading.Event()
_last_signal: list[int] = []  # the signal the latest interrupts() block took, kept past its end


def stopped_by(e: KeyboardInterrupt) -> signal.Signals:
    """The signal that stopped a command with ``e``: SIGTERM or SIGINT. A library that caught the
    :class:`Interrupted` its handler raised may raise a plain ``KeyboardInterrupt`` in its place
    (Ray's ``get`` does), so the signal the handler took decides, not the exception's type."""
    if isinstance(e, Interrupted) and str(e) == "SIGTERM":
        return signal.SIGTERM
    return signal.Signals(_last_signal[-1]) if _last_signal else signal.SIGINT


@contextmanager
def interrupts() -> Iterator[None]:
    """For the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread and are
    remembered, so a pool closed while the interrupt unwinds terminates its workers (elsewhere than
    the main thread: nothing changes); the handlers before are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    installed_by = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != installed_by:
            # A worker forked in the block and not yet at start_worker (a loaded machine may not
            # run it for a while) runs this inherited handler: raising would print its own
            # traceback, so it does what start_worker will have it do (ignore SIGINT, end on SIGTERM).
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if _starting:
            _held.append(signum)
            return
        _interrupted.set()
        _last_signal.append(signum)
        end_groups()
        raise Interrupted(signal.Signals(signum).name)

    before = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    _interrupted.clear()
    _last_signal.clear()
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        _interrupted.clear()
