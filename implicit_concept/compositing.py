"""Alpha-composite renderer layers onto an image and measure what was really drawn.

Each instance's box is the bounding box of its layer's visible pixels (alpha > 0) on the canvas, so
clipping, rotation and opacity are all accounted for, and the mask is the union (max) of alphas.
To combine several concepts in one image, call ``composite`` once per concept and merge the masks
with ``ImageChops.lighter``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from implicit_concept.concepts.renderer import Layer
from implicit_concept.sample import Box, Instance


def jsonable(value: Any, where: str = "params") -> Any:
    """Plain JSON types only (tuples become lists, numpy scalars Python ones), floats to 4 decimals."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def composite(
    image: Image.Image, layers: Sequence[Layer], concept: str
) -> tuple[Image.Image, list[Instance], Image.Image]:
    """Composite ``layers`` in order onto ``image`` (RGB). Returns the new image, one instance per
    layer with any visible pixel, and the "L" mask of the maximum alpha over the layers."""
    out = image.convert("RGBA")
    mask = Image.new("L", image.size, 0)
    instances = []
    for layer in layers:
        if layer.rgba.size != image.size or layer.rgba.mode != "RGBA":
            raise ValueError(
                f"{concept}: layer must be RGBA {image.size}, got {layer.rgba.mode} {layer.rgba.size}"
            )
        alpha = layer.rgba.getchannel("A")
        bbox = alpha.getbbox()
        if bbox is None:
            continue
        out.alpha_composite(layer.rgba.crop(bbox), dest=bbox[:2])
        mask.paste(ImageChops.lighter(mask.crop(bbox), alpha.crop(bbox)), bbox[:2])
        instances.append(Instance(concept=concept, box=Box(*bbox), params=jsonable(layer.params)))
    return out.convert("RGB"), instances, mask
