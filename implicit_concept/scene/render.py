"""Drawing a scene: background patterns and antialiased shapes, a pure function of (scene, size)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from implicit_concept.scene.grammar import Background, Scene, SceneObject

#: How far pattern shades move the background colour towards white or black.
_SHADE = 0.3
_SUPERSAMPLE = 4

def render_scene(scene: Scene, size: int) -> Image.Image:
    """Draw ``scene`` as an RGB ``size`` x ``size`` image; shapes are antialiased by 4x supersampling."""
    image = Image.fromarray(_background(scene.background, size))
    for obj in scene.objects:
        _draw_object(image, obj, size)
    return image


def _shade(rgb: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    """Move ``rgb`` towards white where ``t`` > 0 and towards black where ``t`` < 0."""
    base = np.asarray(rgb, dtype=np.float32)
    t = t[..., None].astype(np.float32)
    out = np.where(t > 0, base + t * (255 - base), base * (1 + t))
    return np.round(out).astype(np.uint8)


def _background(bg: Background, size: int) -> np.ndarray:
    if bg.kind == "flat":
        return np.broadcast_to(np.asarray(bg.rgb, dtype=np.uint8), (size, size, 3)).copy()
    if bg.kind == "gradient":
        u = (np.arange(size, dtype=np.float32) + 0.5) / size
        ramp = {
            "horizontal": u[None, :] + 0 * u[:, None],
            "vertical": u[:, None] + 0 * u[None, :],
            "diagonal": (u[None, :] + u[:, None]) / 2,
        }[bg.params["orientation"]]
        t = (2 * ramp - 1) * _SHADE
        return _shade(bg.rgb, -t if bg.params["flip"] else t)
    if bg.kind in ("stripes", "checker"):
        return _shade(bg.rgb, _pattern(bg, size) * _shade_sign(bg.rgb) * _SHADE)
    rng = np.random.default_rng(bg.params["seed"])
    if bg.kind == "noise":
        t = np.clip(rng.normal(0.0, 0.12, size=(size, size)), -_SHADE, _SHADE)
        return _shade(bg.rgb, t)
    t = _smooth_noise(rng, 5, size) + 0.5 * _smooth_noise(rng, 11, size)
    return _shade(bg.rgb, np.clip(t * 0.15, -_SHADE, _SHADE))


def _shade_sign(rgb: tuple[int, int, int]) -> float:
    """Patterns lighten dark colours and darken light ones, so both shades stay visible."""
    return 1.0 if sum(rgb) < 3 * 128 else -1.0


def _pattern(bg: Background, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the pattern's second shade, from a 4x supersampled mask."""
    hi = size * _SUPERSAMPLE
    u = ((np.arange(hi, dtype=np.float32) + 0.5) / hi / bg.params["period"]).astype(np.float32)
    cols, rows = u[None, :], u[:, None]
    orientation = bg.params["orientation"]
    if bg.kind == "stripes":
        phase = {"horizontal": rows + 0 * cols, "vertical": cols + 0 * rows, "diagonal": cols + rows}
        mask = (np.floor(2 * phase[orientation]) % 2).astype(np.uint8)
    elif orientation == "diagonal":
        mask = ((np.floor(cols + rows) + np.floor(cols - rows)) % 2).astype(np.uint8)
    else:
        mask = ((np.floor(cols) + np.floor(rows)) % 2).astype(np.uint8)
    small = Image.fromarray(mask * 255).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    grid = Image.fromarray(rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32))
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _draw_object(image: Image.Image, obj: SceneObject, size: int) -> None:
    """Draw the shape's coverage mask over its box only, at 4x, and paste its colour through it."""
    x0 = max(0, math.floor((obj.x - obj.radius) * size) - 1)
    y0 = max(0, math.floor((obj.y - obj.radius) * size) - 1)
    x1 = min(size, math.ceil((obj.x + obj.radius) * size) + 1)
    y1 = min(size, math.ceil((obj.y + obj.radius) * size) + 1)
    scale = size * _SUPERSAMPLE
    mask = Image.new("L", ((x1 - x0) * _SUPERSAMPLE, (y1 - y0) * _SUPERSAMPLE), 0)
    cx = obj.x * scale - x0 * _SUPERSAMPLE
    cy = obj.y * scale - y0 * _SUPERSAMPLE
    _draw_shape(ImageDraw.Draw(mask), obj.shape, cx, cy, obj.radius * scale)
    mask = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    image.paste(obj.rgb, (x0, y0, x1, y1), mask)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """Every shape fits the box of half side ``r`` around (cx, cy)."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = 0.55 * r
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif shape == "square":
        half = 0.85 * r
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=255)
    elif shape == "triangle":
        h = 0.866 * r
        draw.polygon([(cx, cy - h), (cx + r, cy + h), (cx - r, cy + h)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + 0.1 * r + radius * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=255)
    else:
        arm, half = 0.9 * r, 0.3 * r
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=255)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=255)
