"""The scene-feature CNN and the one way images enter it.

Kept apart from training and caching so that both build the same layers and feed the same
normalised batches: a conv trunk down to a 4x4 map, a linear layer whose output is the scene-FID
feature, and one classification head per scene attribute.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from benchmark.evaluation.scene_features_errors import SceneFeaturesError


class SceneNet(nn.Module):
    """Conv stages halve the side down to 4 px; the 4x4 map is flattened, not pooled, because the
    arrangement and the reading order of objects are spatial."""

    def __init__(self, image_size: int, feature_dim: int, head_sizes: Mapping[str, int]) -> None:
        super().__init__()
        stages = int(math.log2(image_size // 4))
        widths = (16, 32, 64, 128)[-stages:]
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if c_out == widths[-1]:
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(widths[-1] * 16, feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in head_sizes.items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer before its ReLU: no dead, constant dimensions in FID's covariance."""
        return self.embed(self.trunk(x).flatten(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = F.relu(self.features(x))
        return {name: head(h) for name, head in self.heads.items()}


def to_batch(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """RGB uint8 (or float in [0, 1]) images -> normalised NCHW float tensor at ``size`` px."""
    arrays = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            a = image
            if a.dtype != np.uint8:
                if not np.issubdtype(a.dtype, np.floating) or a.size and (a.min() < 0 or a.max() > 1):
                    raise SceneFeaturesError(f"image {i}: arrays must be uint8 or float in [0, 1], got {a.dtype}")
                a = (a * 255).round().astype(np.uint8)
            if a.ndim != 3 or a.shape[2] != 3:
                raise SceneFeaturesError(f"image {i}: want an HxWx3 RGB array, got shape {a.shape}")
            image = Image.fromarray(a)
        elif not isinstance(image, Image.Image):
            raise SceneFeaturesError(f"image {i}: want a PIL image or a numpy array, got {type(image).__name__}")
        image = image.convert("RGB")
        if image.size != (size, size):
            # Box filtering when shrinking matches how the renderer antialiases its 4x supersampling.
            shrink = image.width > size and image.height > size
            image = image.resize((size, size), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image))
    if not arrays:
        raise SceneFeaturesError("no images")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.25
