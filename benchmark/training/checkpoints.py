"""A training run's folder: ``run.json``, the checkpoints a resume starts from, the final pipeline.

A run can be killed at any point and started again with the same call: ``run.json`` is written first
and checked on every start (a changed config is refused), checkpoints and the final pipeline are
written under temporary names and renamed into place, so whatever is found complete is whole.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import EMAModel

from benchmark.models.pipelines import save_portable_pipeline
from benchmark.training.config import TrainingConfig
from benchmark.training.new_tokens import NewTokenRows
from implicit_concept.files import atomic_dir, atomic_write_json
from implicit_concept.geom_erasing.training_target import GeomErasingConfig, write_metadata
from implicit_concept.provenance import config_hash, environment

log = logging.getLogger(__name__)

PIPELINE_DIR = "pipeline"
CHECKPOINTS_DIR = "checkpoints"
RUN_FILE = "run.json"


class TrainState:
    """What besides weights a resume needs: progress, data position and the training generator."""

    def __init__(self, seed: int) -> None:
        self.step = 0
        self.epoch = 0
        self.consumed = 0
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "consumed": self.consumed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.generator.set_state(state["generator"])


def start_or_resume(output_dir: Path, record: dict[str, Any]) -> str:
    """Check ``run.json`` against this run: "new", "resume" or "finished"; a changed config raises."""
    run_file = output_dir / RUN_FILE
    if run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        mine = {k: previous.get(k) for k in record}
        if mine != json.loads(json.dumps(record)):
            raise ValueError(f"{output_dir} holds a run with another config, base or data: use a new output directory")
        return "finished" if previous.get("finished") and (output_dir / PIPELINE_DIR / "model_index.json").is_file() else "resume"
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_file, record)
    return "new"


def resume_state(accelerator: Accelerator, output_dir: Path, seed: int, new_rows: NewTokenRows | None, ema: EMAModel | None) -> TrainState:
    """A fresh :class:`TrainState`, registered for checkpoints with the new-token rows and the EMA
    (beside what ``accelerator.prepare`` wrapped), then loaded from the newest checkpoint if any."""
    state = TrainState(seed)
    accelerator.register_for_checkpointing(state)
    if new_rows is not None:
        accelerator.register_for_checkpointing(new_rows)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        log.info("resumed from %s at step %d", checkpoint, state.step)
    return state


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (directories are renamed into place only when written)."""
    found = sorted(Path(output_dir, CHECKPOINTS_DIR).glob("step-*"))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, kept: int) -> Path:
    """Write a checkpoint to a temporary name, rename it into place, then drop the oldest beyond ``kept``.

    Every process writes into the folder (its own RNG state), so its temporary name is one for all
    processes, not :func:`~implicit_concept.files.temporary_name`'s per-process one.
    """
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"step-{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step:07d}"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(root.glob("step-*"))[:-kept]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_pipeline(
    accelerator: Accelerator, pipe: StableDiffusionPipeline, unet: Any, text_encoder: Any, noise_scheduler: DDPMScheduler,
    ema: EMAModel | None, new_rows: NewTokenRows | None, final_dir: Path, geom: GeomErasingConfig,
) -> None:
    """Save the trained models as a diffusers pipeline directory at ``final_dir`` (EMA weights when
    averaged, the new rows written into the embedding matrix) with Geom-Erasing's metadata."""
    unet = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(unet.parameters())
    if new_rows is not None:
        new_rows.write_back()
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=noise_scheduler.config.prediction_type)
    trained = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=accelerator.unwrap_model(text_encoder), tokenizer=pipe.tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_dir(final_dir, replace_existing=True) as tmp:
        save_portable_pipeline(trained, tmp, negative_prompt=geom.negative_prompt())
        write_metadata(tmp, geom)


@dataclass
class Session:
    """What this session (a resumed run's last one) measured, for ``run.json``."""

    first_step: int
    prepare_seconds: float
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    loss: float = float("nan")
    step_seconds: list[float] = field(default_factory=list)
    examples: int = 0
    truncated: int = 0

    def count(self, examples: list[Any]) -> None:
        """Count a global batch's examples and how many of their captions were truncated."""
        self.examples += len(examples)
        self.truncated += sum(e.truncated for e in examples)


def write_finished_run(output_dir: Path, record: dict[str, Any], config: TrainingConfig, steps: int, session: Session) -> None:
    """Complete ``run.json``: finished, with the session's numbers and the environment."""
    record.update(
        finished=True,
        seed=config.seed,
        config_sha256=config_hash(record["config"]),
        steps=steps,
        final_loss=session.loss,
        seconds_this_session=round(session.seconds, 2),
        seconds_per_step=round(session.seconds / max(1, steps - session.first_step), 4),
        step_seconds_median=round(float(np.median(session.step_seconds)), 4) if session.step_seconds else None,
        prepare_seconds=round(session.prepare_seconds, 2),
        captions_truncated=session.truncated,
        examples_seen_this_session=session.examples,
        negative_prompt=config.geom.negative_prompt(),
        environment=environment(),
    )
    atomic_write_json(output_dir / RUN_FILE, record)
