"""Stable-Diffusion-shaped pipelines: a tiny one built from configs, or any local diffusers directory.

Both paths end in the same ``StableDiffusionPipeline`` class, so fine-tuning, Geom-Erasing and the
benchmark never care which one they hold. The tiny pipeline has SD's parts at toy sizes: CLIP's real
tokenizer (from open_clip's bundled vocabulary), a small ``CLIPTextModel``, a small
``UNet2DConditionModel``, and in the VAE's place a lossless :class:`PatchAutoencoder` that folds
4 x 4 pixel patches into channels, so 64 px images diffuse on a 16 x 16 grid (see its module for the
measurements behind that choice). Because those "latents" are pixels, the tiny pipeline predicts
the clean sample (x0) and clips it to [-1, 1] when sampling. Measured on procedural scenes: with
noise prediction, a tiny model's small errors at high noise blew up its x0 estimate and sampling
diverged; with v-prediction it sampled stably but left per-pixel noise (48 channels per cell must
carry the exact noise); x0-prediction gave clean images from the first few hundred steps.
Nothing is ever fetched from a hub and no safety checker is loaded.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from benchmark.models import patch_autoencoder
from benchmark.models.clip_tokenizer import CLIP_MAX_LENGTH, build_clip_tokenizer, write_vocab_files
from benchmark.models.patch_autoencoder import PatchAutoencoder
from implicit_concept.files import read_json_object

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: The schedulers a loaded pipeline may name (SD v1.5 ships PNDM; the tiny pipeline uses DDIM).
SCHEDULERS = (DDIMScheduler, PNDMScheduler, DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
              LMSDiscreteScheduler, DPMSolverMultistepScheduler)
#: The tiny pipeline's VAE as a diffusers custom component, and the negative prompt beside a saved pipeline.
CUSTOM_VAE_FILE = "patch_autoencoder.py"
NEGATIVE_PROMPT_FILE = "negative_prompt.txt"
#: Weight files that are pickles: never loaded from a pipeline folder.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")


@dataclass(frozen=True)
class TinyPipelineConfig:
    """Sizes of the embedded pipeline's parts; ``unet_attention`` says which UNet levels cross-attend.

    The noise schedule is improved-DDPM's cosine one, made for 64 px pixel images (``beta_start`` and
    ``beta_end`` only apply to the "linear" and "scaled_linear" schedules).
    """

    image_size: int = 64
    patch_size: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_layers_per_block: int = 1
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    prediction_type: str = "sample"
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "unet_channels", tuple(self.unet_channels))
        object.__setattr__(self, "unet_attention", tuple(self.unet_attention))
        for name in ("image_size", "patch_size", "unet_layers_per_block", "attention_head_dim",
                     "text_hidden", "text_layers", "text_heads", "num_train_timesteps"):
            _positive_int(name, getattr(self, name))
        if self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two, got {self.patch_size}")
        channels = self.unet_channels
        if not channels or not all(isinstance(c, int) and c > 0 and c % 16 == 0 for c in channels):
            raise ValueError(f"unet_channels must be a non-empty tuple of multiples of 16, got {channels!r}")
        if len(self.unet_attention) != len(self.unet_channels) or not all(isinstance(a, bool) for a in self.unet_attention):
            raise ValueError(f"unet_attention must hold one bool per unet_channels entry, got {self.unet_attention!r}")
        if not any(self.unet_attention):
            raise ValueError("unet_attention: at least one level must cross-attend to the text")
        if self.image_size % self.vae_scale_factor or (self.image_size // self.vae_scale_factor) % 2 ** (len(self.unet_channels) - 1):
            raise ValueError(f"image_size {self.image_size} must divide by the VAE's and the UNet's down-sampling")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden ({self.text_hidden}) must be a multiple of text_heads ({self.text_heads})")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if self.beta_start >= self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must be below beta_end ({self.beta_end})")

    @property
    def vae_scale_factor(self) -> int:
        return self.patch_size

    @property
    def latent_channels(self) -> int:
        return 3 * self.patch_size**2

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def build_unet(config: TinyPipelineConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet_attention))
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=16,
    )


def build_text_encoder(config: TinyPipelineConfig, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=config.text_hidden,
            intermediate_size=4 * config.text_hidden,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
        )
    )


def build_scheduler(config: TinyPipelineConfig) -> DDIMScheduler:
    """DDIM over the configured noise schedule, its x0 estimate clipped to [-1, 1] since the latents are
    pixels. ``StableDiffusionPipeline`` resets ``clip_sample``, so the clip is written as thresholding
    with ``sample_max_value`` 1 (which clips at exactly 1)."""
    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
        thresholding=True,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(config: TinyPipelineConfig, tokenizer_cache: str | Path, seed: int = 0) -> StableDiffusionPipeline:
    """A freshly initialised tiny pipeline; the same seed gives the same weights."""
    tokenizer = build_clip_tokenizer(tokenizer_cache)
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(config, len(tokenizer))
    vae = PatchAutoencoder(patch_size=config.patch_size)
    unet = build_unet(config, config.text_hidden)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_portable_pipeline(pipe: StableDiffusionPipeline, directory: str | Path, negative_prompt: str = "") -> Path:
    """``save_pretrained``, plus what plain diffusers and transformers need to open the folder without
    this package: the slow tokenizer's ``vocab.json`` and ``merges.txt`` beside ``tokenizer.json``,
    and for the tiny pipeline its :class:`PatchAutoencoder` as a custom component (``vae/patch_autoencoder.py``,
    loaded by ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)``). The negative prompt
    a method samples with goes to ``negative_prompt.txt``."""
    directory = Path(directory)
    pipe.save_pretrained(str(directory))
    if (directory / "tokenizer").is_dir():
        write_vocab_files(directory / "tokenizer")
    if isinstance(getattr(pipe, "vae", None), PatchAutoencoder):
        (directory / "vae" / CUSTOM_VAE_FILE).write_bytes(Path(patch_autoencoder.__file__).read_bytes())
        index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
        index["vae"] = [Path(CUSTOM_VAE_FILE).stem, PatchAutoencoder.__name__]
        (directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / NEGATIVE_PROMPT_FILE).write_text(negative_prompt + "\n", encoding="utf-8")
    return directory


def load_pipeline(path: str | Path, torch_dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` from a local diffusers directory (the tiny one or SD v1.5).

    Each part is loaded by a class named here, as diffusers' training scripts do, never by a class
    the folder names: nothing is downloaded and no code in the folder runs (the tiny pipeline's
    custom VAE is this package's :class:`PatchAutoencoder`). Safety checker and feature extractor
    are not loaded.
    """
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline directory (no model_index.json)")
    index = read_json_object(path / "model_index.json")

    def part(name: str, cls: Any, **kwargs: Any) -> Any:
        if not (path / name).is_dir():
            raise FileNotFoundError(f"{path}: no {name}/ folder")
        return cls.from_pretrained(str(path / name), local_files_only=True, **kwargs)

    def weighted(name: str, cls: Any, stem: str) -> Any:
        variant = _weights_variant(path / name, stem)
        return part(name, cls, use_safetensors=True, variant=variant, torch_dtype=torch_dtype or torch.float32)

    return StableDiffusionPipeline(
        vae=weighted("vae", _component_class(index, "vae", (PatchAutoencoder, AutoencoderKL, AutoencoderTiny), path), DIFFUSERS_WEIGHTS),
        text_encoder=weighted("text_encoder", CLIPTextModel, TRANSFORMERS_WEIGHTS),
        tokenizer=part("tokenizer", CLIPTokenizer),
        unet=weighted("unet", UNet2DConditionModel, DIFFUSERS_WEIGHTS),
        scheduler=part("scheduler", _component_class(index, "scheduler", SCHEDULERS, path)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


#: The weights file stems diffusers' models and transformers' models are saved under.
DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS = "diffusion_pytorch_model", "model"


def _weights_variant(folder: Path, stem: str) -> str | None:
    """Which safetensors weights of a part to load: the plain ``STEM.safetensors`` (or its sharded
    index), else the one variant saved (``STEM.fp16.safetensors``, as hub snapshots of SD often
    hold), preferring fp16 when there are several. A ``.bin`` or ``.ckpt`` is a pickle, and
    unpickling a file someone handed over can run its code: it is never loaded."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder.parent}: no {folder.name}/ folder")
    names = sorted(p.name for p in folder.iterdir())
    if f"{stem}.safetensors" in names or f"{stem}.safetensors.index.json" in names:
        return None
    pattern = re.compile(rf"^{re.escape(stem)}(?:\.safetensors\.index)?\.(\w+)\.(?:safetensors|json)$")
    variants = sorted({m.group(1) for m in map(pattern.match, names) if m})
    if "fp16" in variants or len(variants) == 1:
        return "fp16" if "fp16" in variants else variants[0]
    if variants:
        raise ValueError(f"{folder}: no {stem}.safetensors and several variants ({', '.join(variants)}); "
                         f"keep the one to load as {stem}.safetensors")
    pickled = [n for n in names if Path(n).suffix in PICKLED_SUFFIXES]
    found = f"only {', '.join(pickled)}, a pickle, which is never loaded" if pickled else f"found: {', '.join(names) or 'nothing'}"
    raise ValueError(f"{folder}: no {stem}.safetensors ({found}); re-save the pipeline with save_pretrained(..., safe_serialization=True)")


def _component_class(index: dict[str, Any], name: str, allowed: tuple[type, ...], path: Path) -> type:
    """The class ``model_index.json`` names for ``name``, if it is one of ``allowed``; else an error."""
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ValueError(f"{path}/model_index.json: {name} is {entry!r}, want [library, class name]")
    class_name = entry[1]
    for cls in allowed:
        if cls.__name__ == class_name:
            return cls
    raise ValueError(f"{path}/model_index.json: {name} is {class_name!r}; supported: {', '.join(c.__name__ for c in allowed)}")
