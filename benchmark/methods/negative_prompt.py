"""NP: the plainly fine-tuned model, sampled with the concept's name as negative prompt."""
from __future__ import annotations

from benchmark.methods.interface import FineTune, Generator, Method, MethodContext


class NegativePrompt(Method):
    name = "np"
    description = "sd with the concept's name as negative prompt"

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune()]

    def build(self, ctx: MethodContext) -> Generator:
        return Generator(ctx.load_pipeline(ctx.finetune(FineTune())), negative_prompt=ctx.phrase)
