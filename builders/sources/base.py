"""The contract every source of captioned images follows.

A source is split into shards so that one output shard is a pure function of
(source config, split, shard id): any worker, process or Ray task can build it alone.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS


@dataclass
class RawItem:
    """One item as the source holds it; ``error`` names why it cannot be used, if so (the reason
    counted in the stats), ``detail`` says more (the error text recorded for the item)."""

    source_id: str
    image: bytes | Image.Image | None
    caption: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    detail: str = ""


class Source(ABC):
    kind: str
    #: Pixels the resizer may decode from one of this source's encoded images (a source of files
    #: sets its own from its config; images already in memory are not capped).
    max_pixels: int = DEFAULT_MAX_PIXELS

    @abstractmethod
    def shard_ids(self, split: str) -> list[int]:
        """The shard ids this source yields for ``split``."""

    @abstractmethod
    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        """Yield the items of one shard, always in the same order."""

    def fingerprint(self) -> dict[str, Any]:
        """What the source holds, cheaply (names, sizes, times; never the bytes): a build records it
        when it starts and a resume whose source no longer matches is refused."""
        return {"kind": self.kind}


def split_of(source_id: str, test_fraction: float) -> str:
    """Assign an external item to a split by a hash of its id, stable as the source grows."""
    h = int.from_bytes(hashlib.sha256(source_id.encode("utf-8", "surrogateescape")).digest()[:8], "big")
    return "test" if h / 2**64 < test_fraction else "train"
