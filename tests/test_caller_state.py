"""A lab imports the toolkit into its own training script or notebook: after a public call returns,
the caller's next random draw (Python's, numpy's, torch's global generators) is what it would have
been without the call, and its logging, warnings filters, threads and child processes are as it left
them. A library that seeds a global generator makes a lab's own run repeat or change with it."""
import io
import logging
import os
import random
import tarfile
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.process_table import running_children
from tests.test_detector_files import _random_detector
from tests.test_part_bars import MICRO


def _rng_states() -> dict:
    numpy = np.random.get_state()
    return {"random": random.getstate(), "numpy": (numpy[0], numpy[1].tolist(), *numpy[2:]), "torch": torch.get_rng_state().tolist()}


def _logging() -> dict:
    loggers = {"": logging.getLogger(), **{n: l for n, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger)}}
    return {"disable": logging.root.manager.disable,
            **{name: (l.level, l.propagate, l.disabled, list(l.handlers), list(l.filters)) for name, l in loggers.items()}}


def _caller_state() -> dict:
    return {"generators": _rng_states(), "warnings.filters": list(warnings.filters), "logging": _logging(),
            "non-daemon threads": {t for t in threading.enumerate() if not t.daemon},
            "child processes": running_children(os.getpid())}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A detector, a built dataset and a saved tiny pipeline, made once for the calls under test."""
    from benchmark.models.pipelines import build_tiny_pipeline, save_portable_pipeline
    from builders.build import build_dataset
    from builders.recipe import load_recipe

    root = tmp_path_factory.mktemp("made")
    build_dataset(load_recipe("icd-debug"), root / "data", workers=1, progress=False)
    save_portable_pipeline(build_tiny_pipeline(MICRO, root / "tokenizer", seed=3), root / "pipe")
    return {"root": root, "detector": _random_detector(root / "det"), "data": root / "data",
            "shard": next((root / "data").glob("icd-mixed/train/*.tar"))}


def _score(made):
    from implicit_concept import Detector, score_images

    score_images([("a", Image.new("RGB", (64, 64), "white"))], Detector.load(made["detector"]),
                 clean=[("c", Image.new("RGB", (40, 40), "gray"))])


def _detect(made):
    from implicit_concept import Detector

    detector = Detector.load(made["detector"])
    detector.detect(Image.new("RGB", (48, 40), "white"))
    detector.detect_many([Image.new("RGB", (32, 32), "red"), Image.new("RGB", (40, 24), "blue")])


def _build(made):
    from builders.build import build_dataset
    from builders.recipe import load_recipe

    build_dataset(load_recipe("icd-debug"), made["root"] / "built", workers=1, progress=False)


def _read(made):
    from implicit_concept import iter_samples, list_shards

    assert list_shards(made["data"] / "icd-mixed")
    assert list(iter_samples(made["shard"]))


def _read_stream(made):
    from implicit_concept import iter_samples

    assert list(iter_samples(f"pipe:cat {made['shard']}"))


def _export(made):
    from implicit_concept import export_detection_dataset

    export_detection_dataset(made["data"] / "icd-mixed", made["root"] / "export")


def _scene(made):
    from implicit_concept import ProceduralConfig, caption, render_scene, sample_scene

    scene = sample_scene(np.random.default_rng(5), ProceduralConfig())
    render_scene(scene, 64)
    caption(scene)


def _geom_erasing(made):
    from benchmark.models.clip_tokenizer import build_clip_tokenizer
    from implicit_concept import Box, GeomErasingConfig, bins_for_box, location_tokens, negative_prompt, training_target, weight_map

    box = Box(4, 4, 30, 30)
    location_tokens()
    bins_for_box(box, 64, 64)
    negative_prompt(["qr code"])
    weight_map([box], 64, 64, 8, 8)
    training_target(Image.new("RGB", (64, 64)), "a scene", [("qrcode", box)], GeomErasingConfig(),
                    build_clip_tokenizer(made["root"] / "tokenizer"), (8, 8))


def _tiny_pipeline(made):
    from benchmark.models.pipelines import build_tiny_pipeline

    build_tiny_pipeline(MICRO, made["root"] / "tokenizer", seed=3)


def _load_pipeline(made):
    from benchmark.models.pipelines import load_pipeline, save_portable_pipeline

    save_portable_pipeline(load_pipeline(made["root"] / "pipe"), made["root"] / "pipe-again")


def _scene_features(made):
    from benchmark.evaluation.scene_attributes import heads
    from benchmark.evaluation.scene_features import SceneFeaturesConfig
    from benchmark.evaluation.scene_features_training import train_net

    config = SceneFeaturesConfig(image_size=32, feature_dim=8, steps=1, batch=8)
    train_net(config, heads(config.scenes))


CALLS = {"score_images": _score, "Detector.detect": _detect, "build_dataset": _build, "iter_samples": _read,
         "iter_samples pipe:": _read_stream, "export_detection_dataset": _export, "render_scene": _scene,
         "Geom-Erasing": _geom_erasing, "build_tiny_pipeline": _tiny_pipeline, "load_pipeline": _load_pipeline,
         "scene features": _scene_features}


@pytest.mark.parametrize("name", CALLS)
def test_a_public_call_leaves_the_callers_generators_logging_threads_and_children_as_they_were(made, name):
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = _caller_state()
    CALLS[name](made)
    after = _caller_state()
    after["logging"] = {name: after["logging"][name] for name in before["logging"]}  # a logger first made now is its module's
    changed = [what for what in before if after[what] != before[what]]
    assert changed == [], f"{name} changed the caller's {', '.join(changed)}"
    assert (random.random(), float(np.random.random()), float(torch.rand(()))) == _draws_from(11)


def _draws_from(seed: int) -> tuple[float, float, float]:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return random.random(), float(np.random.random()), float(torch.rand(()))


def test_sd15_shaped_parts_are_drawn_without_moving_the_callers_generators(monkeypatch):
    """SD v1.5's shape is 4.3 GB: its parts stand in as small modules drawn from the same generator."""
    from benchmark.models import sd15

    for part in ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel"):
        monkeypatch.setattr(sd15, part, lambda *args, **kwargs: torch.nn.Linear(4, 4))
    torch.manual_seed(11)
    first = sd15.build_sd15_parts(seed=2)["unet"].weight
    assert torch.equal(first, sd15.build_sd15_parts(seed=2)["unet"].weight)
    assert float(torch.rand(())) == _draws_from(11)[2]


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("how", ["closed after one sample", "a member over the cap", "a sample that fails to decode"])
def test_a_pipe_shard_read_in_part_ends_its_command_and_closes_its_pipe(made, how, tmp_path):
    """A caller that stops reading a ``pipe:`` shard early (takes one sample, or meets a refused one)
    finds the command ended and its pipe closed when the reader is closed or raises, not running on,
    blocked on a full pipe, until the garbage collector finds the reader."""
    from implicit_concept import iter_samples
    from implicit_concept.shard_reader import ShardError, iter_tar_members

    shard = made["shard"]
    if how == "a sample that fails to decode":
        shard = tmp_path / "bad.tar"
        with tarfile.open(made["shard"]) as source, tarfile.open(shard, "w") as out:
            for member in source.getmembers():
                data = source.extractfile(member).read()
                if member.name.endswith(".jpg") and not member.name.endswith("clean.jpg"):
                    data = b"not a jpeg"
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))
    before = (running_children(os.getpid()), _open_descriptors())
    if how == "closed after one sample":
        samples = iter_samples(f"pipe:cat {shard}")
        next(samples)
        samples.close()
    elif how == "a member over the cap":
        with pytest.raises(ShardError, match="not read"):
            list(iter_tar_members(f"pipe:cat {shard}", max_member_bytes=64))
    else:
        with pytest.raises(ShardError, match="decoded"):
            list(iter_samples(f"pipe:cat {shard}"))
    assert (running_children(os.getpid()), _open_descriptors()) == before
