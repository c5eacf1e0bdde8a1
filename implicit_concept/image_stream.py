"""Whatever a caller hands the scorer, as a stream of named RGB images.

Accepted: a PIL image, an image file, a folder of image files, a shard set (a folder of ``.tar``
shards, one tar, or a brace pattern) or a list mixing these and ``(name, PIL image)`` pairs, for
images made in memory that should keep their names (``{case_number}_{i}``, say) in the records; one
such pair alone, or a dict of name -> PIL image, is taken as those pairs (not its names as files).
Names are unique, as the records keyed on them need: in a list, a folder's or shard set's images are
named after it as given (``a/0_0.png`` and ``b/0_0.png`` for folders ``a`` and ``b``, as each file
given alone is named), and a name met twice (one file given twice, two pairs named alike) is refused.
An array, a tensor or bytes is refused, saying so: which of its axes are images and what its values
mean is the caller's to say. Every decoding failure names the file, and no image is decoded above
the pixel cap of :mod:`implicit_concept.image_decode`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

from PIL import Image

from implicit_concept.image_decode import DEFAULT_MAX_PIXELS, decode_rgb, open_image
from implicit_concept.sample_error import SampleError
from implicit_concept.shard_reader import is_hidden, iter_samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

ImageSource = Union[str, Path, Image.Image, tuple[str, Image.Image], Mapping[str, Image.Image],
                    Iterable[Union[str, Path, Image.Image, tuple[str, Image.Image]]]]


class ImageReadError(ValueError):
    """An image cannot be opened or decoded; the message names the file. ``problems``: every
    unreadable file's own message, when several were (the message lists the first few)."""

    problems: list[str] = []


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode fully now, so a truncated file fails here, naming itself, not deep inside a model;
    by :func:`~implicit_concept.image_decode.decode_rgb`, as the dataset builder decodes."""
    try:
        with open(path, "rb") as f:
            return decode_rgb(open_image(f), max_pixels)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such image file") from None
    except SampleError as e:
        raise ImageReadError(f"{path}: {_why(e)}") from None
    except (OSError, ValueError) as e:
        raise ImageReadError(f"{path}: not a readable image ({e})") from None


def as_rgb(image: Image.Image, name: str) -> Image.Image:
    """An image handed over in memory, normalised by the same rule as a file."""
    try:
        return decode_rgb(image, max_pixels=None)
    except SampleError as e:
        raise ImageReadError(f"{name}: {_why(e)}") from None


def _why(e: SampleError) -> str:
    what = {"too_large": "too many pixels to decode", "unsupported_mode": "an unsupported pixel mode"}.get(e.reason, "not a readable image")
    return f"{what} ({e.detail or e.reason})"


def require_readable(paths: Iterable[str | Path], show: int = 5) -> list[tuple[int, int]]:
    """Decode every file before any is scored, so a folder with several broken images is refused
    once, naming them all (up to ``show``), not once per rerun; their sizes, in order."""
    return [image.size for _, image in iter_images(list(paths), show)]


def _raise_if_unreadable(problems: list[str], count: int, show: int) -> None:
    if count == 1 and problems:
        raise ImageReadError(problems[0])
    if problems:
        listed = "; ".join(problems[:show]) + ("; ..." if len(problems) > show else "")
        error = ImageReadError(f"{len(problems)} of {count} images cannot be read: {listed}")
        error.problems = list(problems)
        raise error


def iter_images(source: ImageSource, show: int = 5) -> Iterator[tuple[str, Image.Image]]:
    """Yield ``(name, RGB image)``: file names for files, shard keys for shards, ``image-N`` for PIL.

    An unreadable file among several does not stop the stream: the rest are still yielded, and the
    stream then ends in one :class:`ImageReadError` naming every such file (up to ``show``), so a
    caller that writes only at the end refuses a folder once, not once per broken image, without
    decoding anything twice.
    """
    if isinstance(source, Image.Image):
        yield "image-0", as_rgb(source, "image-0")
        return
    problems: list[str] = []
    count = 0
    seen: set[str] = set()
    for name, entry in _entries(source):
        if name in seen:
            raise ImageReadError(f"{name}: given twice among the images (a file or shard key twice, or two images named alike); "
                                 "each image's record is known by its name: give each once")
        seen.add(name)
        count += 1
        if isinstance(entry, Image.Image):
            yield name, entry
            continue
        try:
            image = load_image(entry)
        except ImageReadError as e:
            problems.append(str(e))
            continue
        yield name, image
    _raise_if_unreadable(problems, count, show)


def _entries(source: ImageSource) -> Iterator[tuple[str, Image.Image | Path]]:
    """Names with a decoded image (PIL items, shard samples) or a file still to decode."""
    if isinstance(source, (str, Path)):
        yield from _path_entries(source)
        return
    for i, item in enumerate(_items(source)):
        if isinstance(item, Image.Image):
            yield f"image-{i}", as_rgb(item, f"image-{i}")
        elif isinstance(item, tuple):
            if not (len(item) == 2 and isinstance(item[0], str) and item[0] and isinstance(item[1], Image.Image)):
                raise ImageReadError(f"item {i}: a tuple must be (name, PIL image) with a non-empty name, got {_shape(item)}")
            yield item[0], as_rgb(item[1], item[0])
        elif isinstance(item, (str, Path)):
            yield from _path_entries(item, named_after=True)
        else:
            raise ImageReadError(f"item {i}: want a path, a PIL image or a (name, PIL image) pair, got {_kind(item)}")


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Image.Image)


def _items(source: Any) -> Iterable[Any]:
    """The items of a source that is not one path: a lone ``(name, image)`` pair is one item and a
    dict's are its ``(name, image)`` pairs, where iterating either would read the names as files."""
    if _is_pair(source):
        return [source]
    if isinstance(source, Mapping):
        return list(source.items())
    if isinstance(source, (bytes, bytearray, memoryview)) or _is_array(source) or not hasattr(source, "__iter__"):
        raise ImageReadError(f"images: want a path, a PIL image, a (name, PIL image) pair, a dict of them or a list of these, "
                             f"got {_kind(source)}")
    return source


def _is_array(source: Any) -> bool:
    """An array or tensor of numbers (iterated, its rows); one of objects (a pandas column of PIL
    images) is a list of items like any other."""
    dtype = getattr(source, "dtype", None)
    return dtype is not None and getattr(dtype, "kind", None) != "O"


def _kind(item: Any) -> str:
    """What was handed over instead of an image, and for an array the way to one."""
    shape = getattr(item, "shape", None)
    if shape is None:
        return type(item).__name__
    return (f"a {type(item).__name__} of shape {tuple(shape)} (its axes and value range are the caller's to say: "
            "pass Image.fromarray(a) for each uint8 height x width x 3 array)")


def _shape(item: tuple) -> str:
    return "(" + ", ".join(type(v).__name__ for v in item) + ")"


def is_shard_source(source: object) -> bool:
    """A brace pattern, a tar, or a folder with tars below it and no image files (a folder with
    both is refused: scoring one kind would silently drop the other)."""
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    if path.suffix == ".tar":
        return True
    if not path.is_dir():
        return "{" in str(source)  # a brace pattern; an existing folder whose name holds "{" is a folder

    tars = sorted(path.rglob("*.tar"))
    if tars:
        images = image_files(path)
        if images:
            raise ImageReadError(
                f"{path}: holds both .tar shards ({len(tars)}, first {tars[0].relative_to(path)}) and image files "
                f"({len(images)}, first {images[0].relative_to(path)}); pass the shards' folder or the images' folder, not one holding both"
            )
    return bool(tars)


def image_files(folder: Path) -> list[Path]:
    """The image files below ``folder``, by suffix. Hidden ones (a name starting with a dot, the file's
    or a folder's on the way: macOS's ``._a.png`` AppleDouble metadata, ``.ipynb_checkpoints/``) are
    not images, as the dataset builder reads a folder: one would make the whole folder unreadable."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(is_hidden(part) for part in p.relative_to(folder).parts))


def _path_entries(source: str | Path, named_after: bool = False) -> Iterator[tuple[str, Image.Image | Path]]:
    """A path's images, named by key or by path within the folder; ``named_after``: prefixed by
    ``source`` as given, so two folders or shard sets in one list name their images apart."""
    path = Path(source)
    if is_shard_source(source):
        for sample in iter_samples(source, with_extras=False):
            yield (f"{str(source).rstrip('/')}/{sample.key}" if named_after else sample.key), sample.image
    elif path.is_dir():
        files = image_files(path)
        if not files:
            raise ImageReadError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) or .tar shards in this folder")
        for f in files:
            yield str(f if named_after else f.relative_to(path)), f
    else:
        yield str(path), path
