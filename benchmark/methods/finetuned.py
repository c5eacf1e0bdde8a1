"""Methods that are a fine-tune: sd, oracle, Geom-Erasing, its ablations and its Model Removal setting.

They differ only in what they train on (contaminated images or their clean twins), what they start
from (the base model, or ``sd`` for Model Removal) and the Geom-Erasing switches, so they are one
class with a table of settings; the negative prompt a Geom-Erasing model needs is read from what
training recorded beside it. A track's ``[geom_erasing]`` table sets the choices the paper leaves
open for all of them (``alpha``, ``grid``, ...), and a sub-table named after a method for that
method alone (``[geom_erasing.ge-full] grid = 8``), so a track can sweep G and a.
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
    start: str = "base"
    training: dict[str, Any] = field(default_factory=dict)

    def geom_config(self, settings: dict[str, Any], concepts: tuple[str, ...]) -> GeomErasingConfig:
        """The Geom-Erasing config from a track's ``[geom_erasing]`` table (shared values, then this
        method's own sub-table) and this method's switches."""
        if not self.switches:
            return GeomErasingConfig.plain()
        shared = {k: v for k, v in settings.items() if not isinstance(v, dict)}
        return GeomErasingConfig(**{**shared, **self.switches, **settings.get(self.name, {}), "concepts": concepts})

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        geom = self.geom_config(ctx.settings.get("geom_erasing", {}), ctx.concepts)
        if geom.geometry_source == "detector":  # boxes at the thresholds the evaluator scores with
            if ctx.detector is None:
                raise ValueError(f"{self.name} takes its boxes from the benchmark's detector, and none was given")
            geom = geom.at_thresholds(ctx.detector.thresholds)
        own = FineTune(data=self.data, geom=geom, start=self.start, training=self.training)
        return [FineTune(), own] if self.start == "sd" else [own]

    def build(self, ctx: MethodContext) -> Generator:
        pipeline_dir = ctx.finetune(self.finetunes(ctx)[-1])
        return Generator(ctx.load_pipeline(pipeline_dir), negative_prompt=negative_prompt_for(pipeline_dir))


_FULL = {"concept_name": True, "geometry": True, "reweight": True}
#: The switches a Geom-Erasing method is: set by the method (or its own ``[geom_erasing.<method>]`` table).
GEOM_SWITCHES = tuple(_FULL)

FINETUNED = {
    "sd": FineTuned("sd", "plain fine-tune on the contaminated subset, no removal"),
    "oracle": FineTuned("oracle", "plain fine-tune on the clean twins", data="clean"),
    "ge-name": FineTuned("ge-name", "Geom-Erasing ablation: concept name only", switches={"concept_name": True, "geometry": False, "reweight": False}),
    "ge-geometry": FineTuned("ge-geometry", "Geom-Erasing ablation: name + location tokens", switches={"concept_name": True, "geometry": True, "reweight": False}),
    "ge-full": FineTuned("ge-full", "Geom-Erasing: name + location tokens + re-weighting", switches=_FULL),
    "geom-erasing": FineTuned("geom-erasing", "Geom-Erasing as published (= ge-full)", switches=_FULL),
    "ge-detector": FineTuned("ge-detector", "Geom-Erasing with boxes from our YOLO detector", switches={**_FULL, "geometry_source": "detector"}),
    "ge-classifier": FineTuned(
        "ge-classifier", "Geom-Erasing ablation: a classifier's view (the detector says whether, not where): concept name only",
        switches={"concept_name": True, "geometry": False, "reweight": False, "geometry_source": "detector"},
    ),
    "ge-noisy-0.5": FineTuned("ge-noisy-0.5", "Geom-Erasing with boxes moved to IoU 0.5 with the truth (robustness)",
                              switches={**_FULL, "geometry_source": "degraded", "degrade_iou": 0.5}),
    "ge-noisy-0.4": FineTuned("ge-noisy-0.4", "Geom-Erasing with boxes moved to IoU 0.4 with the truth (robustness)",
                              switches={**_FULL, "geometry_source": "degraded", "degrade_iou": 0.4}),
    "ge-model-removal": FineTuned(
        "ge-model-removal",
        "Model Removal (paper Table 2): from sd, UNet frozen, only the concept and location tokens learned; sampled with the negative prompt",
        switches={"concept_name": True, "concept_token": True, "geometry": True, "reweight": False, "setting": "model_removal"},
        start="sd",
        training={"train_text": "new_tokens", "ema_decay": None},
    ),
}
