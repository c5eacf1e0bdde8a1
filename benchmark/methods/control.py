"""The control row: the base model itself, never fine-tuned on ICD shards.

The base never saw a concept, so whatever the detector finds in its images is a false positive on
*generated* images. That floor can sit far above the one measured on clean real images, because
generated images are off the detector's training distribution; the report shows both.
"""
from __future__ import annotations

from benchmark.methods.interface import Generator, Method, MethodContext


class BaseModel(Method):
    name = "base"
    description = "the base model before fine-tuning: its ICR is the detector's false-positive rate on generated images"

    def build(self, ctx: MethodContext) -> Generator:
        if ctx.base is None:
            raise ValueError("method 'base' needs the base model's directory in its context")
        return Generator(ctx.load_pipeline(ctx.base))
