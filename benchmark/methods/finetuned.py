"""Methods that are a fine-tune of the base model: sd, oracle, Geom-Erasing and its ablations.

They differ only in what they train on (contaminated images or their clean twins) and in the
Geom-Erasing switches, so they are one class with a table of settings; the negative prompt a
Geom-Erasing model needs is read from what training recorded beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.methods.interface import FineTune, Generator, Method, MethodContext
from implicit_concept.geom_erasing.training_target import GeomErasingConfig, negative_prompt_for


@dataclass
class FineTuned(Method):
    name: str
    description: str
    data: str = "contaminated"
    switches: dict[str, Any] = field(default_factory=dict)

    def geom(self, ctx: MethodContext) -> GeomErasingConfig:
        if not self.switches:
            return GeomErasingConfig.plain()
        overrides = ctx.settings.get("geom_erasing", {})
        return GeomErasingConfig(**{**overrides, **self.switches, "concepts": ctx.concepts})

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        return [FineTune(data=self.data, geom=self.geom(ctx))]

    def build(self, ctx: MethodContext) -> Generator:
        (finetune,) = self.finetunes(ctx)
        pipeline_dir = ctx.finetune(finetune)
        return Generator(ctx.load_pipeline(pipeline_dir), negative_prompt=negative_prompt_for(pipeline_dir))


_FULL = {"concept_name": True, "geometry": True, "reweight": True}

FINETUNED = {
    "sd": FineTuned("sd", "plain fine-tune on the contaminated subset, no removal"),
    "oracle": FineTuned("oracle", "plain fine-tune on the clean twins", data="clean"),
    "ge-name": FineTuned("ge-name", "Geom-Erasing ablation: concept name only", switches={"concept_name": True, "geometry": False, "reweight": False}),
    "ge-geometry": FineTuned("ge-geometry", "Geom-Erasing ablation: name + location tokens", switches={"concept_name": True, "geometry": True, "reweight": False}),
    "ge-full": FineTuned("ge-full", "Geom-Erasing: name + location tokens + re-weighting", switches=_FULL),
    "geom-erasing": FineTuned("geom-erasing", "Geom-Erasing as published (= ge-full)", switches=_FULL),
    "ge-detector": FineTuned("ge-detector", "Geom-Erasing with boxes from our YOLO detector", switches={**_FULL, "geometry_source": "detector"}),
}
