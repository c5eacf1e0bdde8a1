"""The README's example of another lab's method, plugged in as ``tests.plugin_method:WordyNegative``."""
from benchmark.methods.interface import FineTune, Generator, Method, MethodContext


class WordyNegative(Method):
    name = "wordy-negative"
    description = "sd sampled with a long hand-written negative prompt"

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune()]  # what build() asks for: trained by every process of a multi-GPU run

    def build(self, ctx: MethodContext) -> Generator:
        pipeline_dir = ctx.finetune(FineTune())
        return Generator(ctx.load_pipeline(pipeline_dir), negative_prompt=f"{ctx.phrase}, logo, signature, caption")
