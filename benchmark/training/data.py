"""The data path of training: samples in, the tensors one step compares out.

A :class:`SampleSource` gives samples; the :class:`Preparer` turns each into an :class:`Example`
(square view, Geom-Erasing caption, weight map, token ids); :func:`global_batches` shuffles them
with a seeded buffer and groups them, resumably; :func:`encode_all` caches their latents once;
:func:`step_randomness` and :func:`model_inputs` give each step its noise, timesteps and tensors,
and :func:`diffusion_loss` what the prediction is compared with (:func:`prediction_target`). None of it holds weights that
train, so all of it can be read (and tested) apart from the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from PIL import Image

from benchmark.models.clip_tokenizer import token_ids
from benchmark.training.checkpoints import TrainState
from benchmark.training.config import TrainingConfig
from implicit_concept.geom_erasing.loss_weights import weighted_mse
from implicit_concept.geom_erasing.training_target import sample_rng, training_target
from implicit_concept.sample import Box, Sample, covering_box
from implicit_concept.shard_reader import iter_samples


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


class Preparer:
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
        input_ids = token_ids(self.tokenizer, [target.caption.text])[0]
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


def global_batches(source: SampleSource, prepare: Preparer, state: TrainState, config: TrainingConfig, size: int) -> Iterator[list[Example]]:
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


def encode_all(source: SampleSource, prepare: Preparer, vae: Any, scaling: float, batch: int, device: torch.device) -> None:
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


def batch_split_refusal(batch_size: int, processes: int) -> str | None:
    """Why a global batch of ``batch_size`` cannot be shared by ``processes`` (the words after the
    field's name), or None. Checked by :func:`process_share` and, before any stage runs, by the
    track check: a launch of N processes otherwise fails at its first fine-tune, after the dataset
    and detector stages."""
    if batch_size % processes:
        return (f"{batch_size} does not split evenly over the {processes} processes of this launch "
                f"(it is the global batch); make it a multiple of {processes}")
    return None


def process_share(batch_size: int, processes: int, index: int) -> slice:
    """Which examples of each global batch process ``index`` of ``processes`` trains on."""
    refusal = batch_split_refusal(batch_size, processes)
    if refusal:
        raise ValueError(f"batch_size = {refusal}")
    per_process = batch_size // processes
    return slice(index * per_process, (index + 1) * per_process)


def step_randomness(
    n: int, gen: torch.Generator, config: TrainingConfig, latent_channels: int, latent_hw: tuple[int, int], total_timesteps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A global batch's randomness, in this order from the training generator: which captions drop,
    the noise and the timesteps. Every process draws all of it and keeps its share."""
    drop = torch.rand(n, generator=gen) < config.caption_dropout
    noise = torch.randn((n, latent_channels, *latent_hw), generator=gen)
    timesteps = draw_timesteps(n, total_timesteps, config.timestep_sampling, gen)
    return drop, noise, timesteps


def model_inputs(
    examples: list[Example], drop: torch.Tensor, empty_ids: torch.Tensor, vae: Any, scaling: float, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, token ids (the empty caption's where ``drop``) and loss weights of ``examples``, on ``device``."""
    with torch.no_grad():
        latents = _latents(examples, vae, scaling, device)
    input_ids = torch.stack([empty_ids if d else e.input_ids for e, d in zip(examples, drop)]).to(device)
    weights = torch.stack([e.weights for e in examples]).to(device)
    return latents, input_ids, weights


def _latents(examples: list[Example], vae: Any, scaling: float, device: torch.device) -> torch.Tensor:
    if all(e.latents is not None for e in examples):
        return torch.stack([e.latents for e in examples]).to(device)
    return _encode(vae, torch.stack([e.pixels for e in examples]), scaling, device)


def draw_timesteps(n: int, total: int, sampling: str, gen: torch.Generator) -> torch.Tensor:
    """Training timesteps; "stratified" puts one in each of n equal slices of [0, total) (shuffled, so each
    process's share of a global batch still spans all noise levels): less loss variance from timestep
    draws at the small batches a CPU affords. The tiny track's best run used it, together with the
    cosine schedule; their effects were not measured apart."""
    if sampling == "uniform":
        return torch.randint(0, total, (n,), generator=gen)
    slices = (torch.arange(n) + torch.rand(n, generator=gen)) * (total / n)
    return slices.long().clamp(max=total - 1)[torch.randperm(n, generator=gen)]


def diffusion_loss(
    scheduler: DDPMScheduler, pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
    weights: torch.Tensor, snr_gamma: float | None,
) -> torch.Tensor:
    """The batch's loss: the weighted error of ``pred`` against the scheduler's target (the noise, the
    clean latents or the velocity), each sample's scaled by its min-SNR weight when ``snr_gamma`` is set;
    in float32 whatever precision the model ran in."""
    target = prediction_target(scheduler, latents, noise, timesteps)
    per_sample = weighted_mse(pred.float(), target.float(), weights)
    if snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, snr_gamma)
    return per_sample.mean()


def prediction_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the model is trained to predict under the scheduler's prediction type: the noise, the clean
    latents or the velocity."""
    target = {"epsilon": noise, "sample": latents}.get(scheduler.config.prediction_type)
    return scheduler.get_velocity(latents, noise, timesteps) if target is None else target


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) on the x0 error, written for each target."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[scheduler.config.prediction_type]
