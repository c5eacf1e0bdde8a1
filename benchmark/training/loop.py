"""The one training loop: base pretraining, plain fine-tuning, Geom-Erasing and its ablations.

Shaped like diffusers' ``train_text_to_image.py`` and meant to be read top to bottom in :func:`train`:
load a local pipeline, add Geom-Erasing's new tokens, choose what trains, then for each step take a
batch of samples, encode images to latents, add noise at random timesteps and regress the
scheduler's target (the noise, the clean latents or the velocity) with a per-position weight map on
the latent grid. accelerate places it on the CPU, one GPU or many. The data path is in :mod:`.data`, the run's folder in :mod:`.checkpoints`.

Reproducibility is a design goal, not a hope: all training randomness (shuffling, timesteps, noise,
caption dropout) comes from generators seeded by ``config.seed`` and saved in every checkpoint with
the model, optimizer, LR schedule, EMA and data position, so a run killed and resumed ends with the
same weights as one that never stopped. Images are encoded with the VAE posterior's mode (the mean),
not a sample: deterministic, and cacheable.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import get_int_from_env
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from benchmark.models.clip_tokenizer import token_ids
from benchmark.models.pipelines import load_pipeline, weights_bytes
from benchmark.training.checkpoints import (
    CHECKPOINTS_DIR,
    PIPELINE_DIR,
    Resumable,
    Session,
    TrainState,
    checkpoint_bytes,
    require_finite_result,
    resume_latest,
    save_checkpoint,
    save_pipeline,
    start_or_resume,
    write_finished_run,
)
from benchmark.training.config import LR_SCHEDULES, TrainingConfig
from benchmark.training.data import (
    Preparer,
    SampleSource,
    ShardSource,
    diffusion_loss,
    encode_all,
    global_batches,
    model_inputs,
    process_share,
    step_randomness,
)
from benchmark.training.memory import accelerator_for, apply_memory_options
from benchmark.training.new_tokens import NewTokenRows, average_across_processes
from implicit_concept.disk_space import require_space
from implicit_concept.geom_erasing.location_tokens import add_tokens
from implicit_concept.progress import progress_bar
from implicit_concept.provenance import config_hash
from implicit_concept.torch_settings import torch_threads


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the run stops, naming the step, and saves nothing of it."""


def processes() -> PartialState:
    """This process's place in an ``accelerate launch`` / torchrun run (a run of one otherwise): on
    CPUs, accelerate joins the processes only when told ``cpu``, as ``train`` does."""
    return PartialState(cpu=not torch.cuda.is_available())


#: Where a launcher says how many processes it started: torchrun and ``accelerate launch`` (WORLD_SIZE),
#: MPI (the others), as accelerate reads them.
LAUNCH_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launch_size() -> int:
    """How many processes the launcher (torchrun, ``accelerate launch``, MPI) says this launch has, 1
    where none does: read from its variables alone, nothing joined."""
    return get_int_from_env(list(LAUNCH_SIZE_VARIABLES), 1)


def launched_processes() -> int:
    """How many processes train together in this launch, for checks made before any stage runs:
    1 when no launcher says several, without creating accelerate's state (a process-wide singleton,
    which would keep this moment's device for every later :func:`processes`); else
    :func:`processes`' count, the processes joined as the protocol's first stage joins them."""
    if launch_size() > 1:
        return processes().num_processes
    return 1


def train(
    base: str | Path,
    data: SampleSource | str | Path,
    output_dir: str | Path,
    config: TrainingConfig,
    detect: Any = None,
    progress: bool = True,
) -> Path:
    """Fine-tune the pipeline at ``base`` on ``data``; return the trained pipeline's directory.

    Resumes from the newest checkpoint in ``output_dir`` when its ``run.json`` holds the same
    config, base and data; refuses a changed config. A finished run is returned as is.
    """
    output_dir = Path(output_dir)
    source = data if hasattr(data, "samples") else ShardSource(str(data), with_extras=config.image_field == "clean")
    record = {"config": config.to_dict(), "base": str(base), "data": source.describe()}
    final_dir = output_dir / PIPELINE_DIR
    if start_or_resume(output_dir, record) == "finished":
        return final_dir
    with torch_threads(config.threads):
        return _train(base, source, output_dir, final_dir, record, config, detect, progress)


def _train(base: str | Path, source: SampleSource, output_dir: Path, final_dir: Path, record: dict[str, Any],
           config: TrainingConfig, detect: Any, progress: bool) -> Path:
    """``train``'s steps, from the newest checkpoint, under the config's thread count."""
    accelerator = accelerator_for(config)
    # Every global generator a checkpoint saves (rng_0) from the seed, not torch's alone: Python's and
    # numpy's held what the process drew before, so a base's checkpoints differed run to run.
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)

    # The models. The VAE never trains; what else does is decided by the setting, train_unet and train_text.
    pipe = load_pipeline(base)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=config.prediction_type or pipe.scheduler.config.prediction_type)
    new_ids = add_tokens(tokenizer, text_encoder, config.geom.new_tokens(), seed=config.seed)
    resolution, scale = config.resolution or unet.config.sample_size * pipe.vae_scale_factor, pipe.vae_scale_factor
    if resolution % scale:
        raise ValueError(f"resolution {resolution} must be a multiple of the VAE's down-sampling ({scale})")
    latent_hw, latent_channels = (resolution // scale, resolution // scale), unet.config.in_channels
    vae.requires_grad_(False)
    unet.requires_grad_(config.trains_unet)
    text_encoder.requires_grad_(config.train_text == "text_encoder")
    apply_memory_options(config, unet, text_encoder)
    embedding = text_encoder.get_input_embeddings()
    new_rows = NewTokenRows(embedding, new_ids) if config.train_text == "new_tokens" and new_ids else None
    for model in (vae, unet, text_encoder, new_rows):
        if model is not None:
            model.to(accelerator.device)
    if not config.trains_unet and config.train_text == "new_tokens" and new_rows is None:
        raise ValueError("nothing to train: the UNet is frozen (Model Removal or train_unet false) and no new token was added")

    # The optimizer: the UNet (unless frozen), then the text side (all of it, or the new rows).
    groups = []
    if config.trains_unet:
        groups.append({"params": list(unet.parameters()), "weight_decay": config.weight_decay})
    if config.train_text == "text_encoder":
        groups.append({"params": list(text_encoder.parameters()), "weight_decay": config.weight_decay})
    elif new_rows is not None:
        groups.append({"params": [new_rows.rows], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    # accelerate steps a prepared LR schedule once per process, hence the scaled lengths (as in diffusers' scripts).
    n = accelerator.num_processes
    lr_scheduler = get_scheduler(LR_SCHEDULES[config.lr_schedule], optimizer, num_warmup_steps=config.warmup_steps * n, num_training_steps=config.steps * n)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay, model_cls=type(unet), model_config=unet.config) if config.ema_decay else None

    # Only models with trainable weights are wrapped (DDP refuses others) and saved in checkpoints.
    trained = {}
    if config.trains_unet:
        unet = trained["unet"] = accelerator.prepare(unet)
    if config.train_text == "text_encoder":
        text_encoder = trained["text_encoder"] = accelerator.prepare(text_encoder)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    resumable = Resumable(TrainState(config.seed, run=config_hash(record)), trained, optimizer, lr_scheduler, new_rows, ema)
    resume_latest(accelerator, output_dir, resumable)
    state = resumable.state
    if state.step < config.steps:  # refused now with the figures, not after the steps before the first write
        require_space(output_dir, checkpoint_bytes(resumable) + weights_bytes(pipe), "a checkpoint and the final pipeline of this fine-tune")

    # The data: examples in a seeded shuffle, each with its Geom-Erasing caption and weight map.
    prepare = Preparer(config, tokenizer, latent_hw, resolution, detect)
    scaling = vae.config.scaling_factor
    prepare_started = time.time()
    if config.cache_latents:
        with accelerator.autocast():  # the VAE encodes in the run's precision, cached or not
            encode_all(source, prepare, vae, scaling, config.batch_size, accelerator.device)
    prepare_seconds = time.time() - prepare_started
    empty_ids = token_ids(tokenizer, [""])[0]
    mine = process_share(config.batch_size, accelerator.num_processes, accelerator.process_index)
    batches = global_batches(source, prepare, state, config, config.batch_size)

    unet.train(config.trains_unet)
    text_encoder.train(config.train_text != "none")
    bar = progress_bar(total=config.steps, initial=state.step, desc="train", progress=progress and accelerator.is_main_process)
    session = Session(first_step=state.step, prepare_seconds=prepare_seconds, processes=accelerator.num_processes)
    while state.step < config.steps:
        step_started = time.time()
        examples = next(batches)
        session.count(examples)
        drop, noise, timesteps = step_randomness(len(examples), state.generator, config, latent_channels, latent_hw, noise_scheduler.config.num_train_timesteps)
        examples, drop, noise, timesteps = examples[mine], drop[mine], noise[mine], timesteps[mine]
        with accelerator.autocast():
            latents, input_ids, weights = model_inputs(examples, drop, empty_ids, vae, scaling, accelerator.device)
        noise, timesteps = noise.to(accelerator.device), timesteps.to(accelerator.device)

        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with accelerator.autocast():
            hidden = text_encoder(input_ids)[0]
            pred = unet(noisy, timesteps, hidden).sample
        loss = diffusion_loss(noise_scheduler, pred, latents, noise, timesteps, weights, config.snr_gamma)
        # Every process gets the same mean, so all stop together on a non-finite one, before its update.
        step_loss = accelerator.gather(loss.detach()[None]).mean().item()
        if not math.isfinite(step_loss):
            raise TrainingDiverged(
                f"{output_dir}: step {state.step + 1} of {config.steps}: the loss is {step_loss}, so training stopped "
                f"before that step's update; nothing of it was saved, and the run is not finished (the newest checkpoint "
                f"in {output_dir / CHECKPOINTS_DIR}, if any, is from before). Lower the learning rate, or check the base "
                "weights and the data"
            )

        accelerator.backward(loss)
        if new_rows is not None and accelerator.num_processes > 1:
            average_across_processes(accelerator, new_rows.rows)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        state.step += 1
        session.step_seconds.append(time.time() - step_started)

        state.loss = step_loss
        bar.set_postfix(loss=f"{step_loss:.4f}")
        bar.update(1)
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            save_checkpoint(accelerator, output_dir, resumable, config.checkpoints_kept)
    bar.close()
    session.seconds = time.time() - session.started

    # The result: a diffusers pipeline directory (EMA weights when averaged) and run.json.
    accelerator.wait_for_everyone()
    require_finite_result(accelerator, unet, text_encoder, ema, new_rows, final_dir)
    if accelerator.is_main_process:
        save_pipeline(accelerator, pipe, unet, text_encoder, noise_scheduler, ema, new_rows, final_dir, config.geom)
        write_finished_run(output_dir, record, config, state, session)
    accelerator.wait_for_everyone()
    return final_dir
