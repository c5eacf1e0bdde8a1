"""Tests run offline (every network connection attempt fails loudly; CI also runs them in a network
namespace of their own), on one torch thread (the models under test are micro, and on a loaded
2-core machine two threads were measured 10x slower), and write only into temporary folders: the
home folder and the temporary folder of this process and of every process it starts (Ray's
sessions, torchrun's ``torchelastic_*``, ``~/.ray``, caches) are one folder, removed at the end.

No test may leave torch's process-wide settings changed (:func:`torch_settings_kept`), nor the rest
of the process (:func:`process_state_kept`: working folder, umask, environment, signal handlers...):
a test after it would run under them, and pass or fail by the order the suite runs in."""
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from implicit_concept.files import current_umask
from implicit_concept.torch_settings import numerics, set_numerics

torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

#: Short on purpose: Ray puts Unix sockets under it, whose paths may not exceed 107 bytes.
SCRATCH = Path(tempfile.mkdtemp(prefix="ic-tests-"))
(SCRATCH / "home").mkdir()
os.environ.update(TMPDIR=str(SCRATCH), RAY_TMPDIR=str(SCRATCH), HOME=str(SCRATCH / "home"))
for _name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR", "IMPLICIT_CONCEPT_CACHE"):
    os.environ.pop(_name, None)
tempfile.tempdir = None  # this process's tempfile reads TMPDIR again


def pytest_unconfigure(config):
    shutil.rmtree(SCRATCH, ignore_errors=True)


class NetworkBlocked(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkBlocked(f"tests must not touch the network (attempted {args[1:] or kwargs})")


_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    _refuse(self, address)


socket.socket.connect = _guarded_connect
socket.create_connection = _refuse


@pytest.fixture(scope="session")
def debug_dataset(tmp_path_factory):
    """The icd-debug build, made once per test session."""
    from builders.build import build_dataset
    from builders.recipe import load_recipe

    out = tmp_path_factory.mktemp("icd-debug")
    build_dataset(load_recipe("icd-debug"), out, workers=1, progress=False)
    return out


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A lab's working folder: ``lab(name, text)`` writes ``name.py``, importable from it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(name, text):
        (tmp_path / f"{name}.py").write_text(text)
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def _torch_settings():
    """Torch's process-wide settings: threads, default dtype and device, grad and inference mode, and
    the numerics switches (deterministic algorithms, matmul precision and TF32, anomaly mode...)."""
    return {"threads": torch.get_num_threads(), "default dtype": torch.get_default_dtype(),
            "default device": torch.get_default_device(), "grad mode": torch.is_grad_enabled(),
            "inference mode": torch.is_inference_mode_enabled(), **numerics()}


def _put_back(state):
    torch.set_num_threads(state["threads"])
    torch.set_default_dtype(state["default dtype"])
    torch.set_default_device(None if state["default device"].type == "cpu" else state["default device"])
    torch.set_grad_enabled(state["grad mode"])
    set_numerics({k: v for k, v in state.items() if k not in _TORCH_SETTINGS_OWN})


_TORCH_SETTINGS = _torch_settings()
_TORCH_SETTINGS_OWN = ("threads", "default dtype", "default device", "grad mode", "inference mode")
_last_test = ["(none yet)"]


def _changed(before, after):
    return ", ".join(f"{k}: {before[k]!r} -> {after.get(k)!r}" for k in before if after.get(k) != before[k])


@pytest.fixture(autouse=True)
def torch_settings_kept(request):
    """Fails a test that leaves torch's process-wide settings changed, or that starts with them
    changed (by a fixture of wider scope it uses, or the test before it), and puts them back so the
    next test starts as the suite began."""
    now = _torch_settings()
    if now != _TORCH_SETTINGS:
        _put_back(_TORCH_SETTINGS)
        pytest.fail(f"torch's settings changed after {_last_test[0]} ended and before this test started (a module- or "
                    f"session-scoped fixture set up or torn down between them): {_changed(_TORCH_SETTINGS, now)}")
    yield
    _last_test[0] = request.node.nodeid
    after = _torch_settings()
    if after != _TORCH_SETTINGS:
        _put_back(_TORCH_SETTINGS)
        pytest.fail(f"{request.node.nodeid} left torch's settings changed: {_changed(_TORCH_SETTINGS, after)}; "
                    "put them back (implicit_concept.torch_settings.kept_torch_settings)")


_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGCHLD")
#: Set once per process by design, not left behind: by a library's first import (OpenCV's library and Qt
#: paths, torch's compile cache) or by ``yolo_env.use_cache`` (matplotlib reads its folder once), and pytest's own.
_SET_ONCE = ("LD_LIBRARY_PATH", "QT_QPA_FONTDIR", "QT_QPA_PLATFORM_PLUGIN_PATH", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR",
             "PYTEST_CURRENT_TEST")


def _logging():
    """The root logger's level and handlers (pytest's own, swapped at each phase, left out),
    ``logging.disable``'s level, and every logger's level, propagation and switch, and whether the
    package of its name is imported yet (its first import sets up its own logger)."""
    loggers = {n: l for n, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger)}
    return {"root": (logging.root.level, [h for h in logging.root.handlers if not type(h).__module__.startswith("_pytest")]),
            "disable": logging.root.manager.disable,
            **{n: (l.level, l.propagate, l.disabled, n.split(".")[0] in sys.modules) for n, l in loggers.items()}}


def _process_state():
    """What else a test could leave behind for the next one to run under: the working folder, the
    umask, the environment, signal handlers and a pending alarm, the temporary folder, Pillow's
    bomb limit and opener, the exception hooks, the garbage collector, logging's settings, the
    module search path, the recursion limit, numpy's error handling and print options; and what it
    could leave running: non-daemon threads, child processes."""
    import gc
    import threading

    import numpy as np
    from PIL import Image

    from tests.process_table import running_children

    return {"cwd": os.getcwd(), "umask": current_umask(), "environment": {k: v for k, v in os.environ.items() if k not in _SET_ONCE},
            **{name: signal.getsignal(getattr(signal, name)) for name in _SIGNALS},
            "alarm": signal.getitimer(signal.ITIMER_REAL)[0] > 0, "tempfile.tempdir": tempfile.gettempdir(),
            "Image.MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS, "Image.open": Image.open,
            "sys.excepthook": sys.excepthook, "threading.excepthook": threading.excepthook, "gc": gc.isenabled(),
            "logging": _logging(), "sys.path": _search_path(), "recursion limit": sys.getrecursionlimit(), "numpy errors": np.geterr(),
            "numpy print options": np.get_printoptions(),
            "threads": {t for t in threading.enumerate() if not t.daemon}, "children": set(running_children(os.getpid())) - _process_helpers()}


def _search_path():
    """``sys.path`` less a package's own folders its first import adds (Ray's ``thirdparty_files``,
    inside ``site-packages``): set once, for the package's later imports, like ``_SET_ONCE``."""
    return [p for p in sys.path if "site-packages" not in Path(p).parent.parts]


def _process_helpers():
    """multiprocessing's resource tracker and fork server: started by the first spawned pool, kept for
    the process's life by design, not left behind by the test that happened to start them."""
    from multiprocessing import forkserver, resource_tracker

    return {resource_tracker._resource_tracker._pid, forkserver._forkserver._forkserver_pid} - {None}


def _left(before, after):
    """``after`` as compared with ``before``: what ended meanwhile, loggers first made, and those a
    package's first import set up, not counted."""
    first_imported = {n for n, v in before["logging"].items() if n not in ("root", "disable") and not v[3] and after["logging"][n][3]}
    return {**after, "threads": after["threads"] - before["threads"], "children": after["children"] - before["children"],
            "logging": {n: before["logging"][n] if n in first_imported else after["logging"][n] for n in before["logging"]}}


def _put_process_state_back(state):
    import gc
    import threading

    import numpy as np
    from PIL import Image

    os.chdir(state["cwd"])
    os.umask(state["umask"])
    once = {k: v for k, v in os.environ.items() if k in _SET_ONCE}
    os.environ.clear()
    os.environ.update(state["environment"], **once)
    for name in _SIGNALS:
        signal.signal(getattr(signal, name), state[name])
    if not state["alarm"]:
        signal.setitimer(signal.ITIMER_REAL, 0)
    tempfile.tempdir = state["tempfile.tempdir"]
    Image.MAX_IMAGE_PIXELS, Image.open = state["Image.MAX_IMAGE_PIXELS"], state["Image.open"]
    sys.excepthook, threading.excepthook = state["sys.excepthook"], state["threading.excepthook"]
    (gc.enable if state["gc"] else gc.disable)()
    level, handlers = state["logging"]["root"]
    logging.root.setLevel(level)
    logging.root.handlers[:] = [h for h in logging.root.handlers if type(h).__module__.startswith("_pytest")] + handlers
    logging.disable(state["logging"]["disable"])
    for name, (level, propagate, disabled, _) in ((n, v) for n, v in state["logging"].items() if n not in ("root", "disable")):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled
    sys.path[:] = [p for p in sys.path if p not in _search_path()] + state["sys.path"]  # a package's own folders kept
    sys.setrecursionlimit(state["recursion limit"])
    np.seterr(**state["numpy errors"])
    np.set_printoptions(**state["numpy print options"])
    for pid in _left(state, _process_state())["children"]:
        os.kill(pid, signal.SIGKILL)


def _changed_state(before, after):
    changes = []
    for key in before:
        if key in ("environment", "logging"):
            mark = "$" if key == "environment" else "logger "
            changes += [f"{mark}{name}: {before[key].get(name)!r} -> {after[key].get(name)!r}"
                        for name in sorted(set(before[key]) | set(after[key])) if before[key].get(name) != after[key].get(name)]
        elif after[key] != before[key]:
            changes.append(f"{key}: {before[key]!r} -> {after[key]!r}")
    return ", ".join(changes)


@pytest.fixture(autouse=True)
def process_state_kept(request):
    """Fails a test that leaves the process's state (:func:`_process_state`) changed, and puts it
    back: the test after it would run under it, and pass or fail by the order the suite runs in."""
    before = _process_state()
    yield
    after = _left(before, _process_state())
    if after["SIGALRM"] == signal.SIG_DFL and not after["alarm"]:  # pytest-timeout's, disarmed when a test fails
        before = {**before, "SIGALRM": after["SIGALRM"], "alarm": False}
    expected = {**before, "threads": set(), "children": set()}  # none started by the test left running
    if after != expected:
        _put_process_state_back(before)
        pytest.fail(f"{request.node.nodeid} left the process changed: {_changed_state(expected, after)}")
