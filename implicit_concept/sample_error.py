"""What a source item that cannot be used raises: one ``SampleError`` whose ``reason`` (snake_case)
feeds a build's failure histogram and skip records, and messages that read the same in every run."""
from __future__ import annotations

import re

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


class SampleError(Exception):
    """A sample cannot be used; ``reason`` is the snake_case key counted in failure histograms."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def error_text(exc: BaseException) -> str:
    """An exception's message without the memory addresses of object reprs, which differ per run."""
    return _ADDRESS.sub("", str(exc))
