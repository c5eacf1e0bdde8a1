"""Stable Diffusion v1.5's architecture with random weights: the paper track's shape, nothing downloaded.

Labs run the paper track on SD v1.5 from their own disk; no weights can be had here, but the
architecture can. The configs below are the published ones (runwayml/stable-diffusion-v1-5's
``unet/config.json``, ``vae/config.json``, ``text_encoder/config.json`` and
``scheduler/scheduler_config.json``, fields left at the class defaults omitted), so a pipeline built
from them has SD's 860M-parameter UNet, its 84M AutoencoderKL and its 123M CLIP ViT-L/14 text tower,
and loads through :func:`~benchmark.models.pipelines.load_pipeline` exactly as the real folder does.
Its images are noise: it proves plumbing, memory and speed, never quality.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.models.clip_tokenizer import build_clip_tokenizer
from benchmark.models.pipelines import save_portable_pipeline
from implicit_concept.files import atomic_dir
from implicit_concept.random_states import kept_rngs

UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "center_input_sample": False,
}

VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

#: CLIP ViT-L/14's text tower as SD v1.5 ships it (its odd bos/eos ids 0 and 2 included).
TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

#: PNDM's fields of the published scheduler config (it also carries DDIM's ``clip_sample`` and
#: thresholding fields, which PNDM ignores).
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}

#: Parameter counts of the published weights, which a pipeline built here must match.
PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def build_sd15_parts(seed: int = 0) -> dict[str, torch.nn.Module]:
    """The UNet, VAE and text encoder, freshly initialised from ``seed`` (about 4.3 GB of float32); the
    caller's global generators put back after."""
    with kept_rngs():
        torch.manual_seed(seed)
        return {
            "unet": UNet2DConditionModel(**UNET),
            "vae": AutoencoderKL(**VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER)),
        }


def build_sd15_pipeline(out: str | Path, seed: int = 0) -> Path:
    """Write an SD-v1.5-shaped pipeline with random weights to ``out`` (a diffusers folder, like the
    real one) and return it; an existing complete folder is kept. CLIP's tokenizer is built offline."""
    out = Path(out)
    if (out / "model_index.json").is_file():
        return out
    parts = build_sd15_parts(seed)
    with atomic_dir(out) as tmp:
        pipe = StableDiffusionPipeline(
            **parts,
            tokenizer=build_clip_tokenizer(tmp / "tokenizer"),
            scheduler=PNDMScheduler(**SCHEDULER),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        save_portable_pipeline(pipe, tmp)
    return out
