"""A contact sheet of a built dataset: samples with their ground-truth boxes drawn and labelled."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

from implicit_concept.contact_sheet import annotate, grid
from implicit_concept.shard_reader import iter_samples


def preview_dataset(path: Path, dest: Path, count: int = 24, columns: int = 6, contaminated_only: bool = False) -> Path:
    samples = (s for s in iter_samples(path, with_extras=False) if s.meta.contaminated or not contaminated_only)
    chosen = list(islice(samples, count))
    if not chosen:
        raise ValueError(f"{path}: no samples to show")
    scale = max(1, 256 // chosen[0].image.width)
    tiles = [annotate(s.image, [(i.concept, i.box.as_list()) for i in s.meta.instances], scale) for s in chosen]
    sheet = grid(tiles, columns, captions=[s.caption for s in chosen])
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest)
    return dest
