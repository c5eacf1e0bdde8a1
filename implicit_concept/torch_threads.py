"""The torch thread count a computation runs under: set for it, then put back.

Training arithmetic on a CPU depends on the thread count (a reduction is split by thread), so what a
track trains, and what a method edits, runs under the count the track names wherever it runs: in
the main process or a worker, on 2 cores or 64. The count is put back after, so one stage does not
slow the stages that follow it in the same process.
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
