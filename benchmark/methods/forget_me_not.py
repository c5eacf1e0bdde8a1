"""FMN (Forget-Me-Not, Zhang et al., 2023): attention re-steering on the concept's name, on sd.

Images that carry the concept are noised at random timesteps and denoised with the concept's name
alone as the prompt (FMN's templates put the concept in a short prompt; the captions are not used);
the loss is the cross-attention mass the UNet puts on the name's tokens, and the cross-attention
projections are tuned to drive it to zero, so the name stops steering anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import islice

import numpy as np
import torch
from diffusers import DDPMScheduler

from benchmark.methods.interface import FineTune, Generator, Method, MethodContext
from benchmark.models.clip_tokenizer import token_ids
from implicit_concept.progress import progress_bar
from implicit_concept.shard_reader import iter_samples


@dataclass(frozen=True)
class FMNConfig:
    steps: int = 35
    lr: float = 2e-4
    batch_size: int = 4
    max_images: int = 256

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_images < 1:
            raise ValueError("fmn.steps, fmn.batch_size and fmn.max_images must be >= 1")


class _AttentionRecorder:
    """Plain attention that also keeps the cross-attention probabilities of the name's tokens."""

    def __init__(self, token_mask: torch.Tensor) -> None:
        self.token_mask = token_mask
        self.mass: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if cross:
            mask = self.token_mask.repeat_interleave(attn.heads, dim=0).to(probs.dtype)
            self.mass.append((probs * mask[:, None, :]).sum(-1).mean())
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


class ForgetMeNot(Method):
    name = "fmn"
    description = "Forget-Me-Not attention re-steering on the concept's name, applied to sd"

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune()]

    def build(self, ctx: MethodContext) -> Generator:
        config = FMNConfig(**ctx.settings.get("fmn", {}))

        def edit(pipe) -> None:
            carriers = (s for s in iter_samples(ctx.train_shards) if s.meta.contaminated)
            images = [s.image for s in islice(carriers, config.max_images)]
            if not images:
                raise ValueError(f"{ctx.train_shards}: no contaminated images to re-steer attention on")
            resteer(pipe, images, ctx.phrase, config, ctx.seed, progress=ctx.progress)

        out = ctx.edited_sd("fmn", {"concept": ctx.phrase, **asdict(config)}, edit)
        return Generator(ctx.load_pipeline(out))


def _name_token_mask(tokenizer, prompts: list[str], phrase: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = token_ids(tokenizer, prompts)
    name = tokenizer(phrase, add_special_tokens=False).input_ids
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row in range(ids.shape[0]):
        seq = ids[row].tolist()
        for start in range(len(seq) - len(name) + 1):
            if seq[start : start + len(name)] == name:
                mask[row, start : start + len(name)] = True
    return ids, mask


def resteer(pipe, images: list, phrase: str, config: FMNConfig, seed: int, progress: bool = True) -> None:
    """Tune ``pipe.unet``'s cross-attention in place so the name's tokens receive no attention."""
    unet, vae = pipe.unet, pipe.vae
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    size = unet.config.sample_size * pipe.vae_scale_factor
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
    unet.requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if "attn2.to_k" in n or "attn2.to_v" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    original = dict(unet.attn_processors)
    rng = torch.Generator("cpu").manual_seed(seed)
    unet.train()
    try:
        for _ in progress_bar(range(config.steps), desc=f"fmn '{phrase}'", progress=progress):
            index = torch.randint(0, len(latents), (config.batch_size,), generator=rng)
            ids, mask = _name_token_mask(pipe.tokenizer, [phrase] * config.batch_size, phrase)
            recorder = _AttentionRecorder(mask)
            unet.set_attn_processor(recorder)
            noise = torch.randn(latents[index].shape, generator=rng)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), generator=rng)
            with torch.no_grad():
                context = pipe.text_encoder(ids)[0]
            unet(scheduler.add_noise(latents[index], noise, t), t, encoder_hidden_states=context)
            loss = torch.stack(recorder.mass).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        unet.set_attn_processor(original)
        unet.eval().requires_grad_(False)
