"""A contact sheet of a built dataset: samples with their ground-truth boxes drawn and labelled."""
from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path

from PIL import ExifTags, Image

from implicit_concept.contact_sheet import annotate, grid
from implicit_concept.files import atomic_save_image
from implicit_concept.provenance import version
from implicit_concept.sample import Sample
from implicit_concept.shard_reader import is_stream, iter_samples


#: The image formats a contact sheet may be saved as, by file ending.
SHEET_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def preview_dataset(path: Path, dest: Path, count: int = 24, columns: int = 6, contaminated_only: bool = False) -> Path:
    """A contact sheet of the first ``count`` samples under ``path``, saved to ``dest`` (an image file)."""
    dest = Path(dest)
    for name, value in (("count", count), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if dest.is_dir():
        raise ValueError(f"{dest}: is a folder; --out names the image file to write ({', '.join(SHEET_FORMATS)})")
    if dest.suffix.lower() not in SHEET_FORMATS:
        raise ValueError(f"{dest}: not an image file name; end it with one of {', '.join(SHEET_FORMATS)}")
    samples = (s for s in iter_samples(path, with_extras=False) if s.meta.contaminated or not contaminated_only)
    chosen = list(islice(samples, count))
    if not chosen:
        raise ValueError(f"{path}: no samples to show")
    scale = max(1, 256 // chosen[0].image.width)
    tiles = [annotate(s.image, [(i.concept, i.box.as_list()) for i in s.meta.instances], scale) for s in chosen]
    sheet = grid(tiles, columns, captions=[s.caption for s in chosen])
    dest.parent.mkdir(parents=True, exist_ok=True)
    exif = _provenance(chosen, _shards_seen_from(path, dest), contaminated_only)
    atomic_save_image(sheet, dest, SHEET_FORMATS[dest.suffix.lower()], exif=exif)
    return dest


def _shards_seen_from(path: Path | str, dest: Path) -> str:
    """The shards as the sheet's record names them: relative to the sheet's folder (``icd-mixed/test``
    for ``make dataset``'s preview), so two labs' sheets of the same samples are the same bytes and
    neither names the other's folders; a stream (``pipe:``, a URL) as given."""
    if is_stream(str(path)) or "://" in str(path):
        return str(path)
    return Path(os.path.relpath(Path(path).resolve(), dest.parent.resolve())).as_posix()


def _provenance(shown: list[Sample], path: str, contaminated_only: bool) -> Image.Exif:
    """What the sheet shows and what made it, in its EXIF (which PNG, JPEG and WebP all keep):
    the samples' keys and the recipes (sha256) and versions that built them, and the toolkit's."""
    exif = Image.Exif()
    exif[ExifTags.Base.Software] = f"implicit-concept {version()}"
    exif[ExifTags.Base.ImageDescription] = json.dumps({  # EXIF text is ASCII: a path's other characters escaped
        "shards": path,
        "contaminated_only": contaminated_only,
        "keys": [s.meta.key for s in shown],
        "recipe_sha256": sorted({s.meta.recipe_sha256 for s in shown}),
        "built_by": sorted({s.meta.version for s in shown}),
    }, sort_keys=True)
    return exif
