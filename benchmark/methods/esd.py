"""ESD (Gandikota et al., 2023): fine-tune the model so its prediction for the concept's name follows
negative guidance away from it, on the plainly fine-tuned model.

loss = || e_theta(x_t, c, t) - [e*(x_t, '', t) - eta * (e*(x_t, c, t) - e*(x_t, '', t))] ||^2,
with e* the frozen starting model and x_t drawn by sampling the current model with prompt c for a
random number of DDIM steps, as in the authors' code. ``params = "xattn"`` is ESD-x (cross-attention
only), the variant the authors recommend for concepts tied to a word.

Deviation on a model that predicts x0 (the CPU tracks'): e is the model's own prediction. The
target, an affine combination of predictions, is the paper's target expressed in x0, but the squared
error is measured on x0 too: the paper's epsilon loss is this one times ab/(1 - ab). We keep the x0
error, the loss the model was trained with, because that factor spans five orders of magnitude over
the tiny track's ESD timesteps (0.1 at t = 801, 1e4 at t = 1): the few almost-clean steps would
decide the edit.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler

from benchmark.methods.interface import FineTune, Generator, Method, MethodContext
from benchmark.models.clip_tokenizer import token_ids
from implicit_concept.progress import progress_bar


@dataclass(frozen=True)
class ESDConfig:
    steps: int = 200
    lr: float = 1e-4
    negative_guidance: float = 1.0
    sample_guidance: float = 3.0
    ddim_steps: int = 20
    params: str = "xattn"

    def __post_init__(self) -> None:
        if self.params not in ("xattn", "full"):
            raise ValueError(f"esd.params must be 'xattn' or 'full', got {self.params!r}")
        if self.steps < 1 or self.ddim_steps < 2:
            raise ValueError("esd.steps must be >= 1 and esd.ddim_steps >= 2")


class ESD(Method):
    name = "esd"
    description = "ESD-x negative-guidance fine-tuning on the concept's name, applied to sd"

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune()]

    def build(self, ctx: MethodContext) -> Generator:
        config = ESDConfig(**ctx.settings.get("esd", {}))
        record = {"concept": ctx.phrase, **asdict(config)}
        out = ctx.edited_sd("esd", record, lambda pipe: erase(pipe, ctx.phrase, config, ctx.seed, progress=ctx.progress))
        return Generator(ctx.load_pipeline(out))


def _encode(pipe, text: str) -> torch.Tensor:
    ids = token_ids(pipe.tokenizer, [text])
    return pipe.text_encoder(ids)[0]


def erase(pipe, phrase: str, config: ESDConfig, seed: int, progress: bool = True) -> None:
    """Fine-tune ``pipe.unet`` in place so that ``phrase`` is steered away from."""
    unet = pipe.unet
    frozen = copy.deepcopy(unet).requires_grad_(False).eval()
    unet.requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if config.params == "full" or "attn2" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    with torch.no_grad():
        cond, uncond = _encode(pipe, phrase), _encode(pipe, "")
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(config.ddim_steps)
    size = unet.config.sample_size
    shape = (1, unet.config.in_channels, size, size)
    rng = torch.Generator("cpu").manual_seed(seed)
    unet.train()
    for _ in progress_bar(range(config.steps), desc=f"esd '{phrase}'", progress=progress):
        stop = int(torch.randint(1, config.ddim_steps, (1,), generator=rng))
        x = torch.randn(shape, generator=rng) * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps[:stop]:
                e_c, e_u = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample.chunk(2)
                x = scheduler.step(e_u + config.sample_guidance * (e_c - e_u), t, x).prev_sample
            t = scheduler.timesteps[stop]
            e_p, e_0 = frozen(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample.chunk(2)
            target = e_0 - config.negative_guidance * (e_p - e_0)
        loss = torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=cond).sample, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    unet.eval().requires_grad_(False)
