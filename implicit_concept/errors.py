"""The one exception a pipeline stage raises to drop a sample without stopping the shard."""
from __future__ import annotations


class SampleError(Exception):
    """A sample cannot be used; ``reason`` is the snake_case key counted in failure histograms."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
