"""A sample grid per method: the first generated images with the detector's boxes drawn on them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from implicit_concept.contact_sheet import annotate, grid
from implicit_concept.files import atomic_save_image
from implicit_concept.image_stream import load_image


def method_grid(paths: list[Path], records: list[dict[str, Any]], dest: Path, title: str, columns: int = 8) -> Path:
    """``records`` are the per-image entries of a score report, in the same order as ``paths``."""
    tiles = []
    for path, record in zip(paths, records):
        image = load_image(path)
        boxes = [(f"{d['concept']} {d['confidence']:.2f}", d["box"]) for d in record["detections"]]
        tiles.append(annotate(image, boxes, scale=max(1, 128 // image.width)))
    sheet = grid(tiles, columns)
    canvas = Image.new("RGB", (sheet.width, sheet.height + 14), "white")
    canvas.paste(sheet, (0, 14))
    ImageDraw.Draw(canvas).text((4, 1), title, fill=(0, 0, 0))
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_image(canvas, dest)
    return dest
