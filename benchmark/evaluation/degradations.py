"""What generated images look like next to clean renders: blur, JPEG artefacts and pixel noise.

The scene-feature extractor trains on clean procedural renders; a diffusion model's samples are
softer and noisier. Training on mildly damaged renders as well keeps imperfect generated images
near the clean ones in feature space, so scene-FID and prompt following measure content rather
than texture.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from benchmark.evaluation.scene_features_errors import config_fields
from implicit_concept.validate import check_int_range, check_number


@dataclass(frozen=True)
class Degradation:
    """Mild damage applied to training images (each kind with its own probability), so imperfect
    generated images still land near the clean ones in feature space."""

    blur_p: float = 0.4
    #: Largest Gaussian blur radius, in pixels of a 64 px image (scaled with the image size).
    blur_max: float = 0.8
    noise_p: float = 0.4
    #: Largest per-pixel Gaussian noise standard deviation, in 8-bit levels.
    noise_max: float = 10.0
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (50, 95)

    def __post_init__(self) -> None:
        with config_fields():
            for name in ("blur_p", "noise_p", "jpeg_p"):
                check_number(name, getattr(self, name), 0, 1)
            check_number("blur_max", self.blur_max, 0, 3)
            check_number("noise_max", self.noise_max, 0, 40)
            check_int_range("jpeg_quality", self.jpeg_quality, 10, 100)
        object.__setattr__(self, "jpeg_quality", tuple(self.jpeg_quality))

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Blur, then JPEG, then noise, each drawn from ``rng``: the same rng state gives the same damage."""
        u = rng.random(6)
        if u[0] < self.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(float(u[1]) * self.blur_max * image.width / 64))
        if u[4] < self.jpeg_p:
            low, high = self.jpeg_quality
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=int(round(low + u[5] * (high - low))))
            buf.seek(0)
            image = Image.open(buf).convert("RGB")
        if u[2] < self.noise_p:
            noise = rng.normal(0.0, u[3] * self.noise_max, size=(image.height, image.width, 3))
            image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).round().astype(np.uint8))
        return image
