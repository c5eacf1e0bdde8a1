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
from implicit_concept.content_hashes import folder_sha256
from implicit_concept.scene.grammar import ProceduralConfig

MICRO = TinyPipelineConfig(image_size=32, patch_size=4, unet_channels=(16, 32), unet_attention=(False, True), text_hidden=16, text_layers=1, text_heads=2)


def _trained(tmp_path, config):
    pipe = build_tiny_pipeline(config.pipeline, tmp_path / "tok", seed=7)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(0.123456789)  # values fp16 cannot hold exactly
    return save_portable_pipeline(pipe, tmp_path / "trained")


def _trained_detector(folder):
    """A detector folder with the files a published detector needs (their content is not under test here)."""
    folder.mkdir(parents=True)
    (folder / "detector.safetensors").write_bytes(b"weights")
    (folder / "detector.json").write_text('{"thresholds": {"qrcode": 0.3}}')
    (folder / "clean_reference.json").write_text("{}")
    return folder


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
    trained = _trained_detector(tmp_path / "trained")
    (trained / "model.pt").write_bytes(b"a pickle is never copied")
    identity = {"scale": {"name": "cpu"}, "data": "ab" * 32, "generated": {"backgrounds": 500}}
    folder = publish_detector(trained, identity, "tiny", tmp_path / "published")
    assert sorted(p.name for p in folder.iterdir()) == ["clean_reference.json", "detector.json", "detector.safetensors", "identity.json"]
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
    trained = _trained_detector(tmp_path / "trained")
    folder = publish_detector(trained, {"x": 1}, "debug", tmp_path)
    assert default_detector("debug", tmp_path) == folder
    assert main(["score-images", str(tmp_path), "--track", "debug", "--out", str(tmp_path / "o")]) == 2
    assert "no published detector for track 'debug'" in capsys.readouterr().err


def test_the_repositorys_published_evaluator_and_base_load_without_pickle_and_match_their_sha256(monkeypatch, tmp_path):
    import pickle

    from benchmark.published_models import PUBLISHED_DIR, default_detector
    from benchmark.track import load_track
    from implicit_concept.concepts import CONCEPT_NAMES
    from implicit_concept.content_hashes import sha256_file
    from implicit_concept.detector.inference import Detector

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
    from benchmark import stages
    from benchmark.track import load_track
    from tests.real_runs import real_run

    track = load_track("debug", {"generation": {"steps": 2, "guidance_scale": 3.0, "image_size": 32, "chunk_size": 8},
                                 "detector_backgrounds": 3, "detector_calibration": 2})
    run = real_run(tmp_path / "run", track, cache=tmp_path / "cache")
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


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _zeroed(path):
    from safetensors.torch import load_file, save_file

    save_file({k: torch.zeros_like(v) for k, v in load_file(str(path)).items()}, str(path))


@pytest.mark.parametrize("name", ["detector.safetensors", "detector.json", "clean_reference.json"])
def test_a_detector_record_that_leaves_out_a_file_loading_reads_is_refused_naming_it(tmp_path, name):
    """Dropping a file from identity.json (then editing it), or emptying its list, does not make it unchecked."""
    from benchmark.published_models import default_detector

    folder = publish_detector(_trained_detector(tmp_path / "trained"), {"x": 1}, "tiny", tmp_path / "published")
    _edit_json(folder / "identity.json", lambda d: d["files"].pop(name))
    (folder / name).write_bytes(b"edited")
    with pytest.raises(PublishedModelError, match=rf"{name}: not listed in .*identity.json"):
        default_detector("tiny", tmp_path / "published")
    with pytest.raises(PublishedModelError, match=rf"{name}: not listed in .*identity.json"):
        published_detector({"x": 1}, tmp_path / "published")
    _edit_json(folder / "identity.json", lambda d: d.update(files={}))
    with pytest.raises(PublishedModelError, match=r"detector.safetensors: not listed in .*identity.json"):
        default_detector("tiny", tmp_path / "published")
    _edit_json(folder / "identity.json", lambda d: d.update(files=["detector.safetensors"]))
    with pytest.raises(PublishedModelError, match=r"identity.json: not a readable published-model record"):
        default_detector("tiny", tmp_path / "published")
    with pytest.raises(PublishedModelError, match=r"missing; a published detector needs"):
        publish_detector(tmp_path / "published" / "nothing", {"x": 1}, "other", tmp_path / "published")


def test_a_base_record_that_leaves_out_a_part_is_refused_naming_it_not_a_key_error(tmp_path):
    config = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=4, test=0), seed=3)
    folder = publish_base(_trained(tmp_path, config), config, {}, tmp_path / "published")
    _edit_json(folder / "base.json", lambda d: d["files"].pop("text_encoder.safetensors"))
    _zeroed(folder / "text_encoder.safetensors")
    with pytest.raises(PublishedModelError, match=r"text_encoder.safetensors: not listed in .*base.json"):
        materialize_base(folder, config, tmp_path / "cache")
    _edit_json(folder / "base.json", lambda d: d.update(files={}))
    with pytest.raises(PublishedModelError, match=r"unet.safetensors: not listed in .*base.json"):
        materialize_base(folder, config, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("published-*/pipeline"))


def test_every_published_record_is_pinned_in_the_code_and_matches():
    """The root of trust: a republished folder fails here until its pin line (`publish` prints it) is committed."""
    from benchmark.published_models import PINNED_RECORDS, PUBLISHED_DIR, REQUIRED_FILES, _checked_record, pin_line, record_file
    from implicit_concept.content_hashes import sha256_file
    from implicit_concept.scoring import CLEAN_REFERENCE_NAME

    assert CLEAN_REFERENCE_NAME in REQUIRED_FILES["identity.json"]
    folders = sorted(p for p in PUBLISHED_DIR.iterdir() if p.is_dir())
    assert [p.name for p in folders if p.name.startswith("detector-")] and [p.name for p in folders if p.name.startswith("base-")]
    pinned = {}
    for folder in folders:
        record = record_file(folder)  # an unknown kind of folder is refused
        key = f"{folder.name}/{record.name}"
        assert key in PINNED_RECORDS, f"{record} is not pinned; add to PINNED_RECORDS:\n{pin_line(folder)}"
        assert PINNED_RECORDS[key] == sha256_file(record), f"{record} changed; if republished, pin it:\n{pin_line(folder)}"
        _checked_record(record, folder)
        pinned[key] = PINNED_RECORDS[key]
    assert pinned == PINNED_RECORDS, "every pin names a published folder"


def test_a_resealed_record_of_the_published_evaluator_is_refused(tmp_path, monkeypatch):
    """Edited thresholds with their new sha256 written into identity.json: the record no longer matches its pin."""
    import shutil

    import benchmark.published_models as pm
    from implicit_concept.content_hashes import sha256_file

    root = tmp_path / "published"
    shutil.copytree(pm.PUBLISHED_DIR / "detector-tiny", root / "detector-tiny")
    monkeypatch.setattr(pm, "PUBLISHED_DIR", root)
    folder = root / "detector-tiny"
    assert pm.default_detector("tiny", root) == folder
    _edit_json(folder / "detector.json", lambda d: d["thresholds"].update(qrcode=0.99, watermark=0.99, text=0.99))
    _edit_json(folder / "identity.json", lambda d: d["files"].update({"detector.json": sha256_file(folder / "detector.json")}))
    with pytest.raises(PublishedModelError, match=r"identity.json: sha256 .* does not match .* pinned in benchmark/published_models.py"):
        pm.default_detector("tiny", root)
    identity = json.loads((folder / "identity.json").read_text())["identity"]
    with pytest.raises(PublishedModelError, match=r"identity.json: sha256 .* does not match .* pinned"):
        pm.published_detector(identity, root)


def test_an_unpinned_record_is_trusted_only_by_the_process_that_published_it_until_pinned(tmp_path, monkeypatch):
    import ast

    import benchmark.published_models as pm

    root = tmp_path / "published"
    monkeypatch.setattr(pm, "PUBLISHED_DIR", root)
    monkeypatch.setattr(pm, "PINNED_RECORDS", {})
    monkeypatch.setattr(pm, "_published_here", {})
    folder = publish_detector(_trained_detector(tmp_path / "trained"), {"x": 1}, "tiny", root)
    assert pm.default_detector("tiny", root) == folder  # publish goes on to use what it published
    monkeypatch.setattr(pm, "_published_here", {})  # a later process
    with pytest.raises(PublishedModelError, match=r"identity.json: not pinned in benchmark/published_models.py PINNED_RECORDS"):
        pm.default_detector("tiny", root)
    monkeypatch.setattr(pm, "PINNED_RECORDS", ast.literal_eval("{" + pm.pin_line(folder) + "}"))
    assert pm.default_detector("tiny", root) == folder


def test_publish_prints_the_pin_lines_of_the_records_it_wrote(tmp_path, monkeypatch, capsys):
    import ast
    from types import SimpleNamespace

    import benchmark.publish as publish
    from benchmark.published_models import pin_line
    from benchmark.track import Track
    from tests.real_runs import real_run

    config = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=4, test=0), seed=3)
    trained = _trained(tmp_path, config)
    (tmp_path / "record").mkdir()
    (tmp_path / "record" / "base.json").write_text(json.dumps({"seconds": 1.0, "environment": {}}))
    detector = _trained_detector(tmp_path / "detector")
    monkeypatch.setattr(publish, "pretrain_base", lambda config, cache, progress: trained)
    monkeypatch.setattr(publish, "base_dir", lambda config, cache: tmp_path / "record")
    monkeypatch.setattr(publish, "stages", SimpleNamespace(
        dataset=lambda run: tmp_path / "data", pretrain_base_model=lambda run: trained,
        detector=lambda run, dataset, base: SimpleNamespace(path=detector / "detector.safetensors"),
        detector_identity=lambda run, dataset, base: {"x": 1}))
    monkeypatch.setattr(Track, "base_model_config", lambda track: config)
    run = real_run(tmp_path / "run", {"name": "tiny"}, cache=tmp_path / "cache")
    published = publish.publish_track_models(run, tmp_path / "published")
    out = capsys.readouterr().out
    assert "PINNED_RECORDS" in out
    for folder in published.values():
        assert pin_line(folder) in out.splitlines()
    pins = ast.literal_eval("{" + "".join(line for line in out.splitlines() if line.startswith("    ")) + "}")
    assert set(pins) == {f"{published['base'].name}/base.json", "detector-tiny/identity.json"}


def test_a_materialised_base_that_changed_in_the_cache_is_made_again(tmp_path):
    """The fp32 copy is a cache entry checked against the sha256 written beside it: a zeroed UNet
    file, or a file planted there, gives a rebuilt, correct copy, not the damaged one."""
    config = BaseModelConfig(pipeline=MICRO, scenes=ProceduralConfig(train=4, test=0), seed=3)
    folder = publish_base(_trained(tmp_path, config), config, {}, tmp_path / "published")
    final = materialize_base(folder, config, tmp_path / "cache")
    assert json.loads((final.parent / "materialized.json").read_text())["sha256"] == folder_sha256(final)
    expected = {k: v.clone() for k, v in load_pipeline(final).unet.state_dict().items()}
    assert any(v.abs().sum() > 0 for v in expected.values())
    stamp = (final / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert materialize_base(folder, config, tmp_path / "cache") == final
    assert (final / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp, "an intact copy is reused"

    _zeroed(final / "unet" / "diffusion_pytorch_model.safetensors")
    assert materialize_base(folder, config, tmp_path / "cache") == final
    for name, value in load_pipeline(final).unet.state_dict().items():
        assert torch.equal(value, expected[name]), name

    (final / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
    assert materialize_base(folder, config, tmp_path / "cache") == final
    assert not (final / "unet" / "diffusion_pytorch_model.safetensors.index.json").exists()
    (final.parent / "materialized.json").unlink()
    assert materialize_base(folder, config, tmp_path / "cache") == final
    assert (final.parent / "materialized.json").is_file()


def test_the_tiny_track_finds_the_published_evaluator_for_the_shipped_icd_tiny(tmp_path):
    """The published detector stands in for training only while its identity names the tiny track's
    inputs as they are: a change to icd-tiny's bytes (its reference checksums) or to the published
    base must come with a republished (or re-identified) evaluator, or every fresh clone retrains it."""
    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.published_models import published_detector
    from benchmark.stages import detector_identity, pretrain_base_model
    from benchmark.track import load_track
    from builders.dataset_card import CHECKSUMS
    from manifests import RECIPES_DIR

    run = BenchmarkRun(track=load_track("tiny"), name="r", runs_root=tmp_path / "runs", cache=tmp_path / "cache")
    dataset = tmp_path / "icd-tiny"
    dataset.mkdir()
    (dataset / CHECKSUMS).write_bytes((RECIPES_DIR / "icd-tiny.sha256").read_bytes())
    identity = detector_identity(run, dataset, pretrain_base_model(run))
    assert published_detector(identity) is not None, f"no published detector has the tiny track's identity {identity['data']}"
