"""How the scene-feature CNN learns: seeded scene streams, per-attribute loss, held-out accuracy.

Training renders fresh scenes on the fly from its own seed streams (never the benchmark's
evaluation prompts), with mild blur, noise and JPEG (:class:`Degradation`) so that imperfect
generated images still get meaningful features. Every draw is seeded by the config, so a config
trains the same weights every time and its hash can name the cache entry.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmark.evaluation.scene_attributes import scene_attributes
from benchmark.evaluation.scene_features_net import SceneNet, to_batch
from implicit_concept.random_states import kept_rngs
from implicit_concept.scene.grammar import sample_scene
from implicit_concept.scene.render import render_scene

if TYPE_CHECKING:
    from benchmark.evaluation.scene_features import SceneFeaturesConfig

#: First entry of every seed this module draws: keeps its streams apart from the dataset's
#: ``[seed, split, index]`` streams, so training never renders an evaluation prompt's image.
STREAM_TAG = 0x5CE4E
TRAIN_STREAM, HELDOUT_STREAM = 0, 1
_IGNORE = -100


def draw_scenes(config: SceneFeaturesConfig, n: int, seed: list[int], degrade: bool) -> tuple[list[Image.Image], list[dict[str, str]]]:
    """``n`` scenes from the stream ``seed``; degradation draws from a second stream, so the clean and
    the degraded draws of one seed show the same scenes."""
    scenes_rng = np.random.default_rng([*seed, 0])
    damage_rng = np.random.default_rng([*seed, 1])
    images, labels = [], []
    for _ in range(n):
        scene = sample_scene(scenes_rng, config.scenes)
        image = render_scene(scene, config.image_size)
        if degrade:
            image = config.degradation.apply(image, damage_rng)
        images.append(image)
        labels.append(scene_attributes(scene))
    return images, labels


def _targets(labels: list[dict[str, str]], vocab: Mapping[str, tuple[str, ...]]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor([values.index(lab[name]) if name in lab else _IGNORE for lab in labels])
        for name, values in vocab.items()
    }


def _loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for name, y in targets.items():
        valid = int((y != _IGNORE).sum())
        if valid:
            total = total + F.cross_entropy(logits[name], y, ignore_index=_IGNORE, reduction="sum") / valid
    return total


def train_net(config: SceneFeaturesConfig, vocab: Mapping[str, tuple[str, ...]]) -> SceneNet:
    """A net seeded by ``config``, trained on ``config.steps`` batches of fresh, damaged scenes; the
    caller's global generators put back after."""
    with kept_rngs():
        torch.manual_seed(config.seed)
        net = SceneNet(config.image_size, config.feature_dim, {k: len(v) for k, v in vocab.items()})
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.15)
        net.train()
        for step in range(config.steps):
            images, labels = draw_scenes(config, config.batch, [STREAM_TAG, config.seed, TRAIN_STREAM, step], degrade=True)
            loss = _loss(net(to_batch(images, config.image_size)), _targets(labels, vocab))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return net.eval()


def accuracy(predicted: list[dict[str, str]], expected: list[dict[str, str]]) -> dict[str, Any]:
    """Share of correct predictions per attribute (over the images whose scene has it) and per image."""
    names = list(dict.fromkeys(name for e in expected for name in e))
    per_attribute = {}
    for name in names:
        pairs = [(p.get(name), e[name]) for p, e in zip(predicted, expected) if name in e]
        per_attribute[name] = round(sum(p == e for p, e in pairs) / len(pairs), 4)
    per_image = [np.mean([p.get(k) == v for k, v in e.items()]) for p, e in zip(predicted, expected)]
    return {"per_attribute": per_attribute, "mean_per_image": round(float(np.mean(per_image)), 4)}
