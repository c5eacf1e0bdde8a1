"""Published models: found by the identity training would cache them under, checked by sha256,
loaded without pickle; the base comes back as the fp16-rounded weights it was published with."""
import json

import pytest
import torch

from benchmark.models.base_model import BaseModelConfig
from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline, save_portable_pipeline
from benchmark.published_models import (
    PublishedModelError,
    materialize_base,
    publish_base,
    publish_detector,
    published_base,
    published_detector,
)
from implicit_concept.scene.grammar import ProceduralConfig

MICRO = TinyPipelineConfig(image_size=32, patch_size=4, unet_channels=(16, 32), unet_attention=(False, True), text_hidden=16, text_layers=1, text_heads=2)


def _trained(tmp_path, config):
    pipe = build_tiny_pipeline(config.pipeline, tmp_path / "tok", seed=7)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.123456789)  # values fp16 cannot hold exactly
    return save_portable_pipeline(pipe, tmp_path / "trained")


def test_a_published_base_is_found_by_its_config_and_loads_as_its_fp16_weights(tmp_path):
    config = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=4, test=0), seed=3)
    root = tmp_path / "published"
    assert published_base(config, root) is None
    folder = publish_base(_trained(tmp_path, config), config, {"seconds": 1.0}, root)
    assert published_base(config, root) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["base.json", "text_encoder.safetensors", "unet.safetensors"]
    other = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=5, test=0), seed=3)
    assert published_base(other, root) is None

    pipe = load_pipeline(materialize_base(folder, config, tmp_path / "cache"))
    trained = load_pipeline(tmp_path / "trained")
    for name, value in pipe.unet.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, trained.unet.state_dict()[name].to(torch.float16).to(torch.float32)), name
    assert pipe.tokenizer("a qr code").input_ids == trained.tokenizer("a qr code").input_ids
    with pytest.raises(PublishedModelError, match="made by base config"):
        materialize_base(folder, other, tmp_path / "cache2")


def test_a_published_file_that_changed_is_refused_naming_it(tmp_path):
    config = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=4, test=0), seed=3)
    folder = publish_base(_trained(tmp_path, config), config, {}, tmp_path / "published")
    data = bytearray((folder / "unet.safetensors").read_bytes())
    data[-1] ^= 1
    (folder / "unet.safetensors").write_bytes(bytes(data))
    with pytest.raises(PublishedModelError, match=r"unet.safetensors: sha256 .* does not match"):
        materialize_base(folder, config, tmp_path / "cache")


def test_a_published_detector_stands_in_only_for_its_own_inputs(tmp_path):
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "detector.safetensors").write_bytes(b"weights")
    (trained / "detector.json").write_text("{}")
    (trained / "model.pt").write_bytes(b"a pickle is never copied")
    identity = {"scale": {"name": "cpu"}, "data": "ab" * 32, "generated": {"backgrounds": 500}}
    folder = publish_detector(trained, identity, "tiny", tmp_path / "published")
    assert sorted(p.name for p in folder.iterdir()) == ["detector.json", "detector.safetensors", "identity.json"]
    assert published_detector(identity, tmp_path / "published") == folder
    assert published_detector({**identity, "data": "cd" * 32}, tmp_path / "published") is None
    assert json.loads((folder / "identity.json").read_text())["identity"] == identity
    (folder / "detector.safetensors").write_bytes(b"other weights")
    with pytest.raises(PublishedModelError, match="detector.safetensors: sha256"):
        published_detector(identity, tmp_path / "published")


def test_scoring_commands_default_to_the_tracks_published_evaluator(tmp_path, capsys):
    from benchmark.cli import main
    from benchmark.published_models import default_detector

    with pytest.raises(PublishedModelError, match=r"no published detector for track 'debug'.*pass --detector"):
        default_detector("debug", tmp_path)
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "detector.safetensors").write_bytes(b"weights")
    folder = publish_detector(trained, {"x": 1}, "debug", tmp_path)
    assert default_detector("debug", tmp_path) == folder
    assert main(["score-images", str(tmp_path), "--track", "debug", "--out", str(tmp_path / "o")]) == 2
    assert "no published detector for track 'debug'" in capsys.readouterr().err


def test_the_repositorys_published_evaluator_and_base_load_without_pickle_and_match_their_sha256(monkeypatch, tmp_path):
    import pickle

    from benchmark.published_models import PUBLISHED_DIR, default_detector
    from benchmark.track import load_track
    from implicit_concept.concepts import CONCEPT_NAMES
    from implicit_concept.detector.inference import Detector
    from implicit_concept.files import sha256_file

    def refuse(*args, **kwargs):
        raise AssertionError("a published model was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    folder = default_detector("tiny")
    recorded = json.loads((folder / "identity.json").read_text())["files"]
    assert {"detector.safetensors", "detector.json", "metrics.json"} <= set(recorded)
    assert all(sha256_file(folder / name) == digest for name, digest in recorded.items())
    assert not [p for p in PUBLISHED_DIR.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".ckpt")]
    detector = Detector.load(folder)
    assert set(detector.thresholds) == set(CONCEPT_NAMES) and all(0.25 <= t < 1 for t in detector.thresholds.values())
    config = load_track("tiny").base_model_config()
    base = published_base(config)
    assert base is not None, "the tiny track's base is published for its current config"
    pipe = load_pipeline(materialize_base(base, config, tmp_path / "cache"))
    assert pipe.unet.dtype == torch.float32


def test_the_detectors_identity_names_the_base_generations_and_they_are_made_once(tmp_path, debug_dataset):
    """Background and calibration images come from the base, for icd-mixed's train captions; a
    second call finds them made; other base weights give another detector identity."""
    from types import SimpleNamespace

    from benchmark import stages
    from benchmark.track import load_track

    track = load_track("debug", {"generation": {"steps": 2, "guidance_scale": 3.0, "image_size": 32, "chunk_size": 8},
                                 "detector_backgrounds": 3, "detector_calibration": 2})
    run = SimpleNamespace(track=track, cache=tmp_path / "cache", progress=False)
    config = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=4, test=0), seed=3)
    base = _trained(tmp_path, config)
    identity = stages.detector_identity(run, debug_dataset, base)
    generated = identity["generated"]
    folders = stages.base_generations(run, debug_dataset, base, generated)
    made = [sorted(p.name for p in f.glob("*.png")) for f in folders]
    assert [len(m) for m in made] == [3, 2] and not set(made[0]) & set(made[1])
    stamps = [p.stat().st_mtime_ns for f in folders for p in sorted(f.glob("*.png"))]
    stages.base_generations(run, debug_dataset, base, generated)
    assert stamps == [p.stat().st_mtime_ns for f in folders for p in sorted(f.glob("*.png"))], "made once"
    other = build_tiny_pipeline(config.pipeline, tmp_path / "tok", seed=8)
    other_identity = stages.detector_identity(run, debug_dataset, save_portable_pipeline(other, tmp_path / "other"))
    assert other_identity["generated"]["base_weights"] != generated["base_weights"]
    assert stages.detector_dir(run, other_identity) != stages.detector_dir(run, identity)
