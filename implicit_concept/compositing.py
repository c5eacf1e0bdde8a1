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

Alpha alone does not say whether an instance can be seen: a white watermark tile over a white sky
has all its alpha and changes no pixel. So each layer also keeps how much it changed the image
under it (the largest channel difference, 0-255), passed through the later layers like its alpha;
with ``min_seen``, an instance with less than that share of its alpha still showing on pixels it
changed by at least :data:`SEEN_LEVELS` is not labelled either.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from implicit_concept.concepts.renderer import Layer
from implicit_concept.sample import Box, Instance

#: A pixel an instance changed by fewer levels than this (in its most changed channel) does not
#: show it: a JPEG at quality 95 moves pixels by a few levels.
SEEN_LEVELS = 8
#: An instance with less of its alpha on pixels it visibly changed is not labelled by a build: what
#: shows of it is a few edge pixels. A word whose stroke vanishes into a dark ground keeps its fill
#: (about a third), a QR code on white its dark modules (about half).
MIN_SEEN = 0.1


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


def visible_alphas(
    placed: Sequence[tuple[tuple[int, int, int, int], np.ndarray]], values: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Each 8-bit alpha (drawing order), given as ``(box, alpha inside box)``, as it still shows
    under every later one; see the module docstring. ``values`` (one 8-bit array per layer, in its
    box) are passed through the later alphas instead of the layer's own. Only where two boxes meet
    is there anything to multiply."""
    shown = []
    for i, (box, alpha) in enumerate(placed):
        v = (alpha if values is None else values[i]).astype(np.uint32)
        for other, later in placed[i + 1:]:
            x1, y1, x2, y2 = max(box[0], other[0]), max(box[1], other[1]), min(box[2], other[2]), min(box[3], other[3])
            if x1 < x2 and y1 < y2:
                region = v[y1 - box[1]:y2 - box[1], x1 - box[0]:x2 - box[0]]
                cover = later[y1 - other[1]:y2 - other[1], x1 - other[0]:x2 - other[0]].astype(np.uint32)
                region[...] = (region * (255 - cover) + 127) // 255
        shown.append(v.astype(np.uint8))
    return shown


def _change(under: Image.Image, drawn: Image.Image) -> np.ndarray:
    """How much drawing changed each pixel: its largest channel difference, 0-255."""
    r, g, b = ImageChops.difference(under, drawn).split()
    return np.asarray(ImageChops.lighter(ImageChops.lighter(r, g), b))


class Composition:
    """An opaque image with concept layers composited onto it in order, event by event.

    Renderers of a later event see ``image`` (the composite so far) to pick contrasting colours;
    the labels are measured once every layer is down, since a later layer can hide an earlier one.
    Each layer is worked on inside the box of its visible pixels only.
    """

    def __init__(self, image: Image.Image) -> None:
        self.image = image if image.mode == "RGB" else image.convert("RGB")
        self._own_copy = self.image is not image
        self.layers: list[tuple[str, Layer]] = []
        self._placed: list[tuple[int, tuple[int, int, int, int], np.ndarray]] = []

    def add(self, layers: Sequence[Layer], concept: str) -> None:
        """Composite one event's ``layers`` (RGBA, placed on a canvas of the image's size, in order) of ``concept``."""
        for layer in layers:
            if layer.canvas != self.image.size or layer.patch.mode != "RGBA":
                raise ValueError(f"{concept}: layer must be RGBA {self.image.size}, got {layer.patch.mode} {layer.canvas}")
            visible = layer.visible_patch()
            if visible is not None:
                box, crop = visible
                if not self._own_copy:  # the caller's image is never drawn on
                    self.image, self._own_copy = self.image.copy(), True
                under = self.image.crop(box)
                region = under.convert("RGBA")
                region.alpha_composite(crop)
                drawn = region.convert("RGB")
                self.image.paste(drawn, box[:2])
                self._placed.append((len(self.layers), box, np.asarray(crop.getchannel("A")), _change(under, drawn)))
            self.layers.append((concept, layer))

    def mask(self) -> Image.Image:
        """The "L" mask of the maximum alpha over every layer."""
        mask = np.zeros((self.image.height, self.image.width), dtype=np.uint8)
        for _, (x1, y1, x2, y2), alpha, _ in self._placed:
            np.maximum(mask[y1:y2, x1:x2], alpha, out=mask[y1:y2, x1:x2])
        return Image.fromarray(mask)

    def instances(self, min_visible: float = 0.0, min_seen: float = 0.0) -> list[Instance]:
        """One instance per layer showing at least one pixel and ``min_visible`` of its alpha, in
        drawing order, boxed by its visible pixels; with ``min_seen``, also that share of its alpha
        on pixels it changed by at least :data:`SEEN_LEVELS`."""
        instances = []
        placed = [(box, alpha) for _, box, alpha, _ in self._placed]
        shown_alphas = visible_alphas(placed)
        shown_changes = visible_alphas(placed, [change for *_, change in self._placed]) if min_seen else shown_alphas
        for (index, box, alpha, _), shown, change in zip(self._placed, shown_alphas, shown_changes):
            bbox = Image.fromarray(shown).getbbox()
            if bbox is None:
                continue
            mass = float(alpha.sum(dtype=np.int64))
            visible = float(shown.sum(dtype=np.int64)) / mass
            if visible < min_visible:
                continue
            if min_seen and float(shown[change >= SEEN_LEVELS].sum(dtype=np.int64)) / mass < min_seen:
                continue
            concept, layer = self.layers[index]
            x, y = box[:2]
            box = Box(x + bbox[0], y + bbox[1], x + bbox[2], y + bbox[3])
            instances.append(Instance(concept, box, jsonable(layer.params), visible=round(visible, 4)))
        return instances


def composite(
    image: Image.Image, layers: Sequence[Layer], concept: str, min_visible: float = 0.0, min_seen: float = 0.0
) -> tuple[Image.Image, list[Instance], Image.Image]:
    """Composite ``layers`` in order onto ``image`` (RGB). Returns the new image, the instances
    still visible among these layers (``min_seen=MIN_SEEN``: as a build from photos labels them),
    and the "L" mask of the maximum alpha over the layers."""
    composition = Composition(image)
    composition.add(layers, concept)
    return composition.image, composition.instances(min_visible, min_seen), composition.mask()
