"""SLD: safe latent diffusion guidance away from the concept's name, on the plainly fine-tuned model.

Uses diffusers' StableDiffusionPipelineSafe with the "strong" preset of Schramowski et al. (2023).
"""
from __future__ import annotations

from diffusers import StableDiffusionPipelineSafe

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
        base = ctx.load_pipeline(ctx.finetune(FineTune()))
        pipe = StableDiffusionPipelineSafe(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            scheduler=base.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        pipe.safety_concept = ctx.phrase
        return Generator(pipe, call_kwargs=dict(SLD_STRONG))
