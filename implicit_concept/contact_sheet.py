"""Contact sheets: a grid of images with boxes drawn and labelled, for people to look at.

Used for dataset previews (ground-truth boxes) and benchmark sample grids (detector boxes).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from implicit_concept.concepts import CONCEPT_NAMES, concept

_UNKNOWN_COLOUR = (255, 0, 0)

def annotate(image: Image.Image, boxes: Iterable[tuple[str, Sequence[float]]], scale: int) -> Image.Image:
    """Upscale ``image`` by ``scale`` (nearest) and draw each (label, box-in-pixels) on it."""
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    font = ImageFont.load_default()
    for label, (x1, y1, x2, y2) in boxes:
        name = label.split()[0]
        colour = concept(name).colour if name in CONCEPT_NAMES else _UNKNOWN_COLOUR
        draw.rectangle([x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1], outline=colour, width=2)
        draw.text((x1 * scale + 2, y1 * scale + 1), label, fill=colour, font=font)
    return big


def grid(tiles: list[Image.Image], columns: int, captions: list[str] | None = None, pad: int = 4) -> Image.Image:
    """Lay tiles out in rows, each with an optional caption line under it."""
    if not tiles:
        raise ValueError("no images to lay out")
    w, h = tiles[0].size
    text_h = 12 if captions else 0
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, tile in enumerate(tiles):
        x = pad + (i % columns) * (w + pad)
        y = pad + (i // columns) * (h + text_h + pad)
        sheet.paste(tile.resize((w, h)), (x, y))
        if captions:
            draw.text((x, y + h), _fit(captions[i], w, font, draw), fill=(0, 0, 0), font=font)
    return sheet


def _fit(text: str, width: int, font: ImageFont.ImageFont, draw: ImageDraw.ImageDraw) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text
