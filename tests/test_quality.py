"""Quality scores: the Fréchet distance, the scene-feature extractor, prompt following, optional torchmetrics."""
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from benchmark.evaluation.degradations import Degradation
from benchmark.evaluation.quality import (
    MissingDependencyError,
    frechet_distance,
    paper_clip_score,
    paper_fid,
    prompt_following,
    scene_fid,
)
from benchmark.evaluation.scene_attributes import caption_attributes, heads, scene_attributes
from benchmark.evaluation.scene_features import CACHE_SUBDIR, LEGACY_WEIGHTS_NAME, WEIGHTS_NAME, SceneFeatures, SceneFeaturesConfig
from benchmark.evaluation.scene_features_errors import SceneFeaturesError
from implicit_concept.scene.grammar import BACKGROUNDS, PALETTE, SHAPES, ProceduralConfig, sample_scene
from implicit_concept.scene.render import render_scene
from implicit_concept.stats import bootstrap_mean

#: A few seconds of training on one thread: enough to beat chance, far from the default's accuracy.
MICRO = dict(steps=80, batch=32, heldout=200, threads=1)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    return SceneFeatures.load_or_train(tmp_path_factory.mktemp("cache"), 32, **MICRO)


def _scenes(n, seed=123, config=ProceduralConfig()):
    return [sample_scene(np.random.default_rng([seed, i]), config) for i in range(n)]


# ---- Fréchet distance ----

def _reference_frechet(a, b):
    """The textbook formula, with tr sqrtm(S_a S_b) from the (real, non-negative) eigenvalues of S_a S_b."""
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.sqrt(np.clip(np.linalg.eigvals(ca @ cb).real, 0, None)).sum()
    d = a.mean(0) - b.mean(0)
    return d @ d + np.trace(ca) + np.trace(cb) - 2 * cross


def test_frechet_distance_properties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(300, 8)) * 2 + 0.5
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) == pytest.approx(_reference_frechet(a, b), rel=1e-6)
    shifts = [frechet_distance(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert shifts == pytest.approx([8 * s**2 for s in (0.5, 1.0, 2.0)])
    assert 0 < shifts[0] < shifts[1] < shifts[2]


def test_frechet_distance_singular_and_bad_input():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(5, 20))  # fewer samples than dimensions: singular covariances
    assert np.isfinite(frechet_distance(few, rng.normal(size=(6, 20))))
    assert frechet_distance(few[:, :1], few[:, :1] + 3) == pytest.approx(9)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(few, few[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(few[:1], few)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), few[:, :2])


def test_bootstrap_mean_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(2).random(200)
    first, again = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == again
    assert first.low < first.value < first.high
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean(values, level=1.5)


# ---- attributes ----

def test_caption_attributes_invert_captions():
    wide = ProceduralConfig(backgrounds=tuple(BACKGROUNDS), shapes=SHAPES, colors=tuple(PALETTE), max_objects=3)
    for config in (ProceduralConfig(), wide):
        vocab = heads(config)
        for scene in _scenes(400, config=config):
            attrs = scene_attributes(scene)
            assert caption_attributes(scene.caption) == attrs
            assert all(value in vocab[name] for name, value in attrs.items())
    with pytest.raises(SceneFeaturesError, match="not a procedural scene caption"):
        caption_attributes("a photo of a cat")


def test_objects_are_numbered_in_reading_order():
    """"A above B" and "B below A" are the same picture, so they ask for the same attributes."""
    a = caption_attributes("a small red circle above a large blue square on a green gradient background")
    b = caption_attributes("a large blue square below a small red circle on a green gradient background")
    assert a == b and a["object1_shape"] == "circle" and a["arrangement"] == "pair_vertical"


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(SceneFeaturesError, match="image_size"):
        SceneFeaturesConfig(image_size=48)
    with pytest.raises(SceneFeaturesError, match="steps"):
        SceneFeaturesConfig(steps=0)
    with pytest.raises(SceneFeaturesError, match=r"^scene features config: lr: .*\(0, 1\), got 1$"):
        SceneFeaturesConfig(lr=1)
    with pytest.raises(SceneFeaturesError, match=r"^scene features config: jpeg_quality: "):
        Degradation(jpeg_quality=(90, 50))
    with pytest.raises(SceneFeaturesError, match="unknown field"):
        SceneFeatures.load_or_train(tmp_path, 32, step=3)


# ---- the trained extractor ----

def test_extractor_beats_chance_and_is_cached(extractor):
    heldout = extractor.info["heldout"]["clean"]["per_attribute"]
    assert heldout["background_color"] > 3 / len(extractor.vocab["background_color"])
    assert (extractor.path / "info.json").is_file() and extractor.path.parent.name == CACHE_SUBDIR
    again = SceneFeatures.load_or_train(extractor.path.parent.parent, 32, **MICRO)
    images = [render_scene(s, 32) for s in _scenes(8)]
    np.testing.assert_array_equal(again.features(images), extractor.features(images))
    assert extractor.features(images).shape == (8, extractor.config.feature_dim)


@pytest.mark.slow
def test_training_is_deterministic(extractor):
    retrained = SceneFeatures.train(SceneFeaturesConfig(image_size=32, **MICRO))
    images = [render_scene(s, 32) for s in _scenes(16)]
    np.testing.assert_array_equal(retrained.features(images), extractor.features(images))
    assert retrained.info["heldout"] == extractor.info["heldout"]


def test_predict_resizes_and_omits_absent_objects(extractor):
    scenes = _scenes(20)
    predictions = extractor.predict([render_scene(s, 64) for s in scenes])
    for p in predictions:
        count = 1 if p["arrangement"].startswith("single") else 2
        assert ("object2_shape" in p) == (count == 2)


def test_prompt_following_of_real_renders_beats_shuffled_pairs(extractor):
    scenes = _scenes(150)
    images = [render_scene(s, 32) for s in scenes]
    real = prompt_following(images, scenes, extractor)
    shuffled = prompt_following(images, [s.caption for s in scenes[1:] + scenes[:1]], extractor)
    assert real.mean.value > shuffled.mean.value + 0.2
    assert real.mean.low > shuffled.mean.high
    assert real.per_attribute["background_color"] > shuffled.per_attribute["background_color"]
    assert "not CLIP" in real.kind and real.n == 150


def test_scene_fid_grows_with_heavy_noise(extractor):
    clean_a = [render_scene(s, 32) for s in _scenes(150, seed=1)]
    clean_b = [render_scene(s, 32) for s in _scenes(150, seed=2)]
    rng = np.random.default_rng(0)
    noisy = [
        Image.fromarray(np.clip(np.asarray(im, np.float32) + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8))
        for im in clean_b
    ]
    blurred = [im.filter(ImageFilter.GaussianBlur(2)) for im in clean_b]
    base = scene_fid(clean_a, clean_b, extractor)
    assert scene_fid(clean_a, noisy, extractor).value > 2 * base.value
    assert scene_fid(clean_a, blurred, extractor).value > base.value
    assert "not Inception" in base.kind and base.n_generated == 150


def test_prompt_outside_the_vocabulary_is_refused(extractor):
    image = render_scene(_scenes(1)[0], 32)
    with pytest.raises(SceneFeaturesError, match="object1_color"):
        prompt_following([image], ["a small pink circle on the left on a red background"], extractor)


# ---- paper track ----

def test_paper_metrics_without_torchmetrics_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)
    image = Image.new("RGB", (8, 8))
    with pytest.raises(MissingDependencyError, match=r"pip install 'torchmetrics\[image\]"):
        paper_fid([image, image], [image, image], tmp_path / "inception.pth")
    with pytest.raises(MissingDependencyError, match=r"pip install 'torchmetrics\[multimodal\]"):
        paper_clip_score([image], ["a cat"], tmp_path / "clip")


# ---- the cache holds no pickle ----

class _Planted:
    """A pickle that creates ``marker`` when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_the_cache_is_safetensors_with_its_sha256_and_loads_without_torch_load(extractor, monkeypatch):
    from safetensors.torch import load_file

    from implicit_concept.content_hashes import sha256_file

    weights = extractor.path / WEIGHTS_NAME
    assert WEIGHTS_NAME == "weights.safetensors" and sorted(load_file(weights)) == sorted(extractor.net.state_dict())
    assert json.loads((extractor.path / "info.json").read_text())["weights_sha256"] == sha256_file(weights)
    assert not (extractor.path / LEGACY_WEIGHTS_NAME).exists()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called on the scene-features cache")

    monkeypatch.setattr(torch, "load", refuse)
    again = SceneFeatures.load_or_train(extractor.path.parent.parent, 32, **MICRO)
    assert again.info["weights_sha256"] == sha256_file(weights)


def _reseal(entry):
    from implicit_concept.content_hashes import sha256_file

    info = json.loads((entry / "info.json").read_text())
    info["weights_sha256"] = sha256_file(entry / WEIGHTS_NAME)
    (entry / "info.json").write_text(json.dumps(info))


def _nan_weights(entry, marker):
    from safetensors.torch import load_file, save_file

    state = load_file(entry / WEIGHTS_NAME)
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, entry / WEIGHTS_NAME)
    _reseal(entry)  # a digest that matches: the values are checked too


def _int_weights(entry, marker):
    from safetensors.torch import load_file, save_file

    state = load_file(entry / WEIGHTS_NAME)
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = state[name].round().to(torch.int32)
    save_file(state, entry / WEIGHTS_NAME)
    _reseal(entry)


def _edited_weights(entry, marker):
    data = bytearray((entry / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 1
    (entry / WEIGHTS_NAME).write_bytes(bytes(data))


def _legacy_pickle(entry, marker):
    """An older version's entry: weights.pt (here a payload) beside an info.json without a digest."""
    (entry / WEIGHTS_NAME).unlink()
    torch.save({"state": _Planted(marker)}, entry / LEGACY_WEIGHTS_NAME)
    info = json.loads((entry / "info.json").read_text())
    del info["weights_sha256"]
    (entry / "info.json").write_text(json.dumps(info))


def _broken_info(entry, marker):
    (entry / "info.json").write_text("{")


@pytest.mark.parametrize("damage, problem, rebuild", [
    (_nan_weights, r"weights\.safetensors: tensor \S+ holds NaN or infinite values", True),
    (_int_weights, r"weights\.safetensors: tensor \S+ is torch\.int32 .*, not torch\.float32", False),
    (_edited_weights, r"weights\.safetensors: sha256 [0-9a-f]{64} is not the '[0-9a-f]{64}' info\.json records", False),
    (_legacy_pickle, r"weights\.safetensors: missing \(its weights\.pt, an older version's, is a pickle and is never loaded\)", True),
    (_broken_info, r"info\.json: not a readable JSON record", False),
])
def test_a_bad_cache_entry_is_refused_naming_the_file_then_rebuilt(extractor, tmp_path, capsys, damage, problem, rebuild):
    """Every case is refused by ``load``; two are also rebuilt by ``load_or_train`` (a few seconds of training each)."""
    cache = tmp_path / "cache"
    shutil.copytree(extractor.path.parent.parent, cache)
    entry = cache / CACHE_SUBDIR / extractor.path.name
    marker = tmp_path / "code-ran"
    damage(entry, marker)
    with pytest.raises(SceneFeaturesError, match=problem):
        SceneFeatures.load(entry, extractor.config)
    assert not marker.exists()
    if not rebuild:
        return
    rebuilt = SceneFeatures.load_or_train(cache, 32, **MICRO)
    note = capsys.readouterr().err
    assert re.match(rf"note: {re.escape(str(entry))}/{problem}", note) and "; training the scene-feature extractor again" in note
    assert not marker.exists()
    images = [render_scene(s, 32) for s in _scenes(8)]
    np.testing.assert_array_equal(rebuilt.features(images), extractor.features(images))
    assert not (entry / LEGACY_WEIGHTS_NAME).exists()
    SceneFeatures.load(entry, extractor.config)  # the rebuilt entry loads


# ---- paper track: no pickle but the FID-Inception weights, and those hold only tensors ----

class _FakeMetric:
    """Stands in for a torchmetrics metric (not installed here): records how it was made."""

    made: list = []

    def __init__(self, **kwargs):
        self.made.append(kwargs)
        if "model_name_or_path" in kwargs:  # CLIPScore's from_pretrained draws transformers' bar
            from transformers.utils import logging as transformers_logging

            for _ in transformers_logging.tqdm(range(2), desc="Loading weights"):
                pass
        path = kwargs.get("feature_extractor_weights_path")
        if path is not None:
            torch.load(path, weights_only=False)  # what a careless library could do: it stays weights-only

    def to(self, device):
        return self

    def update(self, *args, **kwargs):
        pass

    def compute(self):
        return torch.tensor(1.0)


@pytest.fixture
def fake_torchmetrics(monkeypatch):
    import benchmark.evaluation.quality as quality

    _FakeMetric.made = []
    monkeypatch.setattr(quality, "_torchmetrics", lambda module, name, extra: _FakeMetric)
    return _FakeMetric.made


@pytest.mark.parametrize("force_off", [False, True])
def test_the_fid_weights_are_read_weights_only_whatever_the_caller_or_environment_says(fake_torchmetrics, tmp_path, monkeypatch, force_off):
    if force_off:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    image = Image.new("RGB", (8, 8))
    marker = tmp_path / "code-ran"
    evil = tmp_path / "weights-inception.pth"
    torch.save({"state": _Planted(marker)}, evil)
    with pytest.raises(ValueError, match=r"weights-inception\.pth: a pickle holding objects other than tensors, which is never loaded"):
        paper_fid([image, image], [image, image], evil)
    assert not marker.exists()
    plain = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.zeros(2)}, plain)
    assert paper_fid([image, image], [image, image], plain).value == 1.0
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == ("1" if force_off else None)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def _clip_folder(tmp_path, weights=("model.safetensors",), config=None):
    from safetensors.torch import save_file

    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config or {"model_type": "clip"}))
    for name in weights:
        if name.endswith(".safetensors"):
            save_file({"w": torch.zeros(1)}, folder / name)
        else:
            torch.save({"w": torch.zeros(1)}, folder / name)
    return folder


@pytest.mark.parametrize("weights, config, problem", [
    (("pytorch_model.bin",), None, r"clip: no model\.safetensors \(only pytorch_model\.bin, a pickle, which is never loaded\)"),
    ((), None, r"clip: no model\.safetensors \(found no weights\)"),
    (("model.safetensors", "adapter_model.bin"), {"transformers_weights": "adapter_model.bin"},
     r"clip/config\.json: names transformers_weights 'adapter_model\.bin'"),
])
def test_clip_weights_are_read_from_safetensors_only(fake_torchmetrics, tmp_path, weights, config, problem):
    image = Image.new("RGB", (8, 8))
    folder = _clip_folder(tmp_path, weights, config)
    with pytest.raises(ValueError, match=problem):
        paper_clip_score([image], ["a cat"], folder)
    assert fake_torchmetrics == []


def test_a_clip_shard_index_naming_a_pickle_is_refused(fake_torchmetrics, tmp_path):
    image = Image.new("RGB", (8, 8))
    folder = _clip_folder(tmp_path, ("pytorch_model-00001-of-00001.bin",))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}))
    with pytest.raises(ValueError, match=r"clip/model\.safetensors\.index\.json: weight_map entry 'w': .* is not a \.safetensors file"):
        paper_clip_score([image], ["a cat"], folder)
    assert fake_torchmetrics == []


def test_a_safetensors_clip_folder_is_handed_to_torchmetrics(fake_torchmetrics, tmp_path):
    image = Image.new("RGB", (8, 8))
    folder = _clip_folder(tmp_path, ("model.safetensors", "pytorch_model.bin"))  # transformers reads the safetensors
    assert paper_clip_score([image], ["a cat"], folder).value == 1.0
    assert fake_torchmetrics == [{"model_name_or_path": str(folder)}]


def test_loading_the_clip_model_draws_no_library_bar(fake_torchmetrics, tmp_path, capfd):
    folder = _clip_folder(tmp_path)
    capfd.readouterr()
    paper_clip_score([Image.new("RGB", (8, 8))], ["a cat"], folder)
    assert fake_torchmetrics and "Loading weights" not in capfd.readouterr().err


# ---- scorecard ----

def test_fid_x_icr_is_reported_with_the_paper_tracks_fid_too(tmp_path, monkeypatch):
    """The paper's FID x ICR % from whichever FID the track measures: torchmetrics' on the paper track."""
    from types import SimpleNamespace

    from benchmark.evaluation import scorecard
    from benchmark.prompts import Prompt
    from implicit_concept.scoring import ConceptScore, ScoreConfig, ScoreReport
    from implicit_concept.stats import Interval

    def measured(value):
        return SimpleNamespace(value=value, kind="measured", to_json=lambda: {"value": value})

    icr = Interval(0.2, 0.1, 0.3, 0.95)
    report = ScoreReport(config=ScoreConfig(), thresholds={}, detector={}, clean_source="", clean_images=0,
                         concepts={"qrcode": ConceptScore("qrcode", icr, icr)}, crosschecks=[], skipped_checkers={}, images=[])
    monkeypatch.setattr(scorecard, "score_images", lambda *a: report)
    monkeypatch.setattr(scorecard, "paper_fid", lambda *a: measured(40.0))
    monkeypatch.setattr(scorecard, "paper_clip_score", lambda *a: measured(0.3))
    Image.new("RGB", (8, 8)).save(tmp_path / "1_0.png")
    quality = {"kind": "paper", "fid_weights": "fid.pth", "clip_weights": "clip"}
    _, rows = scorecard.score_generated([tmp_path / "1_0.png"], [Prompt(1, "a cat", 1)], None, ScoreConfig(seed=0), quality, [], tmp_path)
    assert rows["qrcode"]["fid_x_icr"] == pytest.approx(40.0 * 20)


def test_a_method_and_external_scoring_compare_with_the_same_clean_images(tmp_path, monkeypatch):
    """At two images per prompt the benchmark and ``score-images`` both take one clean test image per
    prompt, so the same images get the same FID through either."""
    from dataclasses import replace
    from types import SimpleNamespace

    from benchmark import external, method_evaluation, stages
    from benchmark.track import load_track
    from tests.real_runs import real_run

    monkeypatch.setattr(stages, "reference_images", lambda shards, count: [Image.new("RGB", (8, 8))] * count)
    debug = load_track("debug")
    track = replace(debug, num_prompts=3, named_prompts=3, generation={**debug.generation, "images_per_prompt": 2})
    benchmark = method_evaluation.evaluation_for(real_run(tmp_path, track), tmp_path / "icd-qrcode", None)

    judged = []
    report = SimpleNamespace(thresholds={}, concepts={}, write_json=lambda path: None, table=lambda concepts=None: "")
    monkeypatch.setattr(external, "score_generated", lambda paths, prompts, detector, score, quality, reference, cache:
                        judged.append(reference) or (report, {}))
    (tmp_path / "detector.safetensors").write_bytes(b"weights")
    judging = external.Judging(track=track, detector=SimpleNamespace(path=tmp_path / "detector.safetensors"),
                               reference=tmp_path / "icd-qrcode" / "test", cache=tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    for p in judging.prompts():
        for i in range(2):
            Image.new("RGB", (64, 64)).save(folder / f"{p.case_number}_{i}.png")
    external.score_image_folder(folder, tmp_path / "out", judging)
    assert len(benchmark.reference) == len(judged[0]) == len(benchmark.prompts) == 3


def test_images_become_tensors_without_torch_warning_of_read_only_arrays():
    """PIL's pixels reach numpy read-only; handed to torch as they were, every ``paper_fid`` and CLIP
    score call warned that writing the tensor is undefined. The tensors are copies, pixel for pixel."""
    import warnings

    from benchmark.evaluation.quality import _uint8_chw

    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    frozen = pixels.copy()
    frozen.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensors = _uint8_chw([Image.fromarray(pixels), frozen])
    for tensor in tensors:
        assert tensor.shape == (3, 4, 5) and np.array_equal(tensor.permute(1, 2, 0).numpy(), pixels)
