"""What code the benchmark does not own may change process-wide besides torch's settings: the working
folder, which the toolkit's relative paths (``runs/``, ``data/``, the cache) are read from, the
warnings filters, numpy's floating-point error handling, the environment, the signal handlers and
the alarm, ``sys.stdout`` and ``sys.stderr``, the logging levels, the umask, tempfile's folder, the
exception hooks, the garbage collector's switch, and the global random generators.

A plug-in whose ``build`` runs ``os.chdir`` to call its own scripts, or turns warnings into errors,
has both put back after each call into its code, so the next method is not failed by a library's
deprecation warning. So are research code's other habits: a SIGINT or SIGTERM handler that saves
its training on Ctrl-C (left installed, Ctrl-C no longer stopped the run), a watchdog's
``signal.alarm`` never disarmed (firing in a later stage: SIGALRM's default ends the process), a
logger put in place of ``sys.stderr`` (the run's progress and errors went to the lab's log file),
``os.environ`` set for its own libraries (``TQDM_DISABLE``, the cache folder, what ``--jobs``
workers start from), ``logging.basicConfig(level=logging.DEBUG)`` at the top of its module (every later stage's library
debug lines on stderr: PIL's, one per PNG chunk read), ``os.umask(0o077)`` (every later file of
the run, the shared cache's too, unreadable to the lab's group), ``tempfile.tempdir`` pointed at a
scratch folder it then removed (every later temporary file a ``FileNotFoundError``), a post-mortem
debugger as ``sys.excepthook`` (the toolkit's next uncaught error waiting on stdin), ``gc.disable()``
for speed (no cycle collected for the rest of the run); and the services it calls (``ctx.finetune``,
``ctx.load_pipeline``) run in the toolkit's working folder and under its umask, so a run's files land
in its folder as the run would make them.

A plug-in that draws from the global generators (``torch.randn`` without a generator to start an
adapter, ``np.random`` in its sampler) would get whatever state the stages before it left: its
results would change with the methods run before it, with a cached fine-tune not trained this time,
and on a rerun. Its ``build`` and each chunk of its sampling start from generators seeded by what
they are (:func:`seeded_rngs`), and the caller's are put back after; the services it calls leave
its generators as they found them (training seeds them; a cached fine-tune does not train).
"""
from __future__ import annotations

import functools
import gc
import hashlib
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from implicit_concept.files import current_umask
from implicit_concept.random_states import kept_rngs
from implicit_concept.worker_processes import STOP_SIGNALS

T = TypeVar("T")


@contextmanager
def kept_plugin_state() -> Iterator[None]:
    """Whatever the block does to the working folder, the warnings filters, numpy's floating-point
    error handling, the environment, the signal handlers and alarm, ``sys.stdout``/``sys.stderr``, the
    logging levels or the process settings (:func:`kept_process_settings`) is undone after it
    (``np.seterr(all="raise")``, research code's way to find a NaN, made every later method's and
    the scoring's invalid operations raise ``FloatingPointError``: an empty slice's mean, a NaN
    pixel cast to 8 bits)."""
    before, streams = os.getcwd(), (sys.stdout, sys.stderr)
    try:
        with kept_environment(), kept_signal_handlers(), kept_logging(), kept_process_settings(), \
                warnings.catch_warnings(), np.errstate(**np.geterr()):
            yield
    finally:
        sys.stdout, sys.stderr = streams
        os.chdir(before)


@contextmanager
def kept_process_settings() -> Iterator[None]:
    """The umask, tempfile's folder (``tempfile.tempdir``: set, or cached from a ``TMPDIR`` the
    block set), ``sys.excepthook``, ``threading.excepthook`` and whether the garbage collector runs,
    as they were before the block."""
    umask = current_umask()
    tempdir, hooks, collecting = tempfile.tempdir, (sys.excepthook, threading.excepthook), gc.isenabled()
    try:
        yield
    finally:
        os.umask(umask)
        tempfile.tempdir = tempdir
        sys.excepthook, threading.excepthook = hooks
        (gc.enable if collecting else gc.disable)()


#: The signals whose handler a plug-in may leave changed and that the rest of the run would meet:
#: the stop signals, and the two whose default ends the process (SIGPIPE at a write to a closed
#: pipe, SIGALRM when a watchdog's alarm fires).
KEPT_SIGNALS = (*STOP_SIGNALS, signal.SIGPIPE, signal.SIGALRM)


@contextmanager
def kept_signal_handlers() -> Iterator[None]:
    """The handlers of :data:`KEPT_SIGNALS` as they were before the block (set in the main thread
    only; elsewhere none can be set), and the real-time alarm (``signal.alarm``, ``setitimer``) as
    it was: one the block armed is disarmed, one armed before (a test's timeout) runs on."""
    main = threading.current_thread() is threading.main_thread()
    before = {sig: signal.getsignal(sig) for sig in KEPT_SIGNALS} if main else {}
    alarm, start = signal.getitimer(signal.ITIMER_REAL), time.monotonic()
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None and signal.getsignal(sig) is not handler:  # None: set outside Python
                signal.signal(sig, handler)
        left = alarm[0] - (time.monotonic() - start)
        if main and (left > 0 or not alarm[0]):  # one armed before that came due in the block has fired
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.0), alarm[1])


@contextmanager
def kept_logging() -> Iterator[None]:
    """The root logger's level and handlers, every existing logger's level and ``logging.disable``'s
    as they were before the block (the handlers a library adds to its own logger are its own)."""
    root = logging.getLogger()
    handlers, disabled = list(root.handlers), logging.root.manager.disable
    levels = {logger: logger.level for logger in [root, *logging.Logger.manager.loggerDict.values()]
              if isinstance(logger, logging.Logger)}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        logging.disable(disabled)
        for logger, level in levels.items():
            if logger.level != level:
                logger.setLevel(level)


@contextmanager
def kept_environment() -> Iterator[None]:
    """``os.environ`` as it was before the block, whatever the block set or removed."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for name in [name for name in os.environ if name not in before]:
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


def in_working_folder(service: Callable[..., T]) -> Callable[..., T]:
    """``service`` run in the working folder and under numpy's error handling and the umask as they
    are now (the toolkit's), whatever its caller's are then, and leaving the caller's global
    generators as they were: a fine-tune trained now (training seeds them) or found cached leaves a
    build drawing the same numbers after it."""
    folder, errors, umask = os.getcwd(), np.geterr(), current_umask()

    @functools.wraps(service)
    def run(*args: Any, **kwargs: Any) -> T:
        with kept_plugin_state(), kept_rngs(), np.errstate(**errors):
            os.chdir(folder)
            os.umask(umask)
            return service(*args, **kwargs)

    return run


@contextmanager
def seeded_rngs(*key: Any) -> Iterator[None]:
    """The block runs with the global generators seeded from ``key`` (its text), whatever ran before
    it; what they were is put back after it."""
    seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big")
    with kept_rngs():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
