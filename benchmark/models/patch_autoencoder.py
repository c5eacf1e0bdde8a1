"""A lossless, parameter-free "VAE": pixel-unshuffle to encode, pixel-shuffle to decode.

On 2 CPU cores a learned autoencoder was the tiny track's bottleneck: a 0.9M-parameter
AutoencoderKL trained for 400 steps (about 13 minutes on a shared machine) still blurred shapes and
turned QR codes into grey smudges, while a UNet on a 16 x 16 grid costs 3-6x less per step than one on
64 x 64 pixels. Folding each ``p x p`` pixel patch into channels gives the cheap grid with exact
reconstruction and no training: 64 px RGB images become 16 x 16 x 48 "latents".

It stands where ``StableDiffusionPipeline`` expects its VAE: ``encode`` returns a (deterministic)
``latent_dist``, ``decode`` returns ``.sample``, and ``config.block_out_channels`` has
``log2(p) + 1`` entries only because the pipeline derives its ``vae_scale_factor`` from that length.
A pipeline saved with it records the class as ``benchmark.models.patch_autoencoder.PatchAutoencoder``;
diffusers loads it once this module is imported (``benchmark.models.pipelines.load_pipeline`` does).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """Encode ``(B, C, H, W)`` images in [-1, 1] to ``(B, C p^2, H/p, W/p)`` and back, exactly."""

    @register_to_config
    def __init__(
        self,
        patch_size: int = 4,
        in_channels: int = 3,
        scaling_factor: float = 1.0,
        block_out_channels: tuple[int, ...] | None = None,
        latent_channels: int | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size must be a power of two, got {patch_size}")
        levels = int(math.log2(patch_size)) + 1
        self.register_to_config(
            block_out_channels=(in_channels,) * levels, latent_channels=in_channels * patch_size**2
        )
        # A saved buffer gives the module a device and dtype, and a weights file that from_pretrained expects.
        self.register_buffer("anchor", torch.zeros(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        z = F.pixel_unshuffle(x, self.config.patch_size)
        dist = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        x = F.pixel_shuffle(z, self.config.patch_size)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mode()).sample
