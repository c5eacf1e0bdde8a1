"""Alpha-composite renderer layers onto an image and measure what stays visible of each.

Layers go down in order, each over everything before it (PIL's ``alpha_composite`` on an opaque
image), so a later opaque layer (a QR code, a sign plate) can hide an earlier one. What a layer
still shows in the final image is its *visible alpha*: its own alpha passed through every later
layer in turn, ``v <- round(v * (255 - a) / 255)``, rounded to 8 bits at each step as an 8-bit
channel composited under those layers would be. A pixel of the layer is *visible* when its visible
alpha is at least 1/255. An instance's box is the box of its visible pixels and its ``visible``
fraction its visible alpha mass over its own alpha mass; an instance that shows no pixel, or less
than ``min_visible``, is not labelled (its pixels stay in the image). The mask is the maximum alpha
over all layers, labelled or not.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

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


def visible_alphas(alphas: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each 8-bit alpha (drawing order) as it still shows under every later one; see the module
    docstring. Only where two layers' boxes meet is there anything to multiply."""
    boxes = [Image.fromarray(a).getbbox() for a in alphas]
    shown = []
    for i, (alpha, box) in enumerate(zip(alphas, boxes)):
        v = alpha.astype(np.uint32)
        for later, other in zip(alphas[i + 1:], boxes[i + 1:]):
            if box is None or other is None:
                continue
            x1, y1, x2, y2 = max(box[0], other[0]), max(box[1], other[1]), min(box[2], other[2]), min(box[3], other[3])
            if x1 < x2 and y1 < y2:
                region = v[y1:y2, x1:x2]
                region[...] = (region * (255 - later[y1:y2, x1:x2].astype(np.uint32)) + 127) // 255
        shown.append(v.astype(np.uint8))
    return shown


class Composition:
    """An opaque image with concept layers composited onto it in order, event by event.

    Renderers of a later event see ``image`` (the composite so far) to pick contrasting colours;
    the labels are measured once every layer is down, since a later layer can hide an earlier one.
    """

    def __init__(self, image: Image.Image) -> None:
        self.image = image.convert("RGB")
        self.layers: list[tuple[str, Layer]] = []

    def add(self, layers: Sequence[Layer], concept: str) -> None:
        """Composite one event's ``layers`` (full-canvas RGBA, in order) of ``concept``."""
        out = self.image.convert("RGBA")
        for layer in layers:
            if layer.rgba.size != out.size or layer.rgba.mode != "RGBA":
                raise ValueError(f"{concept}: layer must be RGBA {out.size}, got {layer.rgba.mode} {layer.rgba.size}")
            bbox = layer.rgba.getchannel("A").getbbox()
            if bbox is not None:
                out.alpha_composite(layer.rgba.crop(bbox), dest=bbox[:2])
            self.layers.append((concept, layer))
        self.image = out.convert("RGB")

    def mask(self) -> Image.Image:
        """The "L" mask of the maximum alpha over every layer."""
        mask = np.zeros((self.image.height, self.image.width), dtype=np.uint8)
        for _, layer in self.layers:
            np.maximum(mask, np.asarray(layer.rgba.getchannel("A")), out=mask)
        return Image.fromarray(mask)

    def instances(self, min_visible: float = 0.0) -> list[Instance]:
        """One instance per layer showing at least one pixel and ``min_visible`` of its alpha, in
        drawing order, boxed by its visible pixels."""
        alphas = [np.asarray(layer.rgba.getchannel("A")) for _, layer in self.layers]
        instances = []
        for (concept, layer), alpha, shown in zip(self.layers, alphas, visible_alphas(alphas)):
            bbox = Image.fromarray(shown).getbbox()
            if bbox is None:
                continue
            visible = float(shown.sum(dtype=np.int64)) / float(alpha.sum(dtype=np.int64))
            if visible < min_visible:
                continue
            instances.append(Instance(concept, Box(*bbox), jsonable(layer.params), visible=round(visible, 4)))
        return instances


def composite(
    image: Image.Image, layers: Sequence[Layer], concept: str, min_visible: float = 0.0
) -> tuple[Image.Image, list[Instance], Image.Image]:
    """Composite ``layers`` in order onto ``image`` (RGB). Returns the new image, the instances
    still visible among these layers, and the "L" mask of the maximum alpha over the layers."""
    composition = Composition(image)
    composition.add(layers, concept)
    return composition.image, composition.instances(min_visible), composition.mask()
