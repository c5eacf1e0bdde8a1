"""The one training loop: base pretraining, plain fine-tuning, Geom-Erasing and its ablations.

Shaped like diffusers' ``train_text_to_image.py`` and meant to be read top to bottom in :func:`train`:
load a local pipeline, add Geom-Erasing's new tokens, choose what trains, then for each step take a
batch of samples, encode images to latents, add noise at random timesteps and regress the noise (or
the velocity) with a per-position weight map on the latent grid. accelerate places it on the CPU,
one GPU or many.

Reproducibility is a design goal, not a hope: all training randomness (shuffling, timesteps, noise,
caption dropout) comes from generators seeded by ``config.seed`` and saved in every checkpoint with
the model, optimizer, LR schedule, EMA and data position, so a run killed and resumed ends with the
same weights as one that never stopped. Images are encoded with the VAE posterior's mode (the mean),
not a sample: deterministic, and cacheable.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image
from tqdm.auto import tqdm

from implicit_concept.geom_erasing.training_target import GeomErasingConfig, sample_rng, training_target, write_metadata
from implicit_concept.geom_erasing.location_tokens import add_tokens
from implicit_concept.geom_erasing.loss_weights import weighted_mse
from benchmark.models.pipelines import PREDICTION_TYPES, load_pipeline
from implicit_concept.provenance import config_hash, environment
from implicit_concept.sample import Box, Sample, covering_box
from implicit_concept.shard_reader import iter_samples

log = logging.getLogger(__name__)

TEXT_TRAINING = ("none", "new_tokens", "text_encoder")
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}
IMAGE_FIELDS = ("image", "clean")
MIXED_PRECISION = ("no", "fp16", "bf16")
TIMESTEP_SAMPLING = ("uniform", "stratified")
PIPELINE_DIR = "pipeline"
CHECKPOINTS_DIR = "checkpoints"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides a training run's result; ``run.json`` records it and resume checks it.

    ``train_text``: "new_tokens" trains only the embeddings of tokens Geom-Erasing adds (the paper's
    Data Removal), "text_encoder" trains all of it (base pretraining from scratch), "none" freezes it.
    Model Removal (``geom.setting``) freezes the UNet and needs "new_tokens".
    ``image_field`` "clean" trains on the clean twins (the benchmark's oracle). ``batch_size`` is the
    global batch, split evenly across processes, so 8 GPUs train the same model as 1 (up to float
    summation order) and a cached result does not depend on how many trained it.
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
    geom: GeomErasingConfig = field(default_factory=GeomErasingConfig.plain)

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("warmup_steps", 0), ("shuffle_buffer", 1),
                          ("checkpoint_every", 1), ("checkpoints_kept", 1), ("seed", 0)):
            _int(name, getattr(self, name), low)
        for name in ("resolution", "threads"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        _number("learning_rate", self.learning_rate, 0, math.inf, low_open=True)
        _number("weight_decay", self.weight_decay, 0, math.inf)
        _number("max_grad_norm", self.max_grad_norm, 0, math.inf, low_open=True)
        _number("caption_dropout", self.caption_dropout, 0, 1)
        if self.snr_gamma is not None:
            _number("snr_gamma", self.snr_gamma, 0, math.inf, low_open=True)
        if self.ema_decay is not None:
            _number("ema_decay", self.ema_decay, 0, 1, low_open=True)
        _choice("lr_schedule", self.lr_schedule, tuple(LR_SCHEDULES))
        _choice("train_text", self.train_text, TEXT_TRAINING)
        _choice("image_field", self.image_field, IMAGE_FIELDS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        if self.prediction_type is not None:
            _choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        if not isinstance(self.cache_latents, bool):
            raise ValueError(f"cache_latents must be true or false, got {self.cache_latents!r}")
        if not isinstance(self.geom, GeomErasingConfig):
            raise ValueError(f"geom must be a GeomErasingConfig, got {type(self.geom).__name__}")
        if self.model_removal and self.train_text != "new_tokens":
            raise ValueError("train_text must be 'new_tokens' for Model Removal: the model stays frozen")
        if self.model_removal and self.ema_decay is not None:
            raise ValueError("ema_decay: Model Removal trains no UNet weights to average")
        if self.image_field == "clean" and self.geom.active:
            raise ValueError("image_field 'clean' (the oracle) has no concept to erase: use GeomErasingConfig.plain()")

    @property
    def model_removal(self) -> bool:
        return self.geom.setting == "model_removal"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {value!r}")


def _choice(name: str, value: Any, options: Sequence[str]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


class SampleSource(Protocol):
    """Training data: the same samples in the same order every time ``samples()`` is called."""

    def samples(self) -> Iterator[Sample]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ShardSource:
    """ICD shards (a folder, one tar or a brace pattern) streamed with :func:`iter_samples`."""

    path: str
    with_extras: bool = False

    def samples(self) -> Iterator[Sample]:
        return iter_samples(self.path, with_extras=self.with_extras)

    def describe(self) -> dict[str, Any]:
        return {"kind": "shards", "path": str(self.path)}


@dataclass
class Example:
    """A sample ready for the model: pixels in [-1, 1] (or their cached latents), token ids and loss weights."""

    key: str
    pixels: torch.Tensor | None
    input_ids: torch.Tensor
    weights: torch.Tensor
    truncated: bool
    latents: torch.Tensor | None = None


class NewTokenRows(torch.nn.Module):
    """The trainable embeddings of new tokens, spliced into a frozen embedding layer's output.

    Training the whole ``vocabulary x hidden`` matrix with a gradient mask (textual inversion's way)
    made every step pay a dense gradient and AdamW update over 49k rows (Geom-Erasing's step cost over a
    plain one: +6.0% then, +1.9% now on the tiny pipeline). Here only ``len(ids) x hidden`` values
    train; ``write_back`` copies them into the matrix.
    """

    def __init__(self, embedding: torch.nn.Embedding, ids: Sequence[int]) -> None:
        super().__init__()
        self.embedding = [embedding]  # a list: not a submodule, so state_dict holds only the new rows
        self.ids = list(ids)
        self.rows = torch.nn.Parameter(embedding.weight[self.ids].detach().clone().float())
        slot = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        slot[self.ids] = torch.arange(len(self.ids))
        self.register_buffer("slot", slot, persistent=False)
        self._hook = embedding.register_forward_hook(self._splice)

    def _splice(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        slot = self.slot[inputs[0]]
        is_new = slot >= 0
        if not bool(is_new.any()):
            return output
        return torch.where(is_new[..., None], self.rows[slot.clamp(min=0)].to(output.dtype), output)

    def write_back(self) -> None:
        """Copy the trained rows into the embedding matrix and stop splicing."""
        embedding = self.embedding[0]
        with torch.no_grad():
            embedding.weight[self.ids] = self.rows.to(embedding.weight.dtype)
        self._hook.remove()


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


def processes() -> PartialState:
    """This process's place in an ``accelerate launch`` / torchrun run (a run of one otherwise): on
    CPUs, accelerate joins the processes only when told ``cpu``, as ``train`` does."""
    return PartialState(cpu=not torch.cuda.is_available())


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
    if _start_or_resume(output_dir, record) == "finished":
        return final_dir

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    # The models. The VAE never trains; what else does is decided by the setting and train_text.
    pipe = load_pipeline(base)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=config.prediction_type or pipe.scheduler.config.prediction_type)
    new_ids = add_tokens(tokenizer, text_encoder, config.geom.new_tokens(), seed=config.seed)
    latent_hw, latent_channels = (unet.config.sample_size, unet.config.sample_size), unet.config.in_channels
    vae.requires_grad_(False)
    unet.requires_grad_(not config.model_removal)
    text_encoder.requires_grad_(config.train_text == "text_encoder")
    embedding = text_encoder.get_input_embeddings()
    new_rows = NewTokenRows(embedding, new_ids) if config.train_text == "new_tokens" and new_ids else None
    for model in (vae, unet, text_encoder, new_rows):
        if model is not None:
            model.to(accelerator.device)
    if config.model_removal and new_rows is None:
        raise ValueError("nothing to train: Model Removal freezes the model and no new token was added")

    # The optimizer: the UNet (unless Model Removal), then the text side (all of it, or the new rows).
    groups = []
    if not config.model_removal:
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
    if not config.model_removal:
        unet = accelerator.prepare(unet)
    if config.train_text == "text_encoder":
        text_encoder = accelerator.prepare(text_encoder)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)
    state = TrainState(config.seed)
    accelerator.register_for_checkpointing(state)
    if new_rows is not None:
        accelerator.register_for_checkpointing(new_rows)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        log.info("resumed from %s at step %d", checkpoint, state.step)

    # The data: examples in a seeded shuffle, each with its Geom-Erasing caption and weight map.
    resolution = config.resolution or latent_hw[0] * pipe.vae_scale_factor
    prepare = _Preparer(config, tokenizer, latent_hw, resolution, detect)
    scaling = vae.config.scaling_factor
    prepare_started = time.time()
    if config.cache_latents:
        _encode_all(source, prepare, vae, scaling, config.batch_size, accelerator.device)
    prepare_seconds = time.time() - prepare_started
    empty_ids = _tokenize(tokenizer, [""])[0]
    if config.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly over {accelerator.num_processes} processes")
    per_process = config.batch_size // accelerator.num_processes
    batches = _batches(source, prepare, state, config, config.batch_size)
    counters = {"truncated": 0, "examples": 0}

    unet.train(not config.model_removal)
    text_encoder.train(config.train_text != "none")
    bar = tqdm(total=config.steps, initial=state.step, desc="train", disable=not (progress and accelerator.is_main_process))
    started, first_step = time.time(), state.step
    loss_value = float("nan")
    step_seconds: list[float] = []
    while state.step < config.steps:
        step_started = time.time()
        examples = next(batches)
        counters["examples"] += len(examples)
        counters["truncated"] += sum(e.truncated for e in examples)
        gen = state.generator
        drop = torch.rand(len(examples), generator=gen) < config.caption_dropout
        noise = torch.randn((len(examples), latent_channels, *latent_hw), generator=gen)
        timesteps = _timesteps(len(examples), noise_scheduler.config.num_train_timesteps, config.timestep_sampling, gen)
        mine = slice(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)
        examples, drop, noise, timesteps = examples[mine], drop[mine], noise[mine], timesteps[mine]

        with torch.no_grad():
            latents = _latents(examples, vae, scaling, accelerator.device)
        input_ids = torch.stack([empty_ids if d else e.input_ids for e, d in zip(examples, drop)]).to(accelerator.device)
        weights = torch.stack([e.weights for e in examples]).to(accelerator.device)
        noise, timesteps = noise.to(accelerator.device), timesteps.to(accelerator.device)

        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with accelerator.autocast():
            hidden = text_encoder(input_ids)[0]
            pred = unet(noisy, timesteps, hidden).sample
        target = {"epsilon": noise, "sample": latents}.get(noise_scheduler.config.prediction_type)
        if target is None:
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        per_sample = weighted_mse(pred, target, weights)
        if config.snr_gamma is not None:
            per_sample = per_sample * _min_snr_weights(noise_scheduler, timesteps, config.snr_gamma)
        loss = per_sample.mean()

        accelerator.backward(loss)
        if new_rows is not None and accelerator.num_processes > 1:
            _average_across_processes(accelerator, new_rows.rows)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        state.step += 1
        step_seconds.append(time.time() - step_started)

        loss_value = accelerator.gather(loss.detach()[None]).mean().item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if state.step % config.checkpoint_every == 0 or state.step == config.steps:
            save_checkpoint(accelerator, output_dir, state.step, config.checkpoints_kept)
    bar.close()
    seconds = time.time() - started

    # The result: a diffusers pipeline directory (EMA weights when averaged) and run.json.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(unet.parameters())
        if new_rows is not None:
            new_rows.write_back()
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=noise_scheduler.config.prediction_type)
        trained = StableDiffusionPipeline(
            vae=vae, text_encoder=accelerator.unwrap_model(text_encoder), tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        _save_pipeline(trained, final_dir, config.geom)
        record.update(
            finished=True,
            seed=config.seed,
            config_sha256=config_hash(record["config"]),
            steps=state.step,
            final_loss=loss_value,
            seconds_this_session=round(seconds, 2),
            seconds_per_step=round(seconds / max(1, state.step - first_step), 4),
            step_seconds_median=round(float(np.median(step_seconds)), 4) if step_seconds else None,
            prepare_seconds=round(prepare_seconds, 2),
            captions_truncated=counters["truncated"],
            examples_seen_this_session=counters["examples"],
            negative_prompt=config.geom.negative_prompt(),
            environment=environment(),
        )
        _write_json(output_dir / RUN_FILE, record)
    accelerator.wait_for_everyone()
    return final_dir


def _average_across_processes(accelerator: Accelerator, param: torch.nn.Parameter) -> None:
    """DDP's gradient averaging, by hand, for a parameter it does not wrap. A process whose captions
    held none of the new tokens has no gradient (counted as zero); when none had one, the step
    skips the parameter, as a single process would."""
    grad = param.grad if param.grad is not None else torch.zeros_like(param)
    present = accelerator.reduce(torch.tensor([float(param.grad is not None)], device=param.device), reduction="sum")
    param.grad = accelerator.reduce(grad, reduction="mean") if present.item() else None


def _start_or_resume(output_dir: Path, record: dict[str, Any]) -> str:
    """Check ``run.json`` against this run: "new", "resume" or "finished"; a changed config raises."""
    run_file = output_dir / RUN_FILE
    if run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        mine = {k: previous.get(k) for k in record}
        if mine != json.loads(json.dumps(record)):
            raise ValueError(f"{output_dir} holds a run with another config, base or data: use a new output directory")
        return "finished" if previous.get("finished") and (output_dir / PIPELINE_DIR / "model_index.json").is_file() else "resume"
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, record)
    return "new"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (directories are renamed into place only when written)."""
    found = sorted(Path(output_dir, CHECKPOINTS_DIR).glob("step-*"))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, kept: int) -> Path:
    """Write a checkpoint to a temporary name, rename it into place, then drop the oldest beyond ``kept``."""
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


def _save_pipeline(pipe: StableDiffusionPipeline, final_dir: Path, geom: GeomErasingConfig) -> None:
    tmp = final_dir.with_name(f".{final_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp))
    write_metadata(tmp, geom)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)


class _Preparer:
    """Turns a :class:`Sample` into an :class:`Example` (or None when Model Removal skips it); ``memo``
    holds examples prepared ahead, by sample key."""

    def __init__(self, config: TrainingConfig, tokenizer: Any, latent_hw: tuple[int, int], resolution: int, detect: Any) -> None:
        self.config, self.tokenizer, self.latent_hw, self.resolution, self.detect = config, tokenizer, latent_hw, resolution, detect
        self.memo: dict[str, Example | None] = {}

    def __call__(self, sample: Sample) -> Example | None:
        if sample.key in self.memo:
            return self.memo[sample.key]
        image, instances = self._view(sample)
        geom = self.config.geom
        rng = sample_rng(self.config.seed, sample.key) if geom.geometry_source == "degraded" else None
        target = training_target(image, sample.caption, instances, geom, self.tokenizer, self.latent_hw, self.detect, rng)
        if self.config.model_removal and not target.present:
            return None
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        input_ids = _tokenize(self.tokenizer, [target.caption.text])[0]
        return Example(sample.key, pixels, input_ids, target.weights, target.caption.truncated)

    def _view(self, sample: Sample) -> tuple[Image.Image, list[tuple[str, Box]]]:
        """The image the model sees (centre square, resized) and the instance boxes moved into it."""
        if self.config.image_field == "clean":
            if sample.clean is None and sample.meta.instances:
                raise ValueError(f"sample {sample.key}: no clean twin in the shard (build with write_clean)")
            image, instances = (sample.clean or sample.image), []
        else:
            image, instances = sample.image, [(i.concept, i.box) for i in sample.meta.instances]
        return square_view(image, instances, self.resolution)


def square_view(image: Image.Image, instances: Sequence[tuple[str, Box]], resolution: int) -> tuple[Image.Image, list[tuple[str, Box]]]:
    """Centre-crop to a square, resize to ``resolution`` and map each box into it (dropping boxes cropped away)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if (width, height) != (side, side):
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    scale = resolution / side
    moved = []
    for concept, box in instances:
        coords = ((box.x1 - left) * scale, (box.y1 - top) * scale, (box.x2 - left) * scale, (box.y2 - top) * scale)
        if (inside := covering_box(coords, resolution, resolution)) is not None:
            moved.append((concept, inside))
    return image.convert("RGB"), moved


def _tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def _batches(source: SampleSource, prepare: "_Preparer", state: TrainState, config: TrainingConfig, size: int) -> Iterator[list[Example]]:
    """Global batches forever, epoch after epoch, a batch running on into the next epoch when needed.

    ``state`` records (epoch, samples used of it) at each batch, so a resume skips exactly those.
    """
    batch: list[Example] = []
    while True:
        stream = _shuffled(source.samples(), config.shuffle_buffer, np.random.default_rng([config.seed, state.epoch]))
        skipped, usable = state.consumed, False
        for position, sample in enumerate(stream, start=1):
            if position <= skipped:
                continue
            example = prepare(sample)
            if example is None:
                continue
            usable = True
            batch.append(example)
            if len(batch) == size:
                state.consumed = position
                yield batch
                batch = []
        if not usable and not skipped:
            raise ValueError(f"no training examples in {source.describe()} (Model Removal keeps only images with the concept)")
        state.epoch += 1
        state.consumed = 0


def _shuffled(items: Iterator[Sample], buffer: int, rng: np.random.Generator) -> Iterator[Sample]:
    """webdataset-style buffer shuffle: fill ``buffer`` items, then emit a random one per new item."""
    pool: list[Sample] = []
    for item in items:
        pool.append(item)
        if len(pool) >= buffer:
            yield pool.pop(int(rng.integers(len(pool))))
    while pool:
        yield pool.pop(int(rng.integers(len(pool))))


def _encode(vae: Any, pixels: torch.Tensor, scaling: float, device: torch.device) -> torch.Tensor:
    return vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode().float() * scaling


def _encode_all(source: SampleSource, prepare: "_Preparer", vae: Any, scaling: float, batch: int, device: torch.device) -> None:
    """Prepare and encode every sample once, in data order, into ``prepare.memo``: the VAE is frozen,
    so every epoch reuses the latents (and the detector's boxes) instead of recomputing them."""
    pending: list[Example] = []

    def flush() -> None:
        with torch.no_grad():
            latents = _encode(vae, torch.stack([e.pixels for e in pending]), scaling, device).cpu()
        for example, z in zip(pending, latents):
            example.latents, example.pixels = z, None
        pending.clear()

    for sample in source.samples():
        example = prepare(sample)
        prepare.memo[sample.key] = example
        if example is not None:
            pending.append(example)
        if len(pending) == batch:
            flush()
    if pending:
        flush()


def _latents(examples: list[Example], vae: Any, scaling: float, device: torch.device) -> torch.Tensor:
    if all(e.latents is not None for e in examples):
        return torch.stack([e.latents for e in examples]).to(device)
    return _encode(vae, torch.stack([e.pixels for e in examples]), scaling, device)


def _timesteps(n: int, total: int, sampling: str, gen: torch.Generator) -> torch.Tensor:
    """Training timesteps; "stratified" puts one in each of n equal slices of [0, total) (shuffled, so each
    process's share of a global batch still spans all noise levels): less loss variance from timestep
    draws at the small batches a CPU affords. The tiny track's best run used it, together with the
    cosine schedule; their effects were not measured apart."""
    if sampling == "uniform":
        return torch.randint(0, total, (n,), generator=gen)
    slices = (torch.arange(n) + torch.rand(n, generator=gen)) * (total / n)
    return slices.long().clamp(max=total - 1)[torch.randperm(n, generator=gen)]


def _min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) on the x0 error, written for each target."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[scheduler.config.prediction_type]
