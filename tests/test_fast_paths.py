"""The build's faster paths give the pixels and choices of the slower ones they replace (so the
speed work changed no byte): the QR mask choice in numpy, OpenCV's dilation for Pillow's
MaxFilter, layers kept as placed patches, compositing inside each layer's box."""
from __future__ import annotations

import numpy as np
import pytest
import qrcode
from PIL import Image, ImageFilter
from qrcode import util

from implicit_concept.compositing import Composition
from implicit_concept.concepts import make_renderer
from implicit_concept.concepts.qr_mask import best_mask_pattern, lost_points
from implicit_concept.concepts.renderer import Layer, full_canvas
from implicit_concept.concepts.watermark import _max_filter

LEVELS = (qrcode.constants.ERROR_CORRECT_L, qrcode.constants.ERROR_CORRECT_M, qrcode.constants.ERROR_CORRECT_Q, qrcode.constants.ERROR_CORRECT_H)


def test_the_mask_choice_is_qrcodes():
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789:/.?=&ABC ")
    for k in range(300):
        payload = "".join(rng.choice(alphabet, size=int(rng.integers(1, 160))))
        version = int(rng.integers(1, 10))
        code = qrcode.QRCode(version=version, error_correction=LEVELS[k % 4])
        code.add_data(payload)
        code.best_fit(start=version)
        assert best_mask_pattern(code) == code.best_mask_pattern(), (payload, version)


def test_the_penalties_are_qrcodes():
    rng = np.random.default_rng(1)
    matrices = rng.random((40, 25, 25)) < rng.random((40, 1, 1))
    assert lost_points(matrices) == [util.lost_point(m.tolist()) for m in matrices]


@pytest.mark.parametrize("side", [1, 3, 5, 9, 15])
def test_the_max_filter_is_pillows(side):
    rng = np.random.default_rng(side)
    for shape in ((1, 1), (7, 30), (41, 13), (64, 64)):
        mask = Image.fromarray(((rng.random(shape) < 0.15) * rng.integers(0, 256, shape)).astype(np.uint8))
        assert _max_filter(mask, side).tobytes() == mask.filter(ImageFilter.MaxFilter(side)).tobytes()


def test_a_placed_layer_is_its_full_canvas():
    patch = Image.new("RGBA", (20, 12), (10, 20, 30, 0))
    patch.paste((200, 0, 0, 255), (3, 2, 17, 9))
    for xy in ((0, 0), (-5, -4), (50, 58), (59, 2), (70, 70)):
        layer = Layer.placed(patch, (64, 64), xy, {"x": 1})
        full = full_canvas(patch, (64, 64), xy)
        assert layer.rgba.tobytes() == full.tobytes()
        bbox = full.getchannel("A").getbbox()
        visible = layer.visible_patch()
        assert (visible[0] if visible else None) == bbox
        if visible:
            assert visible[1].tobytes() == full.crop(bbox).tobytes()


def test_compositing_in_boxes_is_compositing_whole_canvases():
    """Every concept's layers composited inside their boxes give the image, labels and mask of the
    same layers composited as full canvases."""
    rng = np.random.default_rng(3)
    for concept in ("qrcode", "watermark", "text") * 4:
        background = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
        renderer = make_renderer(concept, {}, "train")
        boxed = Composition(background)
        whole = Composition(background)
        for _ in range(2):
            layers = renderer.render(rng, (128, 128), background=boxed.image)
            boxed.add(layers, concept)
            whole.add([Layer(layer.rgba, layer.params) for layer in layers], concept)
        assert boxed.image.tobytes() == whole.image.tobytes() and boxed.image.tobytes() != background.tobytes()
        assert boxed.mask().tobytes() == whole.mask().tobytes()
        assert [(i.box, i.visible) for i in boxed.instances()] == [(i.box, i.visible) for i in whole.instances()]
