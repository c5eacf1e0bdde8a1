"""QR codes as they show up in scraped images: posters, flyers, product shots, screenshots.

Real encodings, as an encoder makes them (so a decoder reads them back, and they look like the
codes a model would learn from): the encoder picks the version that holds the payload and the mask
pattern of lowest penalty. Mostly dark on light with some coloured or inverted, from a corner-of-a-
poster size to a large share of the image, with a quiet zone of varying width, sometimes rotated or
seen in slight perspective.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import qrcode
from PIL import Image

from implicit_concept.concepts.assets import AssetPool
from implicit_concept.concepts.qr_mask import best_mask_pattern
from implicit_concept.concepts.renderer import (
    RGB,
    Layer,
    Renderer,
    paint,
    uniform,
)
from implicit_concept.validate import check_int, check_int_range, check_number, check_range, is_names

_EC_LEVELS = {
    "L": qrcode.constants.ERROR_CORRECT_L,
    "M": qrcode.constants.ERROR_CORRECT_M,
    "Q": qrcode.constants.ERROR_CORRECT_Q,
    "H": qrcode.constants.ERROR_CORRECT_H,
}


@dataclass(frozen=True)
class QRCodeConfig:
    """``scale``: side of the code, quiet zone included, as a fraction of the image's shorter side,
    from about 5% (a code in a corner of a poster) up; no code is smaller than ``min_px``, since on
    a small image 5% is a speck no one reads as a code. ``versions``: the smallest version is drawn
    from it, for variety; the encoder then takes the smallest version from there that holds the
    payload, as encoders do (a code far larger than its payload is mostly padding, which looks
    striped). ``border`` is the quiet zone in modules; ``max_perspective`` the largest corner shift
    as a fraction of the side."""

    scale: tuple[float, float] = (0.05, 0.45)
    min_px: int = 8
    versions: tuple[int, int] = (1, 4)
    error_levels: tuple[str, ...] = ("L", "M", "Q", "H")
    border: tuple[int, int] = (1, 4)
    colour_prob: float = 0.2
    inverted_prob: float = 0.1
    rotation_prob: float = 0.5
    max_rotation: float = 10.0
    perspective_prob: float = 0.25
    max_perspective: float = 0.08

    def __post_init__(self) -> None:
        check_range("scale", self.scale)
        check_int("min_px", self.min_px, 1, 4096)
        check_int_range("versions", self.versions, 1, 40)
        if not (is_names(self.error_levels) and self.error_levels and set(self.error_levels) <= set(_EC_LEVELS)):
            raise ValueError(
                f"error_levels: expected a non-empty subset of {list(_EC_LEVELS)}, got {self.error_levels!r}"
            )
        check_int_range("border", self.border, 0, 10)
        check_number("colour_prob", self.colour_prob, 0, 1)
        check_number("inverted_prob", self.inverted_prob, 0, 1 - self.colour_prob)
        check_number("rotation_prob", self.rotation_prob, 0, 1)
        check_number("max_rotation", self.max_rotation, 0, 180)
        check_number("perspective_prob", self.perspective_prob, 0, 1)
        check_number("max_perspective", self.max_perspective, 0, 0.3)


def _perspective_coeffs(corners: list[tuple[float, float]], side: int) -> tuple[float, ...]:
    """PIL PERSPECTIVE data mapping the quad ``corners`` (TL, TR, BR, BL) back onto a ``side``
    square: Heckbert's closed form, in plain floats so every machine gets the same numbers."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = corners
    dx1, dx2, dx3 = x1 - x2, x3 - x2, x0 - x1 + x2 - x3
    dy1, dy2, dy3 = y1 - y2, y3 - y2, y0 - y1 + y2 - y3
    den = dx1 * dy2 - dx2 * dy1
    g = (dx3 * dy2 - dx2 * dy3) / den
    h = (dx1 * dy3 - dx3 * dy1) / den
    a, b, c = x1 - x0 + g * x1, x3 - x0 + h * x3, x0
    d, e, f = y1 - y0 + g * y1, y3 - y0 + h * y3, y0
    # Inverse of [[a b c] [d e f] [g h 1]] by adjugate, then scaled from the unit square to pixels.
    inv = [
        e - f * h, c * h - b, b * f - c * e,
        f * g - d, a - c * g, c * d - a * f,
        d * h - e * g, b * g - a * h, a * e - b * d,
    ]
    inv = [v * side for v in inv[:6]] + inv[6:]
    return tuple(v / inv[8] for v in inv[:8])


def _warp(masks: list[Image.Image], corners: list[tuple[float, float]]) -> list[Image.Image]:
    """Warp square masks so their corners land on ``corners``, cropped to the quad's bounds."""
    x0 = math.floor(min(x for x, _ in corners))
    y0 = math.floor(min(y for _, y in corners))
    shifted = [(x - x0, y - y0) for x, y in corners]
    size = (math.ceil(max(x for x, _ in shifted)), math.ceil(max(y for _, y in shifted)))
    coeffs = _perspective_coeffs(shifted, masks[0].size[0])
    return [m.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC, fillcolor=0)
            for m in masks]


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


class QRCodeRenderer(Renderer):
    """One QR code per call."""

    name = "qrcode"
    config_type = QRCodeConfig

    def __init__(self, config: QRCodeConfig, assets: AssetPool) -> None:
        self.config = config
        self.assets = assets

    def _colours(self, rng: np.random.Generator) -> tuple[str, RGB, RGB]:
        """(style, module colour, background colour)."""
        cfg, u = self.config, rng.random()
        if u < cfg.inverted_prob:
            return "inverted", _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.9, 1)), \
                _hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0, 0.3))
        if u < cfg.inverted_prob + cfg.colour_prob:
            return "coloured", _hsv(rng.random(), rng.uniform(0.5, 1), rng.uniform(0.15, 0.45)), \
                _hsv(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.9, 1))
        grey = int(rng.integers(0, 40))
        return "plain", (grey, grey, grey), (255, 255, 255)

    def render(
        self, rng: np.random.Generator, size: tuple[int, int], background: Image.Image | None = None
    ) -> list[Layer]:
        """``background`` is unused: the code brings its own quiet zone, which is its contrast.

        The mask pattern is the encoder's choice (the lowest penalty of the eight, ISO 18004's
        rule): a drawn one is valid but gives patterns (stripes over padding) encoders never emit.
        """
        cfg = self.config
        family, payload = self.assets.qr_payload(rng)
        level = cfg.error_levels[int(rng.integers(len(cfg.error_levels)))]
        min_version = int(rng.integers(cfg.versions[0], cfg.versions[1] + 1))
        qr = qrcode.QRCode(
            version=min_version,
            error_correction=_EC_LEVELS[level],
            border=int(rng.integers(cfg.border[0], cfg.border[1] + 1)),
        )
        qr.add_data(payload)
        qr.best_fit(start=min_version)
        qr.mask_pattern = best_mask_pattern(qr)
        qr.make(fit=False)
        modules = np.array(qr.get_matrix(), dtype=np.uint8)
        n = modules.shape[0]
        lo, hi = (max(float(cfg.min_px), bound * min(size)) for bound in cfg.scale)
        side = round(uniform(rng, (lo, hi)))
        pitch = -(-side // n)
        dark = Image.fromarray(np.kron(modules, np.full((pitch, pitch), 255, np.uint8)), "L")
        if dark.size[0] != side:
            dark = dark.resize((side, side), Image.Resampling.BOX)
        masks = [Image.new("L", (side, side), 255), dark]

        style, ink, paper = self._colours(rng)
        angle = uniform(rng, (-cfg.max_rotation, cfg.max_rotation)) if rng.random() < cfg.rotation_prob else 0.0
        perspective = uniform(rng, (0, cfg.max_perspective)) if rng.random() < cfg.perspective_prob else 0.0
        if angle or perspective:
            cos, sin, half = math.cos(math.radians(angle)), math.sin(math.radians(angle)), side / 2
            jitter = rng.uniform(-perspective, perspective, size=(4, 2)) * side
            corners = [
                (half + cos * (x - half) + sin * (y - half) + jx, half - sin * (x - half) + cos * (y - half) + jy)
                for (x, y), (jx, jy) in zip([(0, 0), (side, 0), (side, side), (0, side)], jitter.tolist())
            ]
            masks = _warp(masks, corners)
        patch = paint([(masks[0], paper), (masks[1], ink)])
        w, h = patch.size
        xy = (int(rng.integers(0, max(size[0] - w, 0) + 1)), int(rng.integers(0, max(size[1] - h, 0) + 1)))
        params = {
            "payload_family": family, "payload": payload, "min_version": min_version, "version": qr.version,
            "error_level": level,
            "border": qr.border, "mask_pattern": qr.mask_pattern, "modules": n, "side_px": side, "style": style,
            "ink": list(ink), "paper": list(paper), "rotation": angle, "perspective": perspective,
        }
        return [Layer.placed(patch, size, xy, params)]
