"""SLD: safe latent diffusion guidance away from the concept's name, on the plainly fine-tuned model.

Uses diffusers' StableDiffusionPipelineSafe with the "strong" preset of Schramowski et al. (2023).
SLD's element-wise rule (guide where ``eps_text - eps_concept < threshold``, scaled by that gap) is
written for epsilon predictions. On a model that predicts x0 (the CPU tracks') the gap has the
opposite sign and a t-dependent scale, so the rule would pick about the other elements: the pipeline
is given the UNet's x0 or v converted to epsilon, and a scheduler that reads epsilon, so it is SLD
as on an epsilon model.
"""
from __future__ import annotations

import torch
from diffusers import StableDiffusionPipelineSafe
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from benchmark.methods.interface import FineTune, Generator, Method, MethodContext

SLD_STRONG = {
    "sld_guidance_scale": 2000,
    "sld_warmup_steps": 7,
    "sld_threshold": 0.025,
    "sld_momentum_scale": 0.5,
    "sld_mom_beta": 0.7,
}


class SafeLatentDiffusion(Method):
    name = "sld"
    description = "sd sampled with SLD-Strong guidance away from the concept's name"

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune()]

    def build(self, ctx: MethodContext) -> Generator:
        pipe = sld_pipeline(ctx.load_pipeline(ctx.finetune(FineTune())))
        pipe.safety_concept = ctx.phrase
        return Generator(pipe, call_kwargs=dict(SLD_STRONG))


def sld_pipeline(base) -> StableDiffusionPipelineSafe:
    """``base``'s parts as an SLD pipeline that predicts epsilon, whatever ``base`` predicts."""
    unet, scheduler = base.unet, base.scheduler
    if scheduler.config.prediction_type != "epsilon":
        unet = EpsilonUNet(unet, scheduler.alphas_cumprod, scheduler.config.prediction_type)
        scheduler = type(scheduler).from_config(scheduler.config, prediction_type="epsilon")
    pipe = StableDiffusionPipelineSafe(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class EpsilonUNet(torch.nn.Module):
    """A UNet that predicts x0 (``"sample"``) or v, answering with the epsilon its prediction implies
    at the noisy input it was given: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab), or sqrt(ab) v + sqrt(1 - ab) x_t."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str) -> None:
        super().__init__()
        if prediction_type not in ("sample", "v_prediction"):
            raise ValueError(f"cannot convert a {prediction_type!r} prediction to epsilon")
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone(), persistent=False)

    # What a pipeline reads of its UNet besides calling it.
    @property
    def config(self):
        return self.unet.config

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **kwargs) -> UNet2DConditionOutput:
        out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
        t = torch.as_tensor(timestep, device=self.alphas_cumprod.device)
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError("SLD on a model that does not predict epsilon needs a scheduler with whole timesteps "
                             "(DDIM, DDPM, PNDM, DPM-Solver), not one that interpolates them")
        ab = self.alphas_cumprod[t.long()].to(device=sample.device, dtype=sample.dtype).reshape(-1, *[1] * (sample.ndim - 1))
        if self.prediction_type == "sample":
            eps = (sample - ab.sqrt() * out) / (1 - ab).sqrt()
        else:
            eps = ab.sqrt() * out + (1 - ab).sqrt() * sample
        return UNet2DConditionOutput(sample=eps)
