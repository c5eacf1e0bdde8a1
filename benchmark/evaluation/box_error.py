"""Denoising error inside and outside the concept's boxes: what a fine-tune learned where the concept is.

ICR needs a model good enough to draw the concept; this needs none. On held-out contaminated images
the plain fine-tune has learned to reproduce the concept's pixels, while Geom-Erasing learned less
there (down-weighted loss, the concept explained by its tokens) and the oracle never saw them, so
their error against the contaminated image is higher inside the boxes and about the same outside.
That is a known answer a short CPU fine-tune can check (``tests/test_known_answer.py``).

The error is the quantity training optimises: the squared error of the model's prediction against
its scheduler's target (noise, clean latents or velocity), per latent cell, unweighted. Each image is
conditioned on its clean caption (no concept word, no location tokens: how a user prompts) and
noised at fixed timesteps with seeded noise that depends only on (seed, sample key), so every model
compared sees the same inputs and differences between them are the models'. Cells count as inside
when their footprint overlaps a box, the rasterisation Geom-Erasing's weights use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
from diffusers import DDPMScheduler

from benchmark.models.clip_tokenizer import token_ids
from benchmark.training.data import prediction_target, square_view
from implicit_concept.geom_erasing.loss_weights import region_mask
from implicit_concept.geom_erasing.training_target import sample_rng
from implicit_concept.sample import Sample
from implicit_concept.stats import Interval, bootstrap_ratio


@dataclass(frozen=True)
class RegionErrors:
    """Per image (in ``keys`` order): the mean error over the latent cells inside its boxes, and outside
    (NaN where the boxes cover the whole image)."""

    keys: tuple[str, ...]
    inside: np.ndarray
    outside: np.ndarray

    def means(self) -> dict[str, float]:
        return {"inside": float(self.inside.mean()), "outside": float(np.nanmean(self.outside)), "images": len(self.keys)}


@dataclass(frozen=True)
class PairedRatios:
    """A model's error over a reference's, inside and outside the boxes, on the same images and noise."""

    inside: Interval
    outside: Interval

    def to_json(self) -> dict[str, Any]:
        return {"inside": self.inside.to_json(), "outside": self.outside.to_json()}


def fixed_timesteps(count: int, total: int) -> list[int]:
    """``count`` timesteps at the middles of equal slices of [0, total): the noise levels training draws from."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return [int((i + 0.5) * total / count) for i in range(count)]


@torch.no_grad()
def region_errors(pipeline: Any, samples: Iterable[Sample], timesteps: int = 8, draws: int = 2, seed: int = 0) -> RegionErrors:
    """The denoising error of ``pipeline`` inside and outside the concept boxes of each sample that has
    any (samples without a box are skipped), averaged over ``draws`` seeded noise draws at each of
    ``timesteps`` fixed timesteps."""
    unet, vae, text_encoder = pipeline.unet, pipeline.vae, pipeline.text_encoder
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
    scale = pipeline.vae_scale_factor
    resolution = unet.config.sample_size * scale
    grid = resolution // scale
    steps = torch.tensor(fixed_timesteps(timesteps, scheduler.config.num_train_timesteps)).repeat_interleave(draws)
    device, dtype = unet.device, unet.dtype
    keys, inside, outside = [], [], []
    for sample in samples:
        image, boxes = square_view(sample.image, [(i.concept, i.box) for i in sample.meta.instances], resolution)
        if not boxes:
            continue
        mask = region_mask([b for _, b in boxes], resolution, resolution, grid, grid)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode().float() * vae.config.scaling_factor
        latents = latents.expand(len(steps), -1, -1, -1)
        noise = torch.from_numpy(sample_rng(seed, sample.key).standard_normal(latents.shape, dtype=np.float32)).to(device)
        hidden = text_encoder(token_ids(pipeline.tokenizer, [sample.caption]).to(device))[0]
        noisy = scheduler.add_noise(latents, noise, steps)
        pred = unet(noisy.to(dtype), steps.to(device), hidden.expand(len(steps), -1, -1)).sample
        target = prediction_target(scheduler, latents, noise, steps)
        error = (pred.float() - target.float()).pow(2).mean(dim=(0, 1)).cpu()
        keys.append(sample.key)
        inside.append(float(error[mask].mean()))
        outside.append(float(error[~mask].mean()) if (~mask).any() else float("nan"))
    if not keys:
        raise ValueError("region_errors: no sample has a concept box")
    return RegionErrors(tuple(keys), np.asarray(inside), np.asarray(outside))


def paired_ratios(model: RegionErrors, reference: RegionErrors, resamples: int = 1000, seed: int = 0) -> PairedRatios:
    """``model``'s mean error over ``reference``'s, inside and outside, with a paired bootstrap over images."""
    if model.keys != reference.keys:
        raise ValueError("paired_ratios: the two were measured on different images")
    keep = ~(np.isnan(model.outside) | np.isnan(reference.outside))
    return PairedRatios(
        inside=bootstrap_ratio(model.inside, reference.inside, resamples, seed),
        outside=bootstrap_ratio(model.outside[keep], reference.outside[keep], resamples, seed),
    )
