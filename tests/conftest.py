"""Tests run offline (every network connection attempt fails loudly) and on one torch thread: the
models under test are micro, and on a loaded 2-core machine two threads were measured 10x slower."""
import os
import socket

import pytest
import torch

torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")


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
