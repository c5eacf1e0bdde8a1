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


class NeedsArguments(Method):
    """A plug-in the benchmark cannot make: its constructor wants arguments."""

    def __init__(self, strength):
        self.strength = strength

    def build(self, ctx: MethodContext) -> Generator:
        raise AssertionError("never built")


class ReturnsPipeline(Method):
    """A plug-in that returns its pipeline bare instead of a Generator, and declares a path as a fine-tune."""

    name = "returns-pipeline"

    def finetunes(self, ctx: MethodContext) -> list:
        return ["sd"]

    def build(self, ctx: MethodContext):
        return ctx.load_pipeline(ctx.finetune(FineTune()))


class NamedLikeSd(WordyNegative):
    """A plug-in under a built-in method's name: it would replace sd's images and results rows."""

    name = "sd"


class EscapingName(WordyNegative):
    """A plug-in whose name, used as a folder, would leave the run's folder."""

    name = "../../outside"


class RaisesInBuild(WordyNegative):
    """A plug-in with a bug in its own build, and one in what it declares when given no concepts."""

    name = "raises-in-build"

    def build(self, ctx: MethodContext) -> Generator:
        settings = {"strength": 1.0}
        return Generator(ctx.load_pipeline(ctx.finetune(FineTune())), negative_prompt=settings["lora_scale"])

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune(data="contaminated" if ctx.concepts[0] else "clean")]


class PipelineRaises(Method):
    """A plug-in whose pipeline is a plain callable (no diffusers methods) that fails when sampled."""

    name = "pipeline-raises"

    def build(self, ctx: MethodContext) -> Generator:
        def sample(**kwargs):
            raise RuntimeError("CUDA out of memory (planted)")

        return Generator(sample)


class ChangesTorchSettings(WordyNegative):
    """A plug-in that sets torch's process-wide settings for itself after loading its pipeline."""

    name = "changes-torch-settings"

    def build(self, ctx: MethodContext) -> Generator:
        import torch

        built = super().build(ctx)
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(1)
        torch.set_grad_enabled(False)
        return built
