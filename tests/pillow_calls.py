"""What Pillow was asked to do during a block: how a test says that a costly file was refused
before Pillow parsed it (``open``) or decoded its pixels (``load``), in place of a wall-clock bound
that a loaded machine can break and a fast one can hide."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageFile


@contextmanager
def pillow_calls() -> Iterator[Counter]:
    """Counts of ``Image.open`` and ``ImageFile.load`` calls made within the block (they still run)."""
    calls: Counter = Counter()
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def counted_open(*args, **kwargs):
        calls["open"] += 1
        return real_open(*args, **kwargs)

    def counted_load(self, *args, **kwargs):
        calls["load"] += 1
        return real_load(self, *args, **kwargs)

    Image.open, ImageFile.ImageFile.load = counted_open, counted_load
    try:
        yield calls
    finally:
        Image.open, ImageFile.ImageFile.load = real_open, real_load
