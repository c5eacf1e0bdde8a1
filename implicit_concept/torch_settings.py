"""Torch's process-wide settings (threads, default dtype and device, grad mode): set for a block, then put back.

Training arithmetic on a CPU depends on the thread count (a reduction is split by thread), so what a
track trains, edits or samples runs under the count the track names wherever it runs: in the main
process or a worker, on 2 cores or 64. And code the benchmark does not own (a plug-in's build or
pipeline) may change any of these settings; they are put back after it, so the stages that follow
(scoring, the next method) run as they would have.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")

#: The most torch threads a config may name: more than any machine's cores, and far below what
#: crashes torch (100 000 threads segfaulted the first matrix product, with no message).
MAX_THREADS = 1024


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
    """Whatever the block does to the thread count, the default dtype and device or grad mode is undone after it."""
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    device = torch.get_default_device()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        _set_default_device(device)


def _set_default_device(device: torch.device) -> None:
    """``device`` as torch's default; the CPU as torch has it unset, not as a device context every op passes through."""
    if torch.get_default_device() != device:
        torch.set_default_device(None if device.type == "cpu" else device)


@contextmanager
def toolkit_torch_settings() -> Iterator[None]:
    """Run the block under the toolkit's own settings (grad mode on, float32 default dtype, tensors
    made on the CPU unless placed), whatever a plug-in set around it, and put the caller's back after:
    the fine-tuning service a plug-in's ``build`` calls trains the same model from a ``@torch.no_grad()``
    build, a float64 one or one that set ``torch.set_default_device("cuda")``."""
    with kept_torch_settings():
        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)
        _set_default_device(torch.device("cpu"))
        yield


def under_toolkit_settings(service: Callable[..., T]) -> Callable[..., T]:
    """``service`` (a fine-tune, a pipeline load) run under :func:`toolkit_torch_settings`."""
    @functools.wraps(service)
    def run(*args: Any, **kwargs: Any) -> T:
        with toolkit_torch_settings():
            return service(*args, **kwargs)

    return run
