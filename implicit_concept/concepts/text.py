"""Overlaid text: subtitles, meme captions, sign boxes and scattered words.

Every style keeps its text legible: a stroke, a backing band or box, or (scattered words over a
known background) a colour from the far side of the background's luminance. Text is never smaller
than ``min_font_px`` and always fits the canvas: a long phrase is wrapped, then shrunk, then
replaced by a shorter one.

What counts as one instance (one box) is fixed so a detector is never asked to guess: a word of free
text (in a stroked subtitle or meme line, or scattered) is one instance, as in SynthText and
ICDAR's word boxes; a backing band or sign plate is one instance with all the words on it.
Scattered words never touch each other, so two of them never read as one line. (Line-level boxes
were tried: the detector then split lines into words, since scattered words taught it words.)

At about 370 lines this module is over the house's 350: its four styles share the layout, masking
and placement helpers, and splitting them would spread one definition of a text instance over
several files.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from implicit_concept.concepts.assets import AssetPool, load_font
from implicit_concept.concepts.renderer import (
    RGB,
    Layer,
    Renderer,
    choose,
    luminance,
    paint,
    uniform,
)
from implicit_concept.sample import covering_box
from implicit_concept.validate import check_int, check_number, check_range, check_weights

_STYLES = ("subtitle", "meme", "sign", "words")
_LIGHT: tuple[RGB, ...] = ((255, 255, 255), (255, 255, 255), (255, 230, 40), (190, 240, 255), (255, 200, 225))
_DARK: tuple[RGB, ...] = ((0, 0, 0), (0, 0, 0), (150, 10, 10), (20, 30, 110), (0, 90, 35))
_SIGN: tuple[RGB, ...] = (
    (200, 20, 30), (20, 70, 160), (15, 120, 60), (250, 200, 20), (255, 255, 255), (20, 20, 20),
    (240, 120, 20), (120, 40, 140), (230, 230, 220),
)
_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))
_SHRINK = 0.85
_MIN_LUMA_GAP = 0.4
# A scattered word that finds no free spot in this many draws is left out (the first always fits).
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class TextConfig:
    """``font_scale``: font size as a fraction of the image height, clamped to at least
    ``min_font_px`` and to what fits the canvas. ``band_prob``: subtitles on a dark band rather
    than stroked; ``stroke_prob``: scattered words outlined (always, when no background is given)."""

    styles: dict[str, float] = field(
        default_factory=lambda: {"subtitle": 0.3, "meme": 0.25, "sign": 0.2, "words": 0.25}
    )
    font_scale: tuple[float, float] = (0.05, 0.14)
    min_font_px: int = 8
    max_words: int = 3
    rotation_prob: float = 0.3
    max_rotation: float = 12.0
    stroke_prob: float = 0.5
    band_prob: float = 0.4

    def __post_init__(self) -> None:
        check_weights("styles", self.styles, _STYLES)
        check_range("font_scale", self.font_scale)
        check_int("min_font_px", self.min_font_px, 1, 4096)
        check_int("max_words", self.max_words, 1, 20)
        check_number("rotation_prob", self.rotation_prob, 0, 1)
        check_number("max_rotation", self.max_rotation, 0, 90)
        check_number("stroke_prob", self.stroke_prob, 0, 1)
        check_number("band_prob", self.band_prob, 0, 1)


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_w: float) -> list[str] | None:
    """Greedy word wrap; None when a single word is wider than ``max_w``."""
    lines: list[str] = []
    for word in text.split():
        if font.getlength(word) > max_w:
            return None
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_w:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _luma(colour: RGB) -> float:
    r, g, b = colour
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255


def _stroke_px(px: int, ratio: float) -> int:
    return max(1, round(px * ratio)) if ratio else 0


def _layout(lines: list[str], font: ImageFont.FreeTypeFont, stroke: int) -> list[tuple[str, float, int]]:
    """(line, x, y) of each line of a centred block, as Pillow's multiline text lays them out."""
    pitch = font.getbbox("A", stroke_width=stroke)[3] + stroke + round(0.2 * font.size)
    widths = [font.getlength(line) for line in lines]
    return [(line, (max(widths) - w) / 2, i * pitch) for i, (line, w) in enumerate(zip(lines, widths))]


def _block_box(lines: list[str], font: ImageFont.FreeTypeFont, stroke: int) -> tuple[int, int, int, int]:
    boxes = [_MEASURE.textbbox((x, y), line, font=font, stroke_width=stroke) for line, x, y in _layout(lines, font, stroke)]
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    return tuple(covering_box(union).as_list())


def _words_of(layout: list[tuple[str, float, int]], font: ImageFont.FreeTypeFont) -> list[tuple[str, float, int]]:
    """(word, x, y) of each word of a laid-out block, where the whole line would draw it."""
    words = []
    for line, x, y in layout:
        start = 0
        for word in line.split(" "):
            if word:
                words.append((word, x + font.getlength(line[:start]), y))
            start += len(word) + 1
    return words


def _block_masks(
    lines: list[str], font_path: str, px: int, stroke: int, pad: int = 0, per_word: bool = False
) -> list[tuple[str, list[Image.Image]]]:
    """Coverage masks of a centred text block, [stroke (fill included), fill] or [fill], all the
    block's size, with the text they draw: the whole block, or (``per_word``) one entry per word."""
    font = load_font(font_path, px)
    left, top, right, bottom = _block_box(lines, font, stroke)
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    layout = _layout(lines, font, stroke)
    groups = [[word] for word in _words_of(layout, font)] if per_word else [layout]
    out = []
    for group in groups:
        masks = []
        for width in ([stroke, 0] if stroke else [0]):
            mask = Image.new("L", size, 0)
            draw = ImageDraw.Draw(mask)
            for text, x, y in group:
                draw.text((pad - left + x, pad - top + y), text, font=font, fill=255, stroke_width=width, stroke_fill=255)
            masks.append(mask)
        out.append(("\n".join(text for text, _, _ in group), masks))
    return out


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int) -> bool:
    return any(
        box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap for o in others
    )


class TextRenderer(Renderer):
    """One text overlay event per call: a subtitle, one or two meme captions, a sign, or words."""

    name = "text"
    config_type = TextConfig

    def __init__(self, config: TextConfig, assets: AssetPool) -> None:
        self.config = config
        self.assets = assets
        bold = tuple(f for f in assets.fonts if "bol" in os.path.basename(f).lower())
        self.bold_fonts = bold or assets.fonts

    def _font_px(self, rng: np.random.Generator, height: int) -> int:
        return max(self.config.min_font_px, round(uniform(rng, self.config.font_scale) * height))

    def _fit(
        self, text: str, font_path: str, px: int, box: tuple[float, float], max_lines: int, stroke_ratio: float
    ) -> tuple[int, list[str]] | None:
        """The largest size <= ``px`` (>= the minimum) at which ``text`` fits ``box`` in ``max_lines``."""
        while True:
            font, stroke = load_font(font_path, px), _stroke_px(px, stroke_ratio)
            lines = _wrap(text, font, box[0] - 2 * stroke)
            if lines and len(lines) <= max_lines:
                left, top, right, bottom = _block_box(lines, font, stroke)
                if right - left <= box[0] and bottom - top <= box[1]:
                    return px, lines
            if px <= self.config.min_font_px:
                return None
            px = max(self.config.min_font_px, int(px * _SHRINK))

    def _fitted(
        self, draw_text: Callable[[], str], font_path: str, px: int, box: tuple[float, float],
        canvas: tuple[float, float], max_lines: int, stroke_ratio: float,
    ) -> tuple[str, int, list[str]]:
        """Fit one of a few drawn texts in the style's ``box`` or, failing that, anywhere on the
        ``canvas``; at worst the shortest word, cut to fit."""
        texts = [draw_text() for _ in range(4)]
        for area in (box, canvas):
            for text in texts:
                if fit := self._fit(text, font_path, px, area, max_lines, stroke_ratio):
                    return text, *fit
        text = min(self.assets.text_words, key=lambda w: (len(w), w))
        while len(text) > 1 and not self._fit(text, font_path, px, canvas, 1, stroke_ratio):
            text = text[:-1]
        if fit := self._fit(text, font_path, px, canvas, 1, stroke_ratio):
            return text, *fit
        return text, self._squeeze(text, font_path, canvas, stroke_ratio), [text]

    def _squeeze(self, text: str, font_path: str, box: tuple[float, float], stroke_ratio: float) -> int:
        """Below the minimum only when one character at that size is larger than the canvas."""
        px = self.config.min_font_px
        while px > 1:
            left, top, right, bottom = _block_box([text], load_font(font_path, px), _stroke_px(px, stroke_ratio))
            if right - left <= box[0] and bottom - top <= box[1]:
                break
            px -= 1
        return px

    def _phrase(self, rng: np.random.Generator) -> str:
        return self.assets.text_phrases[int(rng.integers(len(self.assets.text_phrases)))]

    def _word(self, rng: np.random.Generator) -> str:
        word = self.assets.text_words[int(rng.integers(len(self.assets.text_words)))]
        return (word, word.upper(), word.capitalize())[int(rng.integers(3))]

    def _font(self, rng: np.random.Generator, fonts: tuple[str, ...]) -> str:
        return fonts[int(rng.integers(len(fonts)))]

    def _rotate(
        self, rng: np.random.Generator, masks: list[Image.Image], size: tuple[int, int]
    ) -> tuple[list[Image.Image], float]:
        """Rotate masks by a random small angle, unless that would no longer fit the canvas."""
        if rng.random() >= self.config.rotation_prob:
            return masks, 0.0
        angle = uniform(rng, (-self.config.max_rotation, self.config.max_rotation))
        rotated = [m.rotate(angle, Image.Resampling.BICUBIC, expand=True) for m in masks]
        bbox = rotated[0].getbbox()
        if bbox is None or bbox[2] - bbox[0] > size[0] or bbox[3] - bbox[1] > size[1]:
            return masks, 0.0
        return [m.crop(bbox) for m in rotated], angle

    def render(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None = None
    ) -> list[Layer]:
        """Subtitles, meme captions and signs carry their own contrast (stroke, band, plate);
        scattered words take theirs from ``background`` when it is given."""
        style = choose(rng, self.config.styles)
        layers = getattr(self, f"_{style}")(rng, size, background)
        return [layer.with_params({"style": style, **layer.params}) for layer in layers]

    def _subtitle(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None
    ) -> list[Layer]:
        W, H = size
        font = self._font(rng, self.assets.fonts)
        band = bool(rng.random() < self.config.band_prob)
        # A band's padding is budgeted in the fit exactly like a stroke of the same width.
        ratio = 0.3 if band else 0.09
        _, px, lines = self._fitted(
            lambda: self._phrase(rng), font, self._font_px(rng, H), (0.92 * W, 0.4 * H), size, 2, ratio
        )
        stroke = 0 if band else _stroke_px(px, ratio)
        groups = _block_masks(lines, font, px, stroke, _stroke_px(px, ratio) if band else 0, per_word=not band)
        fill = _LIGHT[int(rng.integers(3))]
        if band:
            alpha = round(255 * uniform(rng, (0.45, 0.75)))
            ((text, (glyphs,)),) = groups
            groups = [(text, [Image.new("L", glyphs.size, alpha), glyphs])]
        w, h = groups[0][1][0].size
        y = H - h - round(uniform(rng, (0.02, 0.08)) * H)
        xy = ((W - w) // 2, min(max(y, 0), H - h))
        return [
            Layer.placed(paint(list(zip(masks, [(0, 0, 0), fill]))), size, xy, {
                "text": text, "font": os.path.basename(font), "font_px": px, "fill": list(fill),
                "stroke_px": stroke, "band": band, "rotation": 0.0,
            })
            for text, masks in groups
        ]

    def _meme(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None
    ) -> list[Layer]:
        W, H = size
        font = self._font(rng, self.bold_fonts)
        where = choose(rng, {"top": 0.5, "bottom": 0.2, "both": 0.3})
        spots = ["top", "bottom"] if where == "both" else [where]
        px0 = self._font_px(rng, H)
        layers = []
        for spot in spots:
            _, px, lines = self._fitted(
                lambda: self._phrase(rng).upper(), font, px0, (0.96 * W, 0.45 * H),
                (W, H / len(spots)), 3 if len(spots) == 1 else 2, 0.1,
            )
            stroke = _stroke_px(px, 0.1)
            groups = _block_masks(lines, font, px, stroke, per_word=True)
            w, h = groups[0][1][0].size
            margin = round(uniform(rng, (0.01, 0.04)) * H)
            xy = ((W - w) // 2, margin if spot == "top" else max(H - h - margin, 0))
            layers += [
                Layer.placed(paint(list(zip(masks, [(0, 0, 0), (255, 255, 255)]))), size, xy, {
                    "text": word, "font": os.path.basename(font), "font_px": px, "fill": [255, 255, 255],
                    "stroke_px": stroke, "position": spot, "rotation": 0.0,
                })
                for word, masks in groups
            ]
        return layers

    def _sign(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None
    ) -> list[Layer]:
        W, H = size
        font = self._font(rng, self.assets.fonts)
        upper = bool(rng.random() < 0.5)

        def draw_text() -> str:
            text = self._word(rng) if rng.random() < 0.6 else self._phrase(rng)
            return text.upper() if upper else text

        px0 = self._font_px(rng, H)
        pad_ratio = uniform(rng, (0.25, 0.6))
        # The plate's padding is budgeted in the fit exactly like a stroke of the same width.
        _, px, lines = self._fitted(draw_text, font, px0, (0.85 * W, 0.6 * H), size, 2, pad_ratio)
        pad = max(1, round(pad_ratio * px))
        ((_, (text_mask,)),) = _block_masks(lines, font, px, 0, pad)
        plate = Image.new("L", text_mask.size, 0)
        radius = round(uniform(rng, (0, 0.5)) * pad)
        ImageDraw.Draw(plate).rounded_rectangle((0, 0, plate.width - 1, plate.height - 1), radius=radius, fill=255)
        (plate, text_mask), angle = self._rotate(rng, [plate, text_mask], size)
        w, h = plate.size
        xy = (int(rng.integers(0, max(W - w, 0) + 1)), int(rng.integers(0, max(H - h, 0) + 1)))
        lum = luminance(background, (*xy, xy[0] + w, xy[1] + h))
        signs = [c for c in _SIGN if lum is None or abs(_luma(c) - lum) > 0.25] or list(_SIGN)
        board = signs[int(rng.integers(len(signs)))]
        ink = (0, 0, 0) if _luma(board) > 0.55 else (255, 255, 255)
        return [Layer.placed(paint([(plate, board), (text_mask, ink)]), size, xy, {
            "text": "\n".join(lines), "font": os.path.basename(font), "font_px": px, "fill": list(ink),
            "board": list(board), "stroke_px": 0, "rotation": angle,
        })]

    def _words(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None
    ) -> list[Layer]:
        W, H = size
        layers: list[Layer] = []
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, self.config.max_words + 1))):
            font = self._font(rng, self.assets.fonts)
            stroke_wanted = background is None or rng.random() < self.config.stroke_prob
            ratio = uniform(rng, (0.05, 0.1)) if stroke_wanted else 0.0
            text, px, lines = self._fitted(
                lambda: self._word(rng), font, self._font_px(rng, H), (0.9 * W, 0.5 * H), size, 1, ratio
            )
            stroke = _stroke_px(px, ratio)
            ((_, masks),) = _block_masks(lines, font, px, stroke)
            masks, angle = self._rotate(rng, masks, size)
            w, h = masks[0].size
            gap = max(2, round(0.3 * px))
            for _ in range(_PLACEMENT_TRIES):
                xy = (int(rng.integers(0, max(W - w, 0) + 1)), int(rng.integers(0, max(H - h, 0) + 1)))
                if not _overlaps((*xy, xy[0] + w, xy[1] + h), placed, gap):
                    break
            else:
                continue
            placed.append((*xy, xy[0] + w, xy[1] + h))
            lum = luminance(background, (*xy, xy[0] + w, xy[1] + h))
            if lum is None:
                inks = _LIGHT if rng.random() < 0.5 else _DARK
            else:
                inks = tuple(c for c in _LIGHT + _DARK if abs(_luma(c) - lum) >= _MIN_LUMA_GAP)
            fill = inks[int(rng.integers(len(inks)))]
            colours = ([(0, 0, 0) if _luma(fill) > 0.5 else (255, 255, 255)] if stroke else []) + [fill]
            layers.append(Layer.placed(paint(list(zip(masks, colours))), size, xy, {
                "text": text, "font": os.path.basename(font), "font_px": px, "fill": list(fill),
                "stroke_px": stroke, "rotation": angle,
            }))
        return layers
