"""What decides a training run's result, checked once when built: :class:`TrainingConfig`.

Kept apart from the loop: recipes, tracks and cache keys build, check and hash configs, and a field's
rules are read here without wading through the training step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmark.models.pipelines import PREDICTION_TYPES
from implicit_concept.geom_erasing.training_target import GeomErasingConfig
from implicit_concept.torch_settings import MAX_THREADS
from implicit_concept.validate import check_choice, check_int, check_number

TEXT_TRAINING = ("none", "new_tokens", "text_encoder")
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}
IMAGE_FIELDS = ("image", "clean")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION = ("sdpa", "eager")
#: Fields added after configs were first hashed, with the behaviour runs had before them: at these
#: values they are left out of ``to_dict``, so the cache keys and ``run.json`` of those runs still hold.
ADDED_LATER = {"train_unet": True, "gradient_checkpointing": False, "attention": "sdpa"}
TIMESTEP_SAMPLING = ("uniform", "stratified")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides a training run's result; ``run.json`` records it and resume checks it.

    ``train_text``: "new_tokens" trains only the embeddings of tokens Geom-Erasing adds (the paper's
    Data Removal), "text_encoder" trains all of it (base pretraining from scratch), "none" freezes it.
    Model Removal (``geom.setting``) freezes the UNet and needs "new_tokens".
    ``image_field`` "clean" trains on the clean twins (the benchmark's oracle). ``batch_size`` is the
    global batch, split evenly across processes, so 8 GPUs train the same model as 1 (up to float
    summation order) and a cached result does not depend on how many trained it.

    Memory options (the paper track turns them on; the CPU tracks keep them off): ``mixed_precision``
    through accelerate ("fp16" needs a GPU; "bf16" also runs on CPUs that have it),
    ``gradient_checkpointing`` (the UNet's, and the text encoder's when it all trains), ``attention``
    ("sdpa": PyTorch's fused kernels, which never hold the attention matrix; "eager": the plain
    product, for comparison) and ``cache_latents`` (every image encoded once per run, then only its
    latents kept). ``train_unet`` false freezes the UNet: only the text side trains, so AdamW holds no
    state for its 860M weights (the CPU test of the SD-v1.5-shaped dry run uses it).
    """

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    prediction_type: str | None = None
    snr_gamma: float | None = None
    timestep_sampling: str = "stratified"
    caption_dropout: float = 0.0
    ema_decay: float | None = None
    train_text: str = "new_tokens"
    image_field: str = "image"
    resolution: int | None = None
    shuffle_buffer: int = 1000
    cache_latents: bool = True
    checkpoint_every: int = 100
    checkpoints_kept: int = 2
    seed: int = 0
    threads: int | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    attention: str = "sdpa"
    train_unet: bool = True
    geom: GeomErasingConfig = field(default_factory=GeomErasingConfig.plain)

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("shuffle_buffer", 1),
                          ("checkpoint_every", 1), ("checkpoints_kept", 1), ("seed", 0)):
            check_int(name, getattr(self, name), low)
        if self.resolution is not None:
            check_int("resolution", self.resolution, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1, MAX_THREADS)
        check_number("learning_rate", self.learning_rate, 0, math.inf, open_lo=True)
        check_number("weight_decay", self.weight_decay, 0, math.inf)
        check_number("max_grad_norm", self.max_grad_norm, 0, math.inf, open_lo=True)
        check_number("caption_dropout", self.caption_dropout, 0, 1)
        if self.snr_gamma is not None:
            check_number("snr_gamma", self.snr_gamma, 0, math.inf, open_lo=True)
        if self.ema_decay is not None:
            check_number("ema_decay", self.ema_decay, 0, 1, open_lo=True)
        check_choice("lr_schedule", self.lr_schedule, tuple(LR_SCHEDULES))
        check_choice("train_text", self.train_text, TEXT_TRAINING)
        check_choice("image_field", self.image_field, IMAGE_FIELDS)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_choice("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        if self.prediction_type is not None:
            check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("attention", self.attention, ATTENTION)
        for name in ("cache_latents", "gradient_checkpointing", "train_unet"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.geom, GeomErasingConfig):
            raise ValueError(f"geom must be a GeomErasingConfig, got {type(self.geom).__name__}")
        if self.model_removal and self.train_text != "new_tokens":
            raise ValueError("train_text must be 'new_tokens' for Model Removal: the model stays frozen")
        if self.model_removal and self.ema_decay is not None:
            raise ValueError("ema_decay: Model Removal trains no UNet weights to average")
        if not self.train_unet and self.train_text == "none":
            raise ValueError("train_unet is false and train_text is 'none': nothing would train")
        if not self.train_unet and self.ema_decay is not None:
            raise ValueError("ema_decay: the UNet is frozen (train_unet false), there is nothing to average")
        if self.image_field == "clean" and self.geom.active:
            raise ValueError("image_field 'clean' (the oracle) has no concept to erase: use GeomErasingConfig.plain()")

    @property
    def model_removal(self) -> bool:
        return self.geom.setting == "model_removal"

    @property
    def trains_unet(self) -> bool:
        return self.train_unet and not self.model_removal

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ADDED_LATER or v != ADDED_LATER[k]}
