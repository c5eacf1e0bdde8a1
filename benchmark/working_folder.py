"""The working folder, which the toolkit's relative paths (``runs/``, ``data/``, the cache) are read from.

Code the benchmark does not own may change it (a plug-in whose ``build`` runs ``os.chdir`` to call its
own scripts): it is put back after each call into that code, and the services a plug-in calls
(``ctx.finetune``, ``ctx.load_pipeline``) run in the toolkit's, so a run's files land in its folder.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")


@contextmanager
def kept_working_folder() -> Iterator[None]:
    """Whatever the block does to the working folder is undone after it."""
    before = os.getcwd()
    try:
        yield
    finally:
        os.chdir(before)


def in_working_folder(service: Callable[..., T]) -> Callable[..., T]:
    """``service`` run in the working folder as it is now (the toolkit's), whatever its caller's is then."""
    folder = os.getcwd()

    @functools.wraps(service)
    def run(*args: Any, **kwargs: Any) -> T:
        with kept_working_folder():
            os.chdir(folder)
            return service(*args, **kwargs)

    return run
