"""The contract every source of captioned images follows, and the rules every external source shares:
the split by key hash, names recorded in NFC, image extensions, hidden files, names that are not
UTF-8, the caps.

A source is split into shards so that one output shard is a pure function of
(source config, split, shard id): any worker, process or Ray task can build it alone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS
from implicit_concept.sample import key_hash
from implicit_concept.validate import check_int

#: The photo and web formats Pillow reads (a GIF or APNG gives its first frame, a TIFF its first page),
#: by preference when one key has several; a tar source takes the same ones in the same order.
DEFAULT_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "avif", "bmp", "gif", "tif", "tiff")

#: A split's shards at most, in a source's plan and in a recorded one (LAION-2B is about 231 000 tars).
MAX_PLANNED_SHARDS = 10_000_000

#: The reason of a file (or tar member) whose name starts with a dot: never part of an item.
HIDDEN = "hidden_file"


class SourceNotFound(ValueError):
    """A source's tars or folder are not on this machine: a recipe's placeholder path (icd-v1's), most
    often, where a lab's own images are meant to be named (``--source``)."""


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
    return "test" if key_hash(source_id) / 2**64 < test_fraction else "train"


def recorded_name(name: str) -> str:
    """A file or member name as a source's identity holds it (source ids, the split hash, key order,
    records): composed, NFC. A Mac writes names decomposed (NFD), most other tools composed, and
    a copy made through one keeps its form: the same images under names that look the same are
    one dataset, read by their real names."""
    return unicodedata.normalize("NFC", name)


def hidden_detail(name: str, what: str = "file") -> str:
    """The recorded text of a hidden ``what`` (file, member) ``name``."""
    return (f"{name}: a hidden {what} (its name, or a folder's on its path, starts with a dot: macOS '._' AppleDouble "
            f"metadata, .DS_Store, .thumbnails/ and the like) is part of no item; not read")


def undecodable_detail(name: str) -> str:
    """The recorded text of a file or member ``name`` that is not UTF-8 (a lone surrogate stands for
    each byte that is not), so a lab knows which file to rename and why."""
    bad = next(ord(c) for c in name if 0xD800 <= ord(c) <= 0xDFFF)
    found = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"a lone surrogate U+{bad:04X}"
    return (f"{name!r}: the name is not UTF-8 ({found}; written in another encoding, e.g. Latin-1 or a zip's CP437) and "
            f"cannot be recorded; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8)")


def check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def check_limits(max_bytes: Any, bytes_field: str, max_pixels: Any) -> None:
    """The caps every source of external files carries: bytes read per file, pixels decoded per image."""
    check_int(bytes_field, max_bytes, 1 << 10, 1 << 32)
    check_int("max_pixels", max_pixels, 1, PILLOW_MAX_PIXELS)


def raise_cap(field: str) -> str:
    """What a skip over a source cap ends with: the recipe field that sets it (``--source`` has none)."""
    return f"; to read it, raise {field} in a recipe's [source]"
