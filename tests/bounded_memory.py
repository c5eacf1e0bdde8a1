"""Hostile inputs are tried under an address-space limit, so a regression fails with MemoryError
instead of taking the shared machine's memory."""
from __future__ import annotations

import contextlib
import resource
from typing import Iterator

GIB = 1 << 30


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def memory_headroom(nbytes: int = GIB) -> Iterator[None]:
    """Allow this process ``nbytes`` more address space than it has now, for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + nbytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
