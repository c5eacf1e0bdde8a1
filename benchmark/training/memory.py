"""The memory options of a training run, applied in one place: mixed precision, attention kernel,
gradient checkpointing.

SD v1.5 at 512 px needs them on a 24 GB GPU (AdamW's state alone is 7 GB for the UNet); the CPU
tracks keep them off, and with them off nothing here changes a model or a number.
"""
from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from benchmark.training.config import TrainingConfig

#: The UNet's attention processor and the text encoder's attention implementation, per option.
_ATTENTION = {"sdpa": (AttnProcessor2_0, "sdpa"), "eager": (AttnProcessor, "eager")}


def accelerator_for(config: TrainingConfig) -> Accelerator:
    """The run's ``Accelerator``, with the mixed precision the config asks for.

    accelerate keeps one precision per process and refuses a second; a run asking another one than
    the process's last (a bf16 fine-tune after an fp32 base) resets it. On a CPU accelerate would run
    "fp16" silently in fp32, so it is refused there.
    """
    cuda = torch.cuda.is_available()
    refusal = mixed_precision_refusal(config.mixed_precision)
    if refusal:
        raise ValueError(f"mixed_precision {refusal}")
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != config.mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not cuda)


def mixed_precision_refusal(mixed_precision: str) -> str | None:
    """Why ``mixed_precision`` cannot run on this machine (the words after the field's name), or None:
    "fp16" with no CUDA device visible (a CPU node, or ``CUDA_VISIBLE_DEVICES`` empty). Checked by
    :func:`accelerator_for` and, before any stage runs, by the track check."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        return "'fp16' needs a GPU and none is visible here (accelerate trains in fp32 on a CPU); use 'bf16' on a CPU"
    return None


def apply_memory_options(config: TrainingConfig, unet: Any, text_encoder: Any) -> None:
    """Set the attention kernel of both models, and gradient checkpointing: on the UNet (every run
    back-propagates through it, to its weights or to the text side), and on the text encoder when
    all of it trains (its activations are small next to the UNet's otherwise)."""
    processor, implementation = _ATTENTION[config.attention]
    unet.set_attn_processor(processor())
    text_encoder.set_attn_implementation(implementation)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text == "text_encoder":
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
