"""What code the benchmark does not own may change process-wide besides torch's settings: the working
folder, which the toolkit's relative paths (``runs/``, ``data/``, the cache) are read from, and the
warnings filters.

A plug-in whose ``build`` runs ``os.chdir`` to call its own scripts, or turns warnings into errors,
has both put back after each call into its code, so the next method is not failed by a library's
deprecation warning; and the services it calls (``ctx.finetune``, ``ctx.load_pipeline``) run in the
toolkit's working folder, so a run's files land in its folder.
"""
from __future__ import annotations

import functools
import os
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")


@contextmanager
def kept_plugin_state() -> Iterator[None]:
    """Whatever the block does to the working folder or the warnings filters is undone after it."""
    before = os.getcwd()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(before)


def in_working_folder(service: Callable[..., T]) -> Callable[..., T]:
    """``service`` run in the working folder as it is now (the toolkit's), whatever its caller's is then."""
    folder = os.getcwd()

    @functools.wraps(service)
    def run(*args: Any, **kwargs: Any) -> T:
        with kept_plugin_state():
            os.chdir(folder)
            return service(*args, **kwargs)

    return run
