"""Worker processes that stop with the command that started them, quietly.

A command's pool workers (the build's shard builders, the benchmark's ``--jobs`` processes) leave
stopping to their parent: Ctrl-C reaches every process of the terminal's group, and a worker that
took it as a ``KeyboardInterrupt`` would print its own traceback. So a worker ignores SIGINT, takes
SIGTERM as the default (it ends, printing nothing), and the parent, on its interrupt, terminates
its workers (:func:`stopping_workers`).

A terminal or ssh session that closes sends SIGHUP to the command and its workers alike: the
command takes it as it takes SIGTERM (exit 129, its workers stopped, its output pointed away from the
terminal that is gone so its last writes cannot fail), and a worker ignores it as it ignores Ctrl-C.
A command started under ``nohup`` (SIGHUP ignored) keeps running, as nohup promises. Once a stop is
taken, a second one (Ctrl-C pressed twice, SIGTERM then SIGINT, the SIGHUP a shell forwards after
the terminal's own) is ignored: the first one's cleanup finishes and the exit says what it said. A
cleanup still running :data:`CUT_SHORT_S` after a second stop (stuck) is cut short: the process
exits at once, leaving what any killed run leaves, which the rerun resumes from.

A worker also ends when its parent is gone, however the parent ended (SIGKILL, a SIGTERM to it
alone): a watch thread compares ``os.getppid()`` with the parent it started under, once a second,
and ends the process when they differ (the orphan was re-parented). Polling is chosen over Linux's
``PR_SET_PDEATHSIG`` because that fires when the *thread* that forked the worker ends, not the
process (a pool started from a helper thread would kill its workers early), is Linux-only, and is
lost across an ``exec``; the watch works on any POSIX system and whatever thread started the pool.

What a worker started (a DataLoader's workers, a command a method runs, its shell's pipeline) ends
with it: the worker ends the processes below it (:func:`end_descendants`) when it takes SIGTERM and
when its watch finds its parent gone, and a parent that kills a worker after the grace kills the
processes below it too. A worker killed alone from outside (``kill -9`` of its pid, the OOM killer)
runs nothing more: its children are left to their own watches (a DataLoader's, Ray's).

A command a process runs in a process group of its own (a ``pipe:`` source's shell, kept from the
terminal's Ctrl-C) is registered here (:func:`own_group`) and ended with the process that started
it, however that process stops (its interrupt, its pool's SIGTERM, its parent gone): a command
waiting on the network would otherwise outlive the build, re-parented, for as long as it waits.

No wait on a worker is unbounded: once told to end (its tasks done, or the command stopped), a pool's
worker has :data:`WORKER_GRACE_S` seconds, then is killed (:func:`end_pool`, :func:`stopping_workers`,
:func:`end_process`). A worker ended holding a lock its pool shares (a queue's) would otherwise hang
its parent, at the end of a build or at a Ctrl-C, for good. What a killed worker leaves is what any
killed run leaves: files written under temporary names, which the rerun drops and writes again.
Nor is the wait for a result: a Pool's worker that died with its task (:func:`pool_results`) ends the
wait with one line, where the Pool would have waited for that task forever.
"""
from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import sys
import termios
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import resource_tracker
from multiprocessing.queues import Queue, SimpleQueue
from typing import Any, Callable, Iterable, Iterator

from implicit_concept.files import discard_output

#: Seconds between a worker's looks at its parent.
PARENT_CHECK_S = 1.0

#: The signals that stop a command, and what its last line calls each (its exit status is 128 + the number).
STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}
#: Seconds a cleanup may still run after a second stop before the process exits without it.
CUT_SHORT_S = 10.0
#: Seconds a worker has to end once told to (its pool closed, or terminated on a stop) before it
#: is killed (SIGKILL): a normal worker ends in well under one; one that cannot (stuck on a lock a dead
#: sibling held, SIGTERM blocked in a library) no longer holds the command.
WORKER_GRACE_S = 5.0

#: Seconds between a pool's parent's looks at its workers while it waits for a result.
WORKER_CHECK_S = 0.5

#: The stops a worker ignores (its parent stops the pool), held back while one is being started.
_HELD_IN_STARTING = {signal.SIGINT, signal.SIGHUP}


def start_worker() -> None:
    """Call first in a pool worker's initializer: ignore Ctrl-C and a hangup (the parent stops the
    pool), end on SIGTERM without a traceback (a forked worker would otherwise run its parent's
    handler), and end once the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_IN_STARTING)  # held back by workers_starting: now dropped
    global _worker
    _groups.clear()  # a forked worker's copy of its parent's: those are the parent's to end
    _worker = os.getpid()
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
    """Ends this worker once its parent is gone. It takes no stop signal: one delivered to this thread
    waits for the main thread's next bytecode, which a main thread waiting on a lock never reaches."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            while _starting:  # a command being started: ended once it is registered
                time.sleep(0.01)
            end_groups()
            end_descendants()
            os._exit(1)  # nothing to save: every output is written under a temporary name and renamed whole


def _terminated(signum, frame) -> None:
    """A worker's SIGTERM: the commands it started end with it, and the queue lock it may hold is
    let go (:func:`_let_go_of_the_queue`), then it ends as SIGTERM's default would. Taken once: a
    second SIGTERM (the group's, then the pool's ``terminate``) would run this again inside itself,
    half-way through the first, and print a traceback; it is ignored instead. A process the worker
    forked (a DataLoader's worker, a pool of its own) inherits this handler and a copy of the worker's
    commands: it ends as the default would, leaving the worker's commands to the worker."""
    if os.getpid() != _worker:
        _end_by_default(signum)
        return
    if _starting:
        _held.append(signum)
        return
    signal.signal(signum, signal.SIG_IGN)
    end_groups()
    end_descendants()
    _let_go_of_the_queue(frame)
    _end_by_default(signum)


def _end_by_default(signum: int) -> None:
    """End this process as ``signum``'s default action does (its status says the signal)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _let_go_of_the_queue(frame) -> None:
    """Release the read lock of the pool queue this worker waits on for its next task, if it holds
    it: the lock is shared with the parent and every worker, and one ended holding it stays taken
    for good, so the parent's ``Pool.terminate`` waited for it forever (a SIGTERM to the whole
    process group, as ``timeout``, ``kill -- -PGID`` or a scheduler send, hung the build)."""
    gets = (SimpleQueue.get.__code__, Queue.get.__code__)
    while frame is not None:
        if frame.f_code in gets:
            lock = getattr(frame.f_locals.get("self"), "_rlock", None)
            if lock is not None and lock._semlock._is_mine():  # taken, not still being waited for
                lock.release()
            return
        frame = frame.f_back


_worker: int | None = None  # the pid start_worker ran in
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
    handler, so the terminal's Ctrl-C would print its ``KeyboardInterrupt`` traceback (and a
    hangup would end it, a broken pool). SIGINT and SIGHUP are blocked in this thread for the
    block; a process started in it inherits the block across its exec and holds them pending until
    :func:`start_worker` ignores them. This process loses nothing: one in the block is taken by
    another thread, or on leaving it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_IN_STARTING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextmanager
def stopping_workers(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """``with stopping_workers(ProcessPoolExecutor(...)) as pool:``: on a normal end, or an error a
    task raised, the tasks running finish, then the workers have :data:`WORKER_GRACE_S` to end
    (:func:`shut_down`), and a worker that died is :class:`WorkerLost`; on an interrupt (Ctrl-C,
    SIGTERM as :class:`Interrupted`), or one while waiting for those tasks, its workers are
    terminated at once (:func:`terminate`)."""
    try:
        yield pool
    except BaseException as e:
        # A generator's pool is closed by GeneratorExit when an interrupt unwinds its consumer.
        if isinstance(e, KeyboardInterrupt) or _interrupted:
            terminate(pool)
        else:
            shut_down(pool)
        if isinstance(e, BrokenProcessPool):  # a worker killed from outside: was a traceback ending in the executor's own words
            raise WorkerLost(f"a worker process ended before its task was done ({_LOST_HOW}); rerun the same command to resume") from None
        raise
    shut_down(pool)


def shut_down(pool: ProcessPoolExecutor) -> None:
    """``pool.shutdown(wait=True)`` with an end: the tasks running finish (they do work), then the
    workers have :data:`WORKER_GRACE_S` to end and are killed after; an interrupt while waiting
    terminates them (:func:`terminate`)."""
    from concurrent.futures import wait

    processes, manager = _workers_of(pool)
    try:
        pool.shutdown(wait=False)
        wait([item.future for item in list((getattr(pool, "_pending_work_items", None) or {}).values())])
    except BaseException:
        _terminate(pool, processes, manager)
        raise
    _end_all(processes, manager)


def terminate(pool: ProcessPoolExecutor) -> None:
    """End ``pool``'s workers now (SIGTERM, then SIGKILL for those still running after
    :data:`WORKER_GRACE_S`) and drop its queued tasks."""
    _terminate(pool, *_workers_of(pool))


def _terminate(pool: ProcessPoolExecutor, processes: list, manager: threading.Thread | None) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    _end_all(processes, manager)


def _workers_of(pool: ProcessPoolExecutor) -> tuple[list, threading.Thread | None]:
    """``pool``'s worker processes and its manager thread, taken before ``shutdown`` forgets them."""
    return list((getattr(pool, "_processes", None) or {}).values()), getattr(pool, "_executor_manager_thread", None)


def _end_all(processes: list, manager: threading.Thread | None) -> None:
    """Wait at most :data:`WORKER_GRACE_S` for ``processes`` to end, kill those that did not, and
    give their pool's ``manager`` thread as long to see them gone (the interpreter's exit joins it)."""
    deadline = time.monotonic() + WORKER_GRACE_S
    try:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:  # an interrupt in the wait: they are killed all the same
        for process in processes:
            if process.exitcode is None:
                _kill(process)
    if manager is not None and manager is not threading.current_thread():
        manager.join(WORKER_GRACE_S)


def end_pool(pool) -> None:
    """End a ``multiprocessing`` Pool as ``with pool:`` does (``Pool.terminate``), in at most
    :data:`WORKER_GRACE_S`: its workers still running then are killed, and a terminate still
    waiting (on a lock a dead worker held) is left behind, in a daemon thread."""
    ending = threading.Thread(target=pool.terminate, name="end-pool", daemon=True)
    ending.start()
    try:
        ending.join(WORKER_GRACE_S)
    finally:  # an interrupt in the wait: the workers are killed at once
        if ending.is_alive():
            for process in list(getattr(pool, "_pool", None) or ()):
                if process.exitcode is None:
                    _kill(process)


class WorkerLost(ValueError):
    """A pool's worker ended before its task was done (killed from outside, out of memory): one line."""


_LOST_HOW = "killed, out of memory?"


def pool_results(pool, function: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
    """``pool.imap_unordered(function, tasks)`` of a ``multiprocessing`` Pool, but a worker that died
    raises :class:`WorkerLost`: the Pool replaces it and never hands its task to another, so its result
    was waited for forever (seen: a 2-worker build, one worker SIGKILLed mid-shard)."""
    workers = list(pool._pool)  # each worker that takes a task is one of these or replaced one that died
    tasks = list(tasks)
    results = pool.imap_unordered(function, tasks)
    for _ in tasks:
        yield _next_result(results, workers)


def _next_result(results, workers: list) -> Any:
    while True:
        try:
            return results.next(timeout=WORKER_CHECK_S)
        except multiprocessing.TimeoutError:
            dead = next((w for w in workers if w.exitcode is not None), None)
            if dead is not None:
                how = f"by signal {-dead.exitcode}" if dead.exitcode < 0 else f"with status {dead.exitcode}"
                raise WorkerLost(f"a worker process (pid {dead.pid}) ended {how} before its task was done ({_LOST_HOW})") from None


def end_process(process) -> None:
    """Wait for ``process`` (a ``multiprocessing`` Process) to end, :data:`WORKER_GRACE_S` at most,
    then kill it."""
    try:
        process.join(WORKER_GRACE_S)
    finally:
        if process.exitcode is None:
            _kill(process)


def end_with_its_tree(process) -> None:
    """Ask ``process`` (a ``multiprocessing`` Process left running) to end (SIGTERM: its cleanup runs),
    then :func:`end_process`; the processes below it are killed first, listed while it and they are
    stopped (:func:`_stopped_below`): once it ends they would run on, re-parented, out of reach, and
    so would one it forked after the listing (a prefetcher starting its decoders)."""
    try:
        below = _stopped_below(process.pid, stop_it=True) if process.exitcode is None else []
    except (ValueError, AttributeError):  # closed
        return
    _kill_all(below)
    process.terminate()
    _signal_all([process.pid], signal.SIGCONT)  # the SIGTERM pending is what it takes first
    end_process(process)


def _kill(process) -> None:
    """SIGKILL ``process`` and the processes below it (it runs nothing more to end them), and wait
    for it, a bounded time (one in uninterruptible IO ends when the IO does)."""
    below: list[int] = []
    try:
        if process.exitcode is None:
            below = _stopped_below(process.pid, stop_it=True)
        process.kill()
    except (OSError, ValueError, AttributeError):  # ended and reaped already, or closed
        return
    finally:
        _kill_all(below)  # stopped: killed whatever happened to the worker
    process.join(WORKER_GRACE_S)


def end_descendants() -> None:
    """End (SIGKILL) the processes below this one, but for multiprocessing's resource tracker (it
    ends when this process does, after removing what a killed pool left in /dev/shm): this process
    is stopping, and they would outlive it, re-parented. Safe in a signal handler: it imports
    nothing (an import cut by a second signal is left half-made)."""
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    _kill_all(_stopped_below(os.getpid(), spare=tracker))


#: Rounds of listing and stopping the processes below one: each round stops those a process forked
#: before it was stopped, so a tree is whole in as many rounds as it is deep.
MAX_STOP_ROUNDS = 64


def _stopped_below(pid: int, spare: int | None = None, stop_it: bool = False) -> list[int]:
    """The processes below ``pid`` (``spare`` and those below it left out), each stopped (SIGSTOP)
    first: one killed from a list it was not yet on (forked while the list was read) would outlive
    its parent, re-parented; a stopped process forks no more, so the list is read again until it
    holds no new one. ``stop_it``: ``pid`` itself is stopped first too (it is then killed)."""
    stopped = [pid] if stop_it else []
    _signal_all(stopped, signal.SIGSTOP)
    found: list[int] = []
    for _ in range(MAX_STOP_ROUNDS):
        children = _children()  # one read of /proc a round
        left_out = {*found, spare, *_below(children, spare)} if spare else set(found)
        new = [p for p in _below(children, pid) if p not in left_out]
        if not new:
            break
        _signal_all(new, signal.SIGSTOP)
        found += new
    return found


def _kill_all(pids: list[int]) -> None:
    _signal_all(pids, signal.SIGKILL)


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:  # it has ended already
            pass


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``: its children, theirs, and so on, read from /proc (none without it)."""
    return _below(_children(), pid)


def _children() -> dict[int, list[int]]:
    """Each process's children, read from /proc (none without it)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for name in entries:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])  # after the name, which may hold anything
            except (OSError, ValueError, IndexError):  # ended while read
                continue
            children.setdefault(parent, []).append(int(name))
    return children


def _below(children: dict[int, list[int]], pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


@contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Around a library call that installs its own SIGINT, SIGTERM or SIGHUP handler (``ray.init``: SIGTERM
    then ends the command with status 1 after a C++ stack dump, its pools unstopped and no word of
    resuming): this process's handlers, Python's and the C-level ones under them, are put back after
    it. A signal the library's handler took in the call as ``sys.exit(signum)`` (Ray's) is raised as
    :class:`Interrupted`, as it would have been without that handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    except SystemExit as e:
        replaced = [sig for sig, handler in before.items() if signal.getsignal(sig) is not handler]
        if e.code in replaced and callable(before[e.code]):  # not another exit that shares a signal's number
            _taken(e.code)
            raise Interrupted(signal.Signals(e.code).name) from None
        raise
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, SIGHUP (or SIGINT), raised where the command's main thread is, so that it stops as
    on Ctrl-C: its pools terminate their workers and it exits without a traceback."""


#: Whether the running interrupts() block has taken a stop. Plain values, no ``threading.Event``: the
#: handler sets them, and a second stop landing inside an Event's ``set`` (its lock held) ran the
#: handler again there, which waited for that lock for good: the command hung, deaf to every signal but SIGKILL.
_interrupted = False
_stop_signal: signal.Signals | None = None  # the first stop the latest interrupts() block took, kept past its end


def _taken(signum: int) -> None:
    """``signum`` is the stop taken: recorded first thing, by one lookup and assignment that run no
    Python code (``signal.Signals(signum)`` does), so that a second stop landing at any later
    bytecode of the handler finds it taken, and is ignored."""
    global _stop_signal, _interrupted
    _stop_signal = _MEMBERS[signum]
    _interrupted = True


_MEMBERS = {sig: sig for sig in STOP_SIGNALS}  # a stop's number to its Signals member


def stop_taken() -> signal.Signals | None:
    """The stop the running :func:`interrupts` block has taken, or None: an error raised after it
    (a library that swallowed its ``KeyboardInterrupt`` half-way through an import, then failed on
    what it left) is that stop's doing, not a failure of the command."""
    return _stop_signal if _interrupted else None


def stopped_by(e: KeyboardInterrupt) -> signal.Signals:
    """The signal that stopped a command with ``e``: SIGINT, SIGTERM or SIGHUP. A library that
    caught the :class:`Interrupted` its handler raised may raise a plain ``KeyboardInterrupt`` in
    its place (Ray's ``get`` does), so the signal the handler took decides, not the exception's type."""
    if _stop_signal is not None:
        return _stop_signal
    if isinstance(e, Interrupted) and str(e) in signal.Signals.__members__:
        return signal.Signals[str(e)]
    return signal.SIGINT


def _cut_short_later() -> None:
    """Exit in :data:`CUT_SHORT_S` seconds if this process is still running then, as the first stop
    would have: its ``pipe:`` commands ended, one line, status 128 + that signal (the workers see
    their parent gone)."""
    global _cutting_short
    if _cutting_short:
        return
    _cutting_short = True
    stopped = _stop_signal

    def cut_short() -> None:
        end_groups()
        try:
            os.write(2, f"implicit-concept: {STOP_SIGNALS[stopped]}; its cleanup cut short by a second signal after "
                        f"{CUT_SHORT_S:g} s; rerun the same command to resume\n".encode())
        except OSError:
            pass
        os._exit(128 + stopped)

    timer = threading.Timer(CUT_SHORT_S, cut_short)
    timer.daemon = True
    timer.start()


_cutting_short = False


def _hung_up(fd: int) -> bool:
    """Whether ``fd`` is a terminal that has hung up (closed, its session gone): writes to it fail."""
    try:
        termios.tcgetattr(fd)
    except termios.error as e:
        return e.args[0] == errno.EIO
    except (OSError, ValueError):
        return False
    return False


def _away_from_a_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal that hung up: a progress bar
    closing, or the command's last line, would otherwise fail with EIO in the cleanup."""
    discard_output(*(fd for fd in (1, 2) if _hung_up(fd)))


@contextmanager
def interrupts() -> Iterator[None]:
    """For the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread and
    are remembered, so a pool closed while the interrupt unwinds terminates its workers (elsewhere
    than the main thread: nothing changes). A signal ignored when the block starts (SIGHUP under
    ``nohup``) stays ignored. Only the first stop raises: later ones are ignored, so the cleanup it
    started finishes; and once one is taken they stay ignored after the block, while the process
    ends. Otherwise the handlers before are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    installed_by = os.getpid()

    def interrupt(signum, frame):
        if os.getpid() != installed_by:
            # A worker forked in the block and not yet at start_worker (a loaded machine may not
            # run it for a while) runs this inherited handler: raising would print its own
            # traceback, so it does what start_worker will have it do (ignore SIGINT and SIGHUP, end on SIGTERM).
            if signum == signal.SIGTERM:
                _end_by_default(signum)
            return
        if _starting:
            _held.append(signum)
            return
        if _stop_signal is not None:  # a second stop while the first one's cleanup runs
            if signum in _lost:  # the first, sent again: a finalizer had swallowed its exception
                _lost.discard(signum)
                raise Interrupted(signal.Signals(signum).name)
            _cut_short_later()
            return
        _taken(signum)
        end_groups()
        if signum == signal.SIGHUP:
            _away_from_a_hung_up_terminal()
        raise Interrupted(_stop_signal.name)

    global _stop_signal, _interrupted
    _interrupted, _stop_signal = False, None  # before the handlers: a stop at once is this block's first
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in before.items():
        if not (sig == signal.SIGHUP and handler is signal.SIG_IGN):  # nohup's promise is kept
            signal.signal(sig, interrupt)
    try:
        with interrupts_not_lost():
            yield
    finally:
        for sig, handler in before.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, signal.SIG_IGN if _stop_signal is not None else handler)
        _interrupted = False


_lost: set[int] = set()  # stop signals sent again because a finalizer swallowed their exception
#: Seconds after a finalizer swallowed a stop that it is sent again: a finalizer's run is far shorter.
RESEND_AFTER = 0.05


@contextmanager
def interrupts_not_lost() -> Iterator[None]:
    """For the block, a stop's ``KeyboardInterrupt`` raised inside a finalizer is not lost. The cyclic
    garbage collector runs finalizers at any allocation (a ``multiprocessing`` pool's ``__del__``),
    and Python prints an exception raised there as "Exception ignored" and goes on: a Ctrl-C that
    landed there was a traceback on stderr and a command that ran on. Its signal is sent again by a
    thread once the finalizer has returned (:data:`RESEND_AFTER`; sent at once, its handler would run
    inside this hook, where an exception is lost too), so it is raised where the main thread is next."""
    before = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            signum = stopped_by(unraisable.exc_value)
            _lost.add(signum)
            resend = threading.Timer(RESEND_AFTER, os.kill, (os.getpid(), signum))
            resend.daemon = True  # never what keeps a finished command from exiting
            resend.start()
            return
        before(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = before
        _lost.clear()
