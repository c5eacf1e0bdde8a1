"""Torch's process-wide settings (threads, default dtype, grad mode): set for a block, then put back.

Training arithmetic on a CPU depends on the thread count (a reduction is split by thread), so what a
track trains, edits or samples runs under the count the track names wherever it runs: in the main
process or a worker, on 2 cores or 64. And code the benchmark does not own (a plug-in's build or
pipeline) may change any of these settings; they are put back after it, so the stages that follow
(scoring, the next method) run as they would have.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block under ``threads`` intra-op threads (None: as the process is)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def kept_torch_settings() -> Iterator[None]:
    """Whatever the block does to the thread count, the default dtype or grad mode is undone after it."""
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
