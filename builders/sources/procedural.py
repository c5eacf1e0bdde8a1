"""Procedural scenes: the embedded offline source of captioned images.

A thin adapter over the scene grammar (:mod:`implicit_concept.scene`): item ``index`` of a split
is the scene drawn from the generator seeded by (seed, split, index), rendered and captioned.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from implicit_concept.sample import SPLITS
from implicit_concept.scene import ProceduralConfig, Scene, caption, render_scene, sample_scene
from implicit_concept.scene.grammar import check_integer

from .base import MAX_PLANNED_SHARDS, RawItem, Source

__all__ = ["ProceduralConfig", "ProceduralSource"]


class ProceduralSource(Source):
    """Generated scenes, ``config.train`` / ``config.test`` of them, rendered at ``image_size``."""

    kind = "procedural"

    def __init__(self, config: ProceduralConfig, *, image_size: int, shard_size: int, seed: int) -> None:
        check_integer("image_size", image_size, 8)
        check_integer("shard_size", shard_size, 1)
        check_integer("seed", seed, 0)
        for split in SPLITS:
            count = getattr(config, split)
            shards = math.ceil(count / shard_size)
            if shards > MAX_PLANNED_SHARDS:
                raise ValueError(f"{split}: {count} items in shards of {shard_size} are {shards} shards, "
                                 f"over the {MAX_PLANNED_SHARDS} a split may have")
        self.config = config
        self.image_size = image_size
        self.shard_size = shard_size
        self.seed = seed

    def count(self, split: str) -> int:
        return {"train": self.config.train, "test": self.config.test}[_check_split(split)]

    def shard_ids(self, split: str) -> list[int]:
        return list(range(math.ceil(self.count(split) / self.shard_size)))

    def scene(self, split: str, index: int) -> Scene:
        """The scene of item ``index`` of ``split``: a pure function of (seed, split, index)."""
        rng = np.random.default_rng([self.seed, SPLITS.index(_check_split(split)), index])
        return sample_scene(rng, self.config)

    def prompts(self, split: str, n: int) -> list[str]:
        """Captions of the first ``n`` items of ``split``, for evaluation prompts."""
        return [caption(self.scene(split, i)) for i in range(n)]

    def read(self, split: str, shard_id: int) -> Iterator[RawItem]:
        if shard_id not in range(len(self.shard_ids(split))):
            raise ValueError(f"{split} has no shard {shard_id} (shards: {len(self.shard_ids(split))})")
        start = shard_id * self.shard_size
        for index in range(start, min(start + self.shard_size, self.count(split))):
            scene = self.scene(split, index)
            yield RawItem(
                source_id=f"procedural/{split}/{index:06d}",
                image=render_scene(scene, self.image_size),
                caption=caption(scene),
                meta={
                    "index": index,
                    "seed": [self.seed, SPLITS.index(split), index],
                    "scene": scene.to_json(),
                },
            )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    return split
