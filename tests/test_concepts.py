"""Concept renderers, asset pools and compositing: boxes are tight, sizes honour the config,
output is deterministic, train and test assets never meet, QR codes really decode."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from implicit_concept.compositing import MIN_SEEN, Composition, composite
from implicit_concept.concepts import CONCEPT_NAMES, CONCEPTS, Layer, make_config, make_renderer
from implicit_concept.concepts.assets import AssetPool, _font_family
from tests.visible_pixels import expected_labels

SIZES = (32, 64, 256, 512)
SEEDS = {32: 40, 64: 40, 256: 12, 512: 6}


def _background(size: int, seed: int) -> Image.Image:
    """A smooth random gradient, so contrast logic and 'unchanged where mask is 0' are exercised."""
    rng = np.random.default_rng(10_000 + seed)
    a, b = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, size)[:, None, None]
    return Image.fromarray((a * (1 - t) + b * t).repeat(size, axis=1).astype(np.uint8), "RGB")


def _renders(concept: str, size: int, split: str = "train", options: dict | None = None):
    """(layers, composited image, instances, mask, background) over this size's seeds."""
    renderer = make_renderer(concept, options or {}, split)
    for seed in range(SEEDS[size]):
        background = _background(size, seed)
        layers = renderer.render(np.random.default_rng(seed), (size, size), background=background)
        yield (layers, *composite(background, layers, concept), background)


def _visible(layers: list[Layer]) -> list[Layer]:
    return [layer for layer in layers if layer.rgba.getchannel("A").getbbox()]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("concept", CONCEPT_NAMES)
def test_boxes_hold_every_visible_pixel(concept: str, size: int) -> None:
    """Within one event too (tiles of a watermark, words near a band), a box is what stays visible."""
    for layers, _, instances, _, _ in _renders(concept, size):
        expected = expected_labels([(concept, layer.rgba) for layer in layers], 0.0)
        assert instances and len(instances) == len(expected) <= len(_visible(layers))
        for inst, (_, box, visible) in zip(instances, expected):
            assert inst.box.inside(size, size)
            assert inst.box.as_list() == box and inst.visible == pytest.approx(visible, abs=5e-5)
            json.dumps(inst.to_json(size, size))


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)


@pytest.mark.parametrize("concept", CONCEPT_NAMES)
def test_params_are_plain_json_rounded(concept: str) -> None:
    for _, _, instances, _, _ in _renders(concept, 64):
        for inst in instances:
            assert json.loads(json.dumps(inst.params)) == inst.params
            assert all(round(f, 4) == f for f in _floats(inst.params))


@pytest.mark.parametrize("size", SIZES)
def test_qrcode_size_within_scale(size: int) -> None:
    """Tolerance: the box of a code of side s rotated by r and with corners shifted by up to p*s
    spans at most s*(|cos r|+|sin r|)*(1+2p) + 2 px (resampling fringe) and at least s*(1-2p) - 2."""
    cfg = make_config("qrcode", {})
    lo, hi = cfg.scale
    for _, _, instances, _, _ in _renders("qrcode", size):
        (inst,) = instances
        p = inst.params
        side = p["side_px"]
        assert max(cfg.min_px, math.floor(lo * size)) <= side <= max(cfg.min_px, math.ceil(hi * size))
        r = math.radians(p["rotation"])
        grow = (abs(math.cos(r)) + abs(math.sin(r))) * (1 + 2 * p["perspective"])
        for extent in (inst.box.width, inst.box.height):
            assert side * (1 - 2 * p["perspective"]) - 2 <= extent <= side * grow + 2
        frac = inst.box.area / size**2
        assert frac <= (max(hi, cfg.min_px / size) * grow + 2 / size) ** 2


@pytest.mark.parametrize("size", SIZES)
def test_watermark_size_within_scale(size: int) -> None:
    """Tolerance: a mark of unrotated width w rotated by r has a box side of at most
    1.6*w*(|cos r|+|sin r|) + its stroke/shadow margins + 4 px (a logo with the word under its icon
    is up to ~1.5x taller than wide; rendered text deviates from the aimed width by hinting);
    untiled marks, never clipped, have a side of at least w/2. A text mark held at the minimum font
    size may be wider than aimed: its font size is checked instead."""
    cfg = make_config("watermark", {})
    scales = {"center": cfg.scale, "corner": cfg.corner_scale, "tiled": cfg.tile_scale}
    for _, _, instances, _, _ in _renders("watermark", size):
        for inst in instances:
            p = inst.params
            w = p["width_px"]
            assert w <= max(scales[p["layout"]][1] * size, cfg.min_px) + 1
            r = math.radians(p["rotation"])
            margin = 2 * (p["stroke_px"] + p["shadow_px"]) + 4
            longest = max(inst.box.width, inst.box.height)
            if p["kind"] == "text":
                assert p["font_px"] >= cfg.min_font_px
            if p["kind"] != "text" or p["font_px"] > cfg.min_font_px:
                assert longest <= 1.6 * w * (abs(math.cos(r)) + abs(math.sin(r))) + margin
            if p["layout"] != "tiled":
                assert longest >= w / 2
            assert cfg.opacity[0] - 1e-4 <= p["opacity"] <= cfg.opacity[1] + 1e-4


@pytest.mark.parametrize("size", SIZES)
def test_text_never_below_min_size(size: int) -> None:
    """A raised minimum is honoured too, where one line at that size fits the canvas (from 64 px)."""
    raised = {"min_font_px": 12, "font_scale": [0.02, 0.05]}
    for options in ({}, raised) if size >= 64 else ({},):
        cfg = make_config("text", options)
        for _, _, instances, _, _ in _renders("text", size, options=options):
            for inst in instances:
                px = inst.params["font_px"]
                assert cfg.min_font_px <= px <= max(cfg.min_font_px, round(cfg.font_scale[1] * size))
                assert inst.box.height >= px // 2


@pytest.mark.parametrize("style", ["subtitle", "meme"])
def test_free_text_is_one_box_per_word(style: str) -> None:
    """Unbacked lines are split into word instances, as scattered words are: one word per box, every
    word of the phrase once, in reading order, each box one line high (a line is at most ~1.13 font
    sizes tall plus its stroke; two lines are over 2)."""
    options = {"styles": {style: 1.0}, "band_prob": 0.0}
    multiword = 0
    for size in (64, 256):
        for layers, _, instances, _, _ in _renders("text", size, options=options):
            assert len(instances) == len(_visible(layers))
            multiword += len(instances) > 1
            for inst in instances:
                p = inst.params
                assert " " not in p["text"] and "\n" not in p["text"]
                assert inst.box.height - 2 * p["stroke_px"] <= 1.5 * p["font_px"]
            same_line = [(a, b) for a, b in zip(instances, instances[1:]) if abs(a.box.y1 - b.box.y1) <= 2]
            # Left to right; at the 8 px minimum an italic word's stroke may reach into the space.
            assert all(a.box.x2 <= b.box.x1 + 2 * a.params["stroke_px"] + 1 for a, b in same_line)
    assert multiword > 10


def test_backed_text_is_one_box_with_all_its_lines() -> None:
    """A band or a sign plate is one object: one instance, whatever the number of lines on it."""
    lines = 0
    for style in ("subtitle", "sign"):
        options = {"styles": {style: 1.0}, "band_prob": 1.0}
        for _, _, instances, _, _ in _renders("text", 256, options=options):
            (inst,) = instances
            lines += inst.params["text"].count("\n")
    assert lines > 0


def test_scattered_words_never_touch() -> None:
    """Two words a few pixels apart read as one line; a later word keeps 0.3 of its font size away."""
    options = {"styles": {"words": 1.0}, "max_words": 6}
    pairs = 0
    for size in (64, 256, 512):
        for _, _, instances, _, _ in _renders("text", size, options=options):
            for i, a in enumerate(instances):
                for b in instances[i + 1:]:
                    pairs += 1
                    apart = max(a.box.x1 - b.box.x2, b.box.x1 - a.box.x2, a.box.y1 - b.box.y2, b.box.y1 - a.box.y2)
                    assert apart >= max(2, round(0.3 * b.params["font_px"]))
    assert pairs > 50


@pytest.mark.parametrize("concept", CONCEPT_NAMES)
def test_same_seed_same_pixels(concept: str) -> None:
    a, b = make_renderer(concept, {}, "train"), make_renderer(concept, {}, "train")
    for size in (64, 256):
        for seed in range(8):
            la = a.render(np.random.default_rng(seed), (size, size))
            lb = b.render(np.random.default_rng(seed), (size, size))
            assert [x.rgba.tobytes() for x in la] == [y.rgba.tobytes() for y in lb]
            assert [x.params for x in la] == [y.params for y in lb]


def test_asset_pools_are_disjoint() -> None:
    train, test = AssetPool.for_split("train"), AssetPool.for_split("test")
    for name in ("brand_words", "logo_seeds", "qr_payload_families", "text_words", "text_phrases"):
        a, b = getattr(train, name), getattr(test, name)
        assert a and b and not set(a) & set(b), name
    assert len(train.fonts) >= 2 and len(test.fonts) >= 2
    assert not {os.path.basename(f) for f in train.fonts} & {os.path.basename(f) for f in test.fonts}
    assert not {_font_family(f) for f in train.fonts} & {_font_family(f) for f in test.fonts}
    assert list(train.fonts) == sorted(train.fonts, key=os.path.basename)


def test_renderers_draw_only_their_splits_assets() -> None:
    for split in ("train", "test"):
        pool = AssetPool.for_split(split)
        fonts = {os.path.basename(f) for f in pool.fonts}
        for concept in CONCEPT_NAMES:
            for _, _, instances, _, _ in _renders(concept, 64, split=split):
                for inst in instances:
                    p = inst.params
                    assert p.get("font", next(iter(fonts))) in fonts
                    assert p.get("logo_seed", pool.logo_seeds[0]) in pool.logo_seeds
                    assert p.get("payload_family", pool.qr_payload_families[0]) in pool.qr_payload_families


def test_qrcodes_decode_at_512() -> None:
    """OpenCV reads >= 95% of the non-inverted codes drawn with at least 3 px per module (a decoder
    does not read inverted codes, nor a 1 px module grid), rotated and in perspective included."""
    cv2 = pytest.importorskip("cv2")
    detectors = [cv2.QRCodeDetector()]
    if hasattr(cv2, "QRCodeDetectorAruco"):
        detectors.append(cv2.QRCodeDetectorAruco())
    grey = Image.new("RGB", (512, 512), (128, 128, 128))
    checked = decoded = 0
    for split in ("train", "test"):
        renderer = make_renderer("qrcode", {}, split)
        for seed in range(60):
            layers = renderer.render(np.random.default_rng(seed), (512, 512))
            p = layers[0].params
            if p["style"] == "inverted" or p["side_px"] < 3 * p["modules"]:
                continue
            image, _, _ = composite(grey, layers, "qrcode")
            pixels = np.asarray(image.convert("L"))
            decoded += next((t for d in detectors if (t := d.detectAndDecode(pixels)[0])), "") == p["payload"]
            checked += 1
    assert checked >= 40 and decoded >= 0.95 * checked, (decoded, checked)


def test_qrcodes_are_what_an_encoder_makes() -> None:
    """Version: the smallest from the drawn minimum that holds the payload; mask: the encoder's own
    choice for that code; the minimum varies within the recipe's ``versions``."""
    import qrcode

    cfg = make_config("qrcode", {})
    minimums, grown = set(), 0
    for split in ("train", "test"):
        renderer = make_renderer("qrcode", {}, split)
        for seed in range(40):
            (layer,) = renderer.render(np.random.default_rng(seed), (64, 64))
            p = layer.params
            level = getattr(qrcode.constants, f"ERROR_CORRECT_{p['error_level']}")
            fit = qrcode.QRCode(error_correction=level)
            fit.add_data(p["payload"])
            fit.make(fit=True)
            assert p["version"] == max(p["min_version"], fit.version), p
            encoder = qrcode.QRCode(version=p["version"], error_correction=level, border=p["border"])
            encoder.add_data(p["payload"])
            assert p["mask_pattern"] == encoder.best_mask_pattern(), p
            assert p["modules"] == 4 * p["version"] + 17 + 2 * p["border"]
            minimums.add(p["min_version"])
            grown += p["version"] > p["min_version"]
    assert minimums == set(range(cfg.versions[0], cfg.versions[1] + 1)) and grown > 10


def test_qrcodes_come_small_and_large() -> None:
    """From a corner-of-a-poster code (about 5% of the image) to almost half of it, at 512 px."""
    renderer = make_renderer("qrcode", {}, "train")
    sides = [renderer.render(np.random.default_rng(seed), (512, 512))[0].params["side_px"] / 512 for seed in range(200)]
    assert min(sides) < 0.07 and max(sides) > 0.42
    assert 0.15 < np.mean(np.array(sides) < 0.15) < 0.4


@pytest.mark.parametrize("concept", CONCEPT_NAMES)
def test_mask_is_max_alpha_and_image_untouched_outside(concept: str) -> None:
    for layers, image, _, mask, background in _renders(concept, 64):
        alphas = np.stack([np.asarray(layer.rgba.getchannel("A")) for layer in layers])
        m = np.asarray(mask)
        assert mask.mode == "L" and np.array_equal(m, alphas.max(axis=0))
        untouched = m == 0
        assert np.array_equal(np.asarray(image)[untouched], np.asarray(background)[untouched])


def test_composite_drops_invisible_layers_and_rounds_params() -> None:
    image = Image.new("RGB", (16, 16), (50, 60, 70))
    blank = Layer(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), {"a": 1})
    dot = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    dot.putpixel((3, 5), (255, 0, 0, 255))
    out, instances, mask = composite(image, [blank, Layer(dot, {"x": np.float32(0.123456), "t": (1, 2)})], "text")
    assert len(instances) == 1 and instances[0].box.as_list() == [3, 5, 4, 6]
    assert instances[0].params == {"x": 0.1235, "t": [1, 2]}
    assert out.getpixel((3, 5)) == (255, 0, 0) and mask.getpixel((3, 5)) == 255


@pytest.mark.parametrize(
    "concept, options, field",
    [
        ("qrcode", {"scalee": [0.3, 0.4]}, "concepts.qrcode.scalee"),
        ("qrcode", {"scale": [0.5, 0.2]}, "concepts.qrcode.scale"),
        ("qrcode", {"error_levels": ["X"]}, "concepts.qrcode.error_levels"),
        ("watermark", {"layouts": {"diagonal": 1.0}}, "concepts.watermark.layouts"),
        ("watermark", {"opacity": [0.0, 0.5]}, "concepts.watermark.opacity"),
        ("text", {"min_font_px": 0}, "concepts.text.min_font_px"),
        ("text", {"styles": {"meme": -1}}, "concepts.text.styles"),
        ("text", {"font_scale": "big"}, "concepts.text.font_scale"),
    ],
)
def test_bad_options_name_the_field(concept: str, options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_renderer(concept, options, "train")


def test_registry_and_good_options() -> None:
    assert len({c.colour for c in CONCEPTS}) == len({c.word for c in CONCEPTS}) == len(CONCEPTS)
    assert all(isinstance(make_renderer(c.name, {}, "train"), c.renderer) for c in CONCEPTS)
    with pytest.raises(ValueError, match="unknown concept"):
        make_renderer("logo", {}, "train")
    with pytest.raises(ValueError, match="split"):
        make_renderer("text", {}, "validation")
    renderer = make_renderer("qrcode", {"scale": [0.2, 0.25], "error_levels": ["H"]}, "test")
    assert renderer.config.scale == (0.2, 0.25) and renderer.config.error_levels == ("H",)


def _word_layer(size: int, xy: tuple[int, int], word: str = "covered") -> Layer:
    """A black word, fully opaque, as a text renderer would draw it."""
    from PIL import ImageDraw

    from implicit_concept.concepts.assets import load_font

    rgba = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    font = load_font(AssetPool.for_split("train").fonts[0], 20)
    ImageDraw.Draw(rgba).text(xy, word, fill=(0, 0, 0, 255), font=font)
    return Layer(rgba, {"text": word})


def _qr_layer(size: int) -> tuple[Layer, list[int]]:
    """An upright QR code (opaque quiet zone and all) and its box."""
    options = {"rotation_prob": 0.0, "perspective_prob": 0.0, "scale": [0.5, 0.5]}
    (layer,) = make_renderer("qrcode", options, "train").render(np.random.default_rng(3), (size, size))
    return layer, list(layer.rgba.getchannel("A").getbbox())


def test_a_word_under_an_opaque_qr_code_is_dropped_and_a_half_covered_one_keeps_its_visible_half() -> None:
    size = 256
    qr, (qx1, qy1, qx2, qy2) = _qr_layer(size)
    assert np.asarray(qr.rgba.getchannel("A"))[qy1:qy2, qx1:qx2].min() == 255
    hidden = _word_layer(size, (qx1 + 10, qy1 + 20), "hidden")
    own = list(hidden.rgba.getchannel("A").getbbox())
    assert qx1 < own[0] and own[2] < qx2 and qy1 < own[1] and own[3] < qy2
    half = _word_layer(size, (qx1 - 40, qy2 - 40), "halfway")
    hx1, hy1, hx2, hy2 = half.rgba.getchannel("A").getbbox()
    assert hx1 < qx1 < hx2
    composition = Composition(Image.new("RGB", (size, size), (200, 180, 160)))
    composition.add([hidden, half], "text")
    composition.add([qr], "qrcode")

    text, code = composition.instances()
    assert (text.params["text"], code.concept) == ("halfway", "qrcode")
    alpha = np.asarray(half.rgba.getchannel("A"))
    ys, xs = np.nonzero(alpha[:, :qx1])
    assert text.box.as_list() == [hx1, ys.min(), qx1, ys.max() + 1]
    assert text.visible == round(alpha[:, :qx1].sum() / alpha.sum(), 4)
    assert 0.3 < text.visible < 0.7 and code.visible == 1.0 and code.box.as_list() == [qx1, qy1, qx2, qy2]
    assert [i.concept for i in composition.instances(min_visible=0.99)] == ["qrcode"]
    assert np.array_equal(np.asarray(composition.mask()), np.maximum.reduce(
        [np.asarray(layer.rgba.getchannel("A")) for layer in (hidden, half, qr)]))


def test_a_layer_showing_exactly_min_visible_of_its_alpha_is_kept() -> None:
    """``min_visible`` is "at least": a square half under a later opaque one shows exactly 0.5 of its
    alpha and is kept at 0.5, and a fully shown layer is kept at 1.0."""
    def square(x1, y1, x2, y2):
        rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
        rgba.paste((255, 255, 255, 255), (x1, y1, x2, y2))
        return Layer(rgba)

    composition = Composition(Image.new("RGB", (16, 16)))
    composition.add([square(0, 0, 4, 4)], "text")
    composition.add([square(2, 0, 6, 4)], "qrcode")
    assert [(i.concept, i.visible, i.box.as_list()) for i in composition.instances(min_visible=0.5)] == [
        ("text", 0.5, [0, 0, 2, 4]), ("qrcode", 1.0, [2, 0, 6, 4])]
    assert [i.concept for i in composition.instances(min_visible=1.0)] == ["qrcode"]


def test_what_shows_through_a_translucent_layer_is_still_visible() -> None:
    """Under a 50 % veil a word keeps about half its alpha, and its box; a 1/255 fringe does not."""
    size = 64
    word = _word_layer(size, (4, 10), "veil")
    word.rgba.putpixel((60, 60), (0, 0, 0, 1))
    veil = Layer(Image.new("RGBA", (size, size), (255, 255, 255, 128)))
    composition = Composition(Image.new("RGB", (size, size)))
    composition.add([word], "text")
    composition.add([veil], "watermark")
    text, _ = composition.instances()
    ys, xs = np.nonzero(np.asarray(word.rgba.getchannel("A")) >= 2)  # 1 * 127 / 255 rounds to 0
    assert text.box.as_list() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and xs.max() < 60
    assert text.visible == pytest.approx(127 / 255, abs=0.01)


def test_watermark_opacity_is_drawn_across_its_range_not_pinned_to_an_end() -> None:
    """Marks are 30-70 % opaque, drawn per mark: a renderer that always used one end would give the detector
    and the model only the easiest (or hardest) watermarks."""
    cfg = make_config("watermark", {})
    opacities = [inst.params["opacity"] for _, _, instances, _, _ in _renders("watermark", 64) for inst in instances]
    assert len(opacities) >= 20
    assert min(opacities) < cfg.opacity[0] + 0.1 and max(opacities) > cfg.opacity[1] - 0.1
    assert len(set(opacities)) >= 20  # one draw per mark (a tiled mark's copies share theirs)


def test_a_mark_that_changes_no_pixel_is_not_labelled_by_a_build() -> None:
    """Alpha is not sight: a white half-transparent mark over a white sky has all its alpha and
    changes no pixel. With ``min_seen`` (what a build asks) it is not labelled, while the same mark
    over the dark ground, or half over each, is; a QR code on white keeps its label (its dark
    modules show), and so does a white word whose black stroke vanishes into a black ground."""
    size = 64
    photo = np.full((size, size, 3), 250, np.uint8)
    photo[size // 2:] = 35

    def mark(x1, y1, x2, y2, colour=(255, 255, 255, 128)):
        rgba = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        rgba.paste(colour, (x1, y1, x2, y2))
        return Layer(rgba)

    composition = Composition(Image.fromarray(photo))
    composition.add([mark(4, 4, 20, 12), mark(4, 40, 20, 48), mark(30, 24, 46, 40)], "watermark")
    everything = composition.instances(0.3)
    assert [i.box.as_list() for i in everything] == [[4, 4, 20, 12], [4, 40, 20, 48], [30, 24, 46, 40]]
    assert [i.box.as_list() for i in composition.instances(0.3, MIN_SEEN)] == [[4, 40, 20, 48], [30, 24, 46, 40]]
    _, seen, _ = composite(Image.fromarray(photo), [mark(4, 4, 20, 12), mark(4, 40, 20, 48)], "watermark", 0.3, MIN_SEEN)
    assert [i.box.as_list() for i in seen] == [[4, 40, 20, 48]]

    qr, box = _qr_layer(size)
    on_white = Composition(Image.new("RGB", (size, size), (255, 255, 255)))
    on_white.add([qr], "qrcode")
    assert [i.box.as_list() for i in on_white.instances(0.3, MIN_SEEN)] == [box]

    word = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    word.paste((0, 0, 0, 255), (10, 10, 30, 20))  # the stroke
    word.paste((255, 255, 255, 255), (13, 13, 27, 17))  # the fill, a fifth of the alpha
    on_black = Composition(Image.new("RGB", (size, size)))
    on_black.add([Layer(word)], "text")
    assert [i.box.as_list() for i in on_black.instances(0.3, MIN_SEEN)] == [[10, 10, 30, 20]]


def test_what_a_mark_changed_is_passed_through_later_layers() -> None:
    """A light grey square on a white wall changes it by 20 levels and is seen; under a later 75 %
    white veil a quarter of its alpha still shows, but the veil leaves 5 of those 20 levels: the
    square no longer shows in the image and is not labelled, while the veil is."""
    size = 16
    square = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    square.paste((230, 230, 230, 255), (0, 0, 8, 8))
    veil = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    veil.paste((255, 255, 255, 191), (0, 0, 12, 12))
    composition = Composition(Image.new("RGB", (size, size), (250, 250, 250)))
    composition.add([Layer(square)], "text")
    assert [i.concept for i in composition.instances(0.0, MIN_SEEN)] == ["text"]
    composition.add([Layer(veil)], "watermark")
    under = np.asarray(composition.image, np.int16)
    assert abs(int(under[0, 0, 0]) - int(under[10, 10, 0])) <= 5
    assert [(i.concept, i.visible) for i in composition.instances(0.0)] == [("text", 0.251), ("watermark", 1.0)]
    assert [i.concept for i in composition.instances(0.0, MIN_SEEN)] == ["watermark"]
