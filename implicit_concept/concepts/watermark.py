"""Stock-photo watermarks: semi-transparent brand text or procedural logos, single or tiled.

A mark is a coverage mask (text, or a shape plus text grown from a logo seed), optionally with a
stroke (the mask dilated) and a drop shadow (the mask shifted), rotated as one, then painted in a
mostly white or grey tone at 30-70 % opacity. A tiled watermark repeats one mark on a staggered
grid and returns every tile as its own layer, so each gets its own box.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageOps

from implicit_concept.concepts.assets import AssetPool, load_font
from implicit_concept.concepts.renderer import (
    Layer,
    Renderer,
    choose,
    luminance,
    paint,
    uniform,
)
from implicit_concept.validate import check_int, check_number, check_range, check_weights

_LAYOUTS = ("center", "corner", "tiled")
_CORNERS = {"bottom_right": 0.4, "bottom_left": 0.2, "top_right": 0.2, "top_left": 0.2}
_TEMPLATES = (
    "{B}", "{B}", "{U}", "\u00a9 {B}", "\u00a9{B}", "\u00a9 {year} {B}", "{b}.example.com",
    "www.{b}.example.com", "{b}.test", "{B} Stock", "{B} Images", "{B}.example",
)
_SHAPES = ("circle", "ring", "rounded", "square_outline", "hexagon", "diamond", "triangle")
_FILLED = {"circle", "rounded", "hexagon", "diamond", "triangle"}
_TONES = {255: 0.6, 215: 0.15, 150: 0.1, 30: 0.15}
_REF_PX = 64
_MIN_EFFECT_PX = 9
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class WatermarkConfig:
    """Sizes are the unrotated mark's width as a fraction of the image width, per layout; no mark
    is narrower than ``min_px``. ``tile_gap`` is the space between tiles as a fraction of a tile;
    a tile is kept when at least ``tile_min_visible`` of its rectangle lies on the canvas."""

    layouts: dict[str, float] = field(default_factory=lambda: {"center": 0.4, "corner": 0.25, "tiled": 0.35})
    logo_prob: float = 0.35
    opacity: tuple[float, float] = (0.3, 0.7)
    scale: tuple[float, float] = (0.35, 0.8)
    corner_scale: tuple[float, float] = (0.15, 0.35)
    tile_scale: tuple[float, float] = (0.18, 0.35)
    tile_gap: tuple[float, float] = (0.4, 1.2)
    tile_angle: tuple[float, float] = (15.0, 45.0)
    tile_min_visible: float = 0.5
    max_rotation: float = 30.0
    stroke_prob: float = 0.25
    shadow_prob: float = 0.2
    min_px: int = 12
    #: Text marks never use a smaller font: on small images a long mark would otherwise shrink to a
    #: 1-2 px smear no detector (or viewer) reads as a watermark. Long texts fall back to the brand.
    min_font_px: int = 5

    def __post_init__(self) -> None:
        check_weights("layouts", self.layouts, _LAYOUTS)
        check_number("logo_prob", self.logo_prob, 0, 1)
        check_range("opacity", self.opacity)
        check_range("scale", self.scale)
        check_range("corner_scale", self.corner_scale)
        check_range("tile_scale", self.tile_scale)
        check_range("tile_gap", self.tile_gap, 0, 10, open_lo=False)
        check_range("tile_angle", self.tile_angle, 0, 90, open_lo=False)
        check_number("tile_min_visible", self.tile_min_visible, 0.01, 1)
        check_number("max_rotation", self.max_rotation, 0, 90)
        check_number("stroke_prob", self.stroke_prob, 0, 1)
        check_number("shadow_prob", self.shadow_prob, 0, 1)
        check_int("min_px", self.min_px, 1, 4096)
        check_int("min_font_px", self.min_font_px, 1, 4096)


def _text_mask(text: str, font_path: str, px: int) -> Image.Image:
    font = load_font(font_path, px)
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font)
    return mask


def _max_filter(mask: Image.Image, side: int) -> Image.Image:
    """Pillow's ``MaxFilter(side)`` (the maximum over a square, edges replicated), the same pixels
    from OpenCV's dilation in a fraction of the time."""
    kernel = np.ones((side, side), np.uint8)
    return Image.fromarray(cv2.dilate(np.asarray(mask), kernel, borderType=cv2.BORDER_REPLICATE))


def _px_for_width(text: str, font_path: str, width: float) -> int:
    """Font size whose rendering of ``text`` is about ``width`` pixels wide."""
    return max(1, round(_REF_PX * width / max(load_font(font_path, _REF_PX).getlength(text), 1.0)))


def _icon(shape: str, letter: str | None, font_path: str, u: int, angle: float) -> Image.Image:
    """A ``u``-pixel logo icon, drawn supersampled so its edges are antialiased at any size."""
    s = u * _SUPERSAMPLE
    big = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(big)
    box, c, r = (0, 0, s - 1, s - 1), s / 2, s / 2 - 1
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, outline=255, width=max(1, s // 9))
    elif shape == "rounded":
        draw.rounded_rectangle(box, radius=s // 4, fill=255)
    elif shape == "square_outline":
        draw.rectangle(box, outline=255, width=max(1, s // 10))
    elif shape == "hexagon":
        draw.regular_polygon((c, c, r), 6, rotation=angle, fill=255)
    elif shape == "diamond":
        draw.polygon([(c, 0), (s - 1, c), (c, s - 1), (0, c)], fill=255)
    else:
        draw.regular_polygon((c, c * 1.15, r), 3, rotation=angle, fill=255)
    if letter:
        font = load_font(font_path, round(s * (0.45 if shape in ("triangle", "diamond") else 0.6)))
        draw.text((c, c * (1.15 if shape == "triangle" else 1.0)), letter, anchor="mm", font=font,
                  fill=0 if shape in _FILLED else 255)
    return big.resize((u, u), Image.Resampling.BOX)


class WatermarkRenderer(Renderer):
    """One watermarking event per call: a single mark (centre or corner) or a tiled grid."""

    name = "watermark"
    config_type = WatermarkConfig

    def __init__(self, config: WatermarkConfig, assets: AssetPool) -> None:
        self.config = config
        self.assets = assets

    def _text_mark(self, rng: np.random.Generator, width: float) -> tuple[Image.Image, dict]:
        pool = self.assets
        brand = pool.brand_words[int(rng.integers(len(pool.brand_words)))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        text = template.format(B=brand, b=brand.lower(), U=brand.upper(), year=int(rng.integers(2005, 2025)))
        font = pool.fonts[int(rng.integers(len(pool.fonts)))]
        px = _px_for_width(text, font, width)
        if px < self.config.min_font_px:
            text = brand
            px = max(_px_for_width(text, font, width), self.config.min_font_px)
        return _text_mask(text, font, px), {
            "kind": "text", "text": text, "font": os.path.basename(font), "font_px": px,
        }

    def _logo_mark(self, rng: np.random.Generator, width: float) -> tuple[Image.Image, dict]:
        """A logo fully determined by its seed: shape, arrangement, font, brand word and case."""
        pool = self.assets
        seed = pool.logo_seeds[int(rng.integers(len(pool.logo_seeds)))]
        lr = np.random.default_rng(seed)
        shape = _SHAPES[int(lr.integers(len(_SHAPES)))]
        arrangement = ("left", "top", "icon")[int(lr.choice(3, p=[0.5, 0.35, 0.15]))]
        font = pool.fonts[int(lr.integers(len(pool.fonts)))]
        brand = pool.brand_words[int(lr.integers(len(pool.brand_words)))]
        if lr.random() < 0.35:
            brand = brand.upper()
        letter = brand[0].upper() if shape not in _FILLED or lr.random() < 0.6 else None
        angle = float(lr.uniform(0, 60))
        k = load_font(font, _REF_PX).getlength(brand) / _REF_PX
        rel = {"left": 0.55, "top": 0.32, "icon": 0.0}[arrangement]
        u = max(2, round(width / ((1.25 + rel * k) if arrangement == "left" else max(1.0, rel * k))))
        icon = _icon(shape, letter, font, u, angle)
        params = {"kind": "logo", "logo_seed": int(seed), "brand": brand, "shape": shape,
                  "arrangement": arrangement, "font": os.path.basename(font)}
        if arrangement == "icon":
            return icon, {**params, "font_px": round(0.6 * u) if letter else 0}
        px = max(1, round(rel * u))
        word = _text_mask(brand, font, px)
        if arrangement == "left":
            gap = max(1, round(0.25 * u))
            w, h = u + gap + word.width, max(u, word.height)
            icon_xy, word_xy = (0, (h - u) // 2), (u + gap, (h - word.height) // 2)
        else:
            gap = max(1, round(0.12 * u))
            w, h = max(u, word.width), u + gap + word.height
            icon_xy, word_xy = ((w - u) // 2, 0), ((w - word.width) // 2, u + gap)
        mask = Image.new("L", (w, h), 0)
        mask.paste(icon, icon_xy)
        mask.paste(word, word_xy, word)
        return mask, {**params, "font_px": px}

    def _mark(
        self, rng: np.random.Generator, width: float, angle: float, logo: bool, stroke: bool, shadow: bool
    ) -> tuple[list[Image.Image], dict]:
        """Masks (shadow, stroke, fill; absent ones omitted) of one mark, rotated by ``angle``.
        Strokes and shadows scale with the lettering and are left off lettering too small to carry
        them, where they would only smear it."""
        fill, params = (self._logo_mark if logo else self._text_mark)(rng, width)
        px = params["font_px"]
        stroke = max(1, round(px / 14)) if stroke and px >= _MIN_EFFECT_PX else 0
        shadow = max(1, round(px / 12)) if shadow and px >= _MIN_EFFECT_PX else 0
        params = {**params, "stroke_px": stroke, "shadow_px": shadow}
        fill = ImageOps.expand(fill, stroke + shadow + 1, 0)
        masks = []
        if shadow:
            shifted = Image.new("L", fill.size, 0)
            shifted.paste(fill.point(lambda a: a * 6 // 10), (shadow, shadow))
            masks.append(shifted)
        if stroke:
            masks.append(_max_filter(fill, 2 * stroke + 1))
        masks.append(fill)
        if angle:
            masks = [m.rotate(angle, Image.Resampling.BICUBIC, expand=True) for m in masks]
        boxes = [b for b in (m.getbbox() for m in masks) if b]
        if not boxes:
            return masks, params
        bbox = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                max(b[2] for b in boxes), max(b[3] for b in boxes))
        return [m.crop(bbox) for m in masks], params

    def _tone(self, rng: np.random.Generator, lum: float | None) -> int:
        """A grey level, pushed to the far end of the scale when it would vanish into the background."""
        tone = choose(rng, _TONES)
        if lum is not None and abs(tone / 255 - lum) < 0.3:
            tone = 30 if lum > 0.5 else 255
        return tone

    def render(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None = None
    ) -> list[Layer]:
        cfg = self.config
        W, H = size
        layout = choose(rng, cfg.layouts)
        logo = bool(rng.random() < cfg.logo_prob)
        opacity = uniform(rng, cfg.opacity)
        scale = {"center": cfg.scale, "corner": cfg.corner_scale, "tiled": cfg.tile_scale}[layout]
        width = min(max(uniform(rng, scale) * W, cfg.min_px), W)
        if layout == "tiled":
            angle = uniform(rng, cfg.tile_angle) * (1 if rng.random() < 0.7 else -1)
        elif layout == "center" and rng.random() < 0.6:
            angle = uniform(rng, (-cfg.max_rotation, cfg.max_rotation))
        else:
            angle = 0.0
        stroke = bool(rng.random() < cfg.stroke_prob)
        shadow = bool(rng.random() < cfg.shadow_prob)
        mark_seed = int(rng.integers(2**63))
        masks, params = self._mark(np.random.default_rng(mark_seed), width, angle, logo, stroke, shadow)
        pw, ph = masks[0].size
        if pw > W or ph > H:
            width *= min(W / pw, H / ph) * 0.95
            masks, params = self._mark(np.random.default_rng(mark_seed), width, angle, logo, stroke, shadow)
            pw, ph = masks[0].size

        if layout == "tiled":
            spots = self._tile_spots(rng, (pw, ph), size)
            region = None
        else:
            spots = [self._single_spot(rng, layout, (pw, ph), size)]
            region = (*spots[0][0], spots[0][0][0] + pw, spots[0][0][1] + ph)
        tone = self._tone(rng, luminance(background, region))
        edge = 30 if tone > 128 else 235
        colours = [(edge,) * 3] * (len(masks) - 1) + [(tone,) * 3]
        patch = paint(list(zip(masks, colours)), opacity)
        base = {
            "layout": layout, **params, "width_px": round(width), "width_frac": width / W,
            "tone": tone, "opacity": opacity, "rotation": angle,
        }
        return [Layer.placed(patch, size, xy, {**base, **extra}) for xy, extra in spots]

    def _single_spot(
        self, rng: np.random.Generator, layout: str, patch: tuple[int, int], size: tuple[int, int]
    ) -> tuple[tuple[int, int], dict]:
        (pw, ph), (W, H) = patch, size
        if layout == "center":
            x = (W - pw) / 2 + uniform(rng, (-0.05, 0.05)) * W
            y = (H - ph) / 2 + uniform(rng, (-0.05, 0.05)) * H
            extra = {}
        else:
            corner = choose(rng, _CORNERS)
            margin = uniform(rng, (0.02, 0.06)) * min(W, H)
            x = W - pw - margin if corner.endswith("right") else margin
            y = H - ph - margin if corner.startswith("bottom") else margin
            extra = {"corner": corner}
        return (min(max(round(x), 0), max(W - pw, 0)), min(max(round(y), 0), max(H - ph, 0))), extra

    def _tile_spots(
        self, rng: np.random.Generator, patch: tuple[int, int], size: tuple[int, int]
    ) -> list[tuple[tuple[int, int], dict]]:
        """A staggered grid of tiles covering the canvas, less those mostly off it (but at least
        the most visible one, on a canvas too small for any tile to be mostly on it)."""
        (pw, ph), (W, H) = patch, size
        step_x = pw * (1 + uniform(rng, self.config.tile_gap))
        step_y = ph * (1 + uniform(rng, self.config.tile_gap))
        stagger = step_x / 2 if rng.random() < 0.7 else 0.0
        ox, oy = uniform(rng, (-step_x, 0)), uniform(rng, (-step_y, 0))
        candidates = []
        for row in range(math.ceil((H - oy) / step_y) + 1):
            for col in range(-1, math.ceil((W - ox) / step_x) + 1):
                x = round(ox + col * step_x + (row % 2) * stagger)
                y = round(oy + row * step_y)
                seen = max(min(x + pw, W) - max(x, 0), 0) * max(min(y + ph, H) - max(y, 0), 0)
                candidates.append((seen / (pw * ph), ((x, y), {"tile": [row, col]})))
        spots = [spot for seen, spot in candidates if seen >= self.config.tile_min_visible]
        return spots or [max(candidates, key=lambda c: c[0])[1]]
