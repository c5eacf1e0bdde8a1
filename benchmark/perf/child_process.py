"""One measurement in a fresh process: its own peak memory and wall time, and nothing left behind.

A process's peak resident memory only grows, so two configurations measured one after the other in
one process would both report the larger; and an SD-sized run holds 15 GB that must be gone before
the next starts. A spawned child runs one function, sends back its result, its peak RSS and (on a
GPU) the CUDA caching allocator's peaks: what tensors held, and what it reserved from the device
(closer to what ``nvidia-smi`` shows), and frees everything when it exits.
"""
from __future__ import annotations

import multiprocessing
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from implicit_concept.worker_processes import end_process, start_worker


class ChildError(RuntimeError):
    """The child raised, or died (killed for memory, a crash); the message says which."""


@dataclass(frozen=True)
class ChildResult:
    value: Any
    seconds: float
    peak_rss_bytes: int
    peak_cuda_allocated_bytes: int | None = None
    peak_cuda_reserved_bytes: int | None = None


def peak_rss() -> int:
    """This process's peak resident memory: Linux's VmHWM, which starts afresh at exec. Linux's
    getrusage maxrss survives exec, so a spawned child would report at least its parent's resident
    memory at the fork that precedes it (seen: every child at the parent's 4.9 GB)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:  # no /proc (macOS): its maxrss is in bytes, not KiB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))


def _peaks() -> tuple[int, int | None, int | None]:
    import torch

    rss = peak_rss()
    if not torch.cuda.is_available():
        return rss, None, None
    return rss, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def _main(fn: Callable[..., Any], args: tuple, kwargs: dict, threads: int | None, conn: Any) -> None:
    import torch

    start_worker()  # stopped by its parent (Ctrl-C), or ended with it (a SIGTERM to the parent alone)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:  # sent back whole: the parent raises it with the child's traceback
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}", *_peaks()))
        return
    conn.send(("ok", value, *_peaks()))


def run_in_child(fn: Callable[..., Any], *args: Any, threads: int | None = None, timeout: float | None = None, **kwargs: Any) -> ChildResult:
    """``fn(*args, **kwargs)`` in a spawned process (``fn`` and its arguments must pickle); raises
    :class:`ChildError` when it raises, dies or passes ``timeout`` seconds (then it is killed)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_main, args=(fn, args, kwargs, threads, send), daemon=True)
    started = time.perf_counter()
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            child.kill()
            raise ChildError(f"{getattr(fn, '__name__', fn)}: still running after {timeout:.0f} s, killed")
        status, value, *peaks = receive.recv()
    except EOFError:
        end_process(child)
        raise ChildError(f"{getattr(fn, '__name__', fn)}: the child process died (exit code {child.exitcode}; -9 is a kill, often for memory)") from None
    except BaseException:  # Ctrl-C, or the timeout's ChildError: the child is not waited for
        child.kill()
        raise
    finally:  # it has sent its result, or was killed: one that does not end then is killed
        end_process(child)
    if status == "error":
        raise ChildError(f"{getattr(fn, '__name__', fn)} failed in its child process: {value}")
    return ChildResult(value, time.perf_counter() - started, *peaks)
