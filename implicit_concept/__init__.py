"""Implicit Concept: the library others import. Samples and boxes, the concepts and their renderers,
the scene grammar, shard reading and writing, Geom-Erasing's pieces, the concept detector and the
scoring API every erasure method is judged by.

The names below are the public API. They load on first use (PEP 562), so ``import
implicit_concept.sample`` in a builder process does not pay for torch or ultralytics.
"""
from __future__ import annotations

import importlib
from typing import Any

_API: dict[str, str] = {
    # samples, boxes and concepts
    "Box": "implicit_concept.sample",
    "Instance": "implicit_concept.sample",
    "Sample": "implicit_concept.sample",
    "SampleMeta": "implicit_concept.sample",
    "covering_box": "implicit_concept.sample",
    "CONCEPTS": "implicit_concept.concepts",
    "CONCEPT_NAMES": "implicit_concept.concepts",
    "Concept": "implicit_concept.concepts",
    "make_renderer": "implicit_concept.concepts",
    "composite": "implicit_concept.compositing",
    # procedural scenes
    "ProceduralConfig": "implicit_concept.scene",
    "Scene": "implicit_concept.scene",
    "caption": "implicit_concept.scene",
    "render_scene": "implicit_concept.scene",
    "sample_scene": "implicit_concept.scene",
    # shards
    "iter_samples": "implicit_concept.shard_reader",
    "list_shards": "implicit_concept.shard_reader",
    "TarShardWriter": "implicit_concept.shard_writer",
    # Geom-Erasing
    "GeomErasingConfig": "implicit_concept.geom_erasing.training_target",
    "training_target": "implicit_concept.geom_erasing.training_target",
    "negative_prompt_for": "implicit_concept.geom_erasing.training_target",
    "bins_for_box": "implicit_concept.geom_erasing.location_tokens",
    "geometric_caption": "implicit_concept.geom_erasing.location_tokens",
    "location_tokens": "implicit_concept.geom_erasing.location_tokens",
    "negative_prompt": "implicit_concept.geom_erasing.location_tokens",
    "weight_map": "implicit_concept.geom_erasing.loss_weights",
    # the detector and scores
    "Detection": "implicit_concept.detector.inference",
    "Detector": "implicit_concept.detector.inference",
    "train_detector": "implicit_concept.detector.training",
    "load_scale": "implicit_concept.detector.training",
    "export_detection_dataset": "implicit_concept.detector.export",
    "ScoreConfig": "implicit_concept.scoring",
    "ScoreReport": "implicit_concept.scoring",
    "score_images": "implicit_concept.scoring",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, as ``implicit-concept --version`` prints it
        from implicit_concept.provenance import version

        return version()
    if name not in _API:
        raise AttributeError(f"module 'implicit_concept' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return __all__
