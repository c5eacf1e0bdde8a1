"""Tests run offline (every network connection attempt fails loudly; CI also runs them in a network
namespace of their own), on one torch thread (the models under test are micro, and on a loaded
2-core machine two threads were measured 10x slower), and write only into temporary folders: the
home folder and the temporary folder of this process and of every process it starts (Ray's
sessions, torchrun's ``torchelastic_*``, ``~/.ray``, caches) are one folder, removed at the end."""
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
import torch

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
