"""The caller's global random generators, kept: code the toolkit calls that seeds or draws from them
(ultralytics' trainer seeds Python's, numpy's and torch's; a plug-in's sampler draws from them)
would otherwise change what the caller's own next draw gives."""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def kept_rngs() -> Iterator[None]:
    """Torch's (every initialized device's), numpy's and Python's global generators are put back as
    they were after the block."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
