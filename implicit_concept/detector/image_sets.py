"""Unlabelled image sets a detector is trained or calibrated with, and what identifies each.

Background images (showing no concept, such as a base model's generations from clean prompts) join
YOLO's fit split with empty label files, so the detector learns what generated images look like;
calibration images (held-out generations, never backgrounds) set its thresholds. Either comes as a
folder of image files or as ``(name, PIL image)`` pairs. A set is identified by its pixels: the
sha256 of its images' pixel hashes, sorted, so neither names, file formats nor order change it, and
the same image given twice counts once.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

from PIL import Image

from implicit_concept.image_stream import IMAGE_SUFFIXES, ImageReadError, as_rgb, image_files, load_image

ImageSet = Union[str, Path, Iterable[tuple[str, Image.Image]]]


class ImageSetError(ValueError):
    """An image set cannot be used; the message names the folder or item and the problem."""


@dataclass(frozen=True)
class ImageSetDigest:
    """How many distinct images a set holds and the sha256 that identifies it."""

    images: int
    sha256: str
    #: Each image's :func:`pixel_sha256`, to tell whether two sets share an image.
    pixel_hashes: frozenset[str] = field(repr=False)

    @classmethod
    def of(cls, pixel_hashes: Iterable[str]) -> "ImageSetDigest":
        distinct = sorted(set(pixel_hashes))
        sha256 = hashlib.sha256("".join(h + "\n" for h in distinct).encode("ascii")).hexdigest()
        return cls(images=len(distinct), sha256=sha256, pixel_hashes=frozenset(distinct))

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "sha256": self.sha256}


def pixel_sha256(image: Image.Image) -> str:
    """The sha256 of an image's size and 8-bit RGB pixels."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode("ascii") + rgb.tobytes()).hexdigest()


def named_images(source: ImageSet, role: str) -> Iterator[tuple[str, Image.Image]]:
    """``(name, RGB image)`` of a folder (its image files, sorted, below it) or of given pairs;
    a missing or empty folder, an unreadable file or a pair that is not one fails naming it."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        for path in _image_files(folder, role):
            try:
                yield str(path.relative_to(folder)), load_image(path)
            except ImageReadError as e:
                raise ImageSetError(f"{role} images: {e}") from None
        return
    count = 0
    for count, item in enumerate(source, 1):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Image.Image)):
            raise ImageSetError(f"{role} images: item {count - 1} is {type(item).__name__}, want a (name, PIL image) pair")
        try:
            yield str(item[0]), as_rgb(item[1], str(item[0]))
        except ImageReadError as e:
            raise ImageSetError(f"{role} images: {e}") from None
    if count == 0:
        raise ImageSetError(f"{role} images: none given")


def image_set_digest(source: ImageSet, role: str) -> ImageSetDigest:
    """The digest of ``source`` without training anything: what a cache of detectors can key on."""
    return ImageSetDigest.of(pixel_sha256(image) for _, image in named_images(source, role))


def write_backgrounds(source: ImageSet, folder: Path) -> ImageSetDigest:
    """Write ``source`` as YOLO background images: ``folder/images/<pixel sha256>.png`` (lossless, so
    the detector trains on the pixels the digest names) and an empty ``folder/labels/<same>.txt``."""
    images, labels = Path(folder) / "images", Path(folder) / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    hashes = []
    for _, image in named_images(source, "background"):
        digest = pixel_sha256(image)
        hashes.append(digest)
        image.save(images / f"{digest}.png")
        (labels / f"{digest}.txt").write_text("", encoding="utf-8")
    return ImageSetDigest.of(hashes)


def _image_files(folder: Path, role: str) -> list[Path]:
    if not folder.exists():
        raise ImageSetError(f"{folder}: no such folder of {role} images")
    if not folder.is_dir():
        raise ImageSetError(f"{folder}: not a folder (want a folder of {role} images)")
    files = image_files(folder)
    if not files:
        raise ImageSetError(f"{folder}: no {role} image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files
