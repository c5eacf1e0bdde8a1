"""The training loop on a micro pipeline: it learns, resumes to the same weights, and Geom-Erasing's
switches reach the saved pipeline. Everything offline and small enough for seconds per run."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import io
import json
import re
import shutil
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from benchmark.models.base_model import BaseModelConfig, pretrain_base
from benchmark.models.patch_autoencoder import PatchAutoencoder
from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline
from benchmark.training import CHECKPOINTS_DIR, TrainingConfig, train
from benchmark.training.checkpoints import RUN_FILE
from implicit_concept.geom_erasing.location_tokens import add_tokens, location_tokens
from implicit_concept.geom_erasing.training_target import GeomErasingConfig, negative_prompt_for
from implicit_concept.sample import Box, Instance, SampleMeta
from implicit_concept.scene.grammar import ProceduralConfig
from implicit_concept.shard_writer import TarShardWriter

MICRO = TinyPipelineConfig(
    image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
    attention_head_dim=8, text_hidden=16, text_layers=1, text_heads=2,
)
FAST = dict(steps=2, batch_size=4, learning_rate=1e-3, checkpoint_every=1, shuffle_buffer=8, threads=1, seed=7)


def _write_shards(path: Path, n: int = 8, twins: bool = False) -> Path:
    """A stand-in ICD shard: coloured squares, every other image with a black-and-white 'QR' box
    (``twins``: the same samples with their clean twins as images)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with TarShardWriter(path / "00000.tar") as writer:
        for i in range(n):
            image = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 255, 3)))
            clean = image.copy()
            instances = []
            if i % 2 == 0:
                x, y = int(rng.integers(0, 20)), int(rng.integers(0, 20))
                modules = (rng.random((6, 6)) > 0.5).astype(np.uint8) * 255
                image.paste(Image.fromarray(modules).resize((12, 12), Image.NEAREST).convert("RGB"), (x, y))
                instances.append(Instance("qrcode", Box(x, y, x + 12, y + 12)))
            if twins:
                image, instances = clean, []
            meta = SampleMeta(key=f"{i:09d}", caption=f"a square number {i}", width=32, height=32, split="train",
                              subset="icd-qrcode", source={}, instances=instances, seed=[i], recipe="test",
                              recipe_sha256="", version="0")
            members = {"json": json.dumps(meta.to_json()).encode(), "jpg": _jpeg(image), "txt": meta.caption.encode()}
            if instances:
                members["clean.jpg"] = _jpeg(clean)
            writer.write(meta.key, members)
        writer.close()
    return path


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    base = root / "base"
    build_tiny_pipeline(MICRO, root / "tokenizer", seed=0).save_pretrained(base)
    return base, _write_shards(root / "shards")


def _unet_state(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")


def _text_state(pipeline_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(pipeline_dir / "text_encoder" / "model.safetensors")


def _embeddings(pipeline_dir: Path) -> torch.Tensor:
    return next(v for k, v in _text_state(pipeline_dir).items() if k.endswith("token_embedding.weight"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_two_steps_change_weights_and_resume_to_the_same_weights(setup, uninterrupted, tmp_path):
    base, shards = setup
    config, full = uninterrupted
    assert not _same(_unet_state(base), _unet_state(full))
    run = json.loads((full.parent / "run.json").read_text())
    assert run["finished"] and run["seed"] == 7 and run["environment"]["packages"]["torch"]

    resumed_dir = tmp_path / "resumed"
    (resumed_dir / CHECKPOINTS_DIR).mkdir(parents=True)
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", resumed_dir / CHECKPOINTS_DIR / "step-0000001")
    resumed = train(base, shards, resumed_dir, config, progress=False)
    assert _same(_unet_state(full), _unet_state(resumed))
    assert _same(_text_state(full), _text_state(resumed))


class _Planted:
    """A pickle that creates ``marker`` when unpickled: what an attacker leaves in a checkpoint folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """A finished run with Geom-Erasing's new rows and an EMA, every step checkpointed."""
    base, shards = setup
    config = TrainingConfig(**FAST, geom=GeomErasingConfig(grid=2, concepts=("qrcode",)), ema_decay=0.9)
    return config, train(base, shards, tmp_path_factory.mktemp("uninterrupted") / "run", config, progress=False)


PICKLE_NAMES = ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "custom_checkpoint_2.pkl", "optimizer.bin",
                "scheduler.bin", "random_states_0.pkl", "scaler.pt", "pytorch_model.bin"]


@pytest.mark.parametrize("name", PICKLE_NAMES)
def test_a_pickle_planted_in_a_checkpoint_runs_no_code_on_resume(setup, uninterrupted, tmp_path, name):
    """Every name accelerate's ``load_state`` would unpickle: the planted file is never read, and the
    resumed run still ends with the uninterrupted run's weights."""
    base, shards = setup
    config, full = uninterrupted
    marker = tmp_path / "code-ran"
    resumed_dir = tmp_path / "resumed"
    checkpoint = resumed_dir / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    torch.save({"state": _Planted(marker)}, checkpoint / name)
    try:
        resumed = train(base, shards, resumed_dir, config, progress=False)
    finally:
        assert not marker.exists(), f"unpickling {name} ran code"
    assert _same(_unet_state(full), _unet_state(resumed)) and _same(_text_state(full), _text_state(resumed))


@pytest.mark.parametrize("part, weights, pickle_name", [
    ("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    ("text_encoder", "model.safetensors", "pytorch_model.bin"),
])
def test_a_pipeline_whose_weights_are_only_a_pickle_is_refused_naming_the_part_and_never_unpickled(setup, tmp_path, part, weights, pickle_name):
    """What a lab hands to ``score-pipeline`` or ``--pretrained``: pickled weights are never loaded."""
    base, _ = setup
    handed = tmp_path / "handed"
    shutil.copytree(base, handed)
    marker = tmp_path / "code-ran"
    (handed / part / weights).unlink()
    torch.save({"state": _Planted(marker)}, handed / part / pickle_name)
    with pytest.raises(ValueError, match=f"handed/{part}: no {weights} \\(only {pickle_name}, a pickle, which is never loaded\\)"):
        load_pipeline(handed)
    (handed / part / "notes.safetensors").write_bytes(b"")  # safetensors of another name do not stand in
    with pytest.raises(ValueError, match=f"handed/{part}: no {weights} "):
        load_pipeline(handed)
    assert not marker.exists(), f"loading the pipeline unpickled {part}/{pickle_name}"
    assert type(load_pipeline(base)).__name__ == "StableDiffusionPipeline"


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_a_pipeline_saved_in_fp16_or_as_an_fp16_variant_loads_in_one_dtype(setup, tmp_path, variant):
    """Hub snapshots of SD hold fp16 weights, some only as ``*.fp16.safetensors``: every part loads
    in float32 (transformers alone would keep the text encoder in fp16 beside a float32 UNet), and
    the pipeline samples."""
    base, _ = setup
    half = load_pipeline(base).to(torch.float16)
    half.save_pretrained(tmp_path / "half", variant=variant)
    loaded = load_pipeline(tmp_path / "half")
    assert {m.dtype for m in (loaded.unet, loaded.text_encoder, loaded.vae)} == {torch.float32}
    assert torch.equal(loaded.unet.conv_in.weight, half.unet.conv_in.weight.float())
    from benchmark.generation import GenerationSettings, diffusers_generate_fn

    generate = diffusers_generate_fn(loaded, GenerationSettings(steps=2, guidance_scale=3.0, image_size=16))
    assert generate(["a red square"], [""], [0])[0].size == (16, 16)


@pytest.mark.parametrize("index, problem", [("{", "not valid JSON"), ("[]", "holds a JSON list, not an object")])
def test_a_pipeline_whose_model_index_is_not_an_object_is_refused_naming_it(setup, tmp_path, index, problem):
    base, _ = setup
    handed = tmp_path / "handed"
    shutil.copytree(base, handed)
    (handed / "model_index.json").write_text(index)
    with pytest.raises(ValueError, match=f"handed/model_index.json: {problem}"):
        load_pipeline(handed)


@pytest.mark.parametrize("entry, problem", [
    (7, "vae is 7, want [library, class name]"),
    ("AutoencoderKL", "vae is 'AutoencoderKL', want [library, class name]"),
    (["diffusers", "EvilVAE"], "vae is 'EvilVAE'; supported: PatchAutoencoder"),
])
def test_a_pipeline_whose_index_names_an_unknown_or_malformed_part_class_is_refused_naming_it(setup, tmp_path, entry, problem):
    base, _ = setup
    handed = tmp_path / "handed"
    shutil.copytree(base, handed)
    index = json.loads((handed / "model_index.json").read_text())
    index["vae"] = entry
    (handed / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=re.escape(f"handed/model_index.json: {problem}")):
        load_pipeline(handed)


def test_a_checkpoint_holds_only_json_and_safetensors(uninterrupted):
    """Nothing a resume reads can be a pickle: every file parses as JSON or as safetensors."""
    from safetensors import safe_open

    _, full = uninterrupted
    checkpoint = full.parent / CHECKPOINTS_DIR / "step-0000002"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in ("ema", "lr_scheduler", "new_token_rows", "optimizer", "rng_0", "train_state")
                           for ext in ("json", "safetensors")) + ["unet.safetensors"]
    for path in checkpoint.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            safe_open(str(path), "pt").keys()


def test_a_pickled_checkpoint_folder_is_refused_and_never_unpickled(setup, uninterrupted, tmp_path):
    """A newest checkpoint in accelerate's pickled layout (an older version's, or planted) is refused by name."""
    base, shards = setup
    config, full = uninterrupted
    marker = tmp_path / "code-ran"
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", resumed_dir / CHECKPOINTS_DIR / "step-0000001")
    planted = resumed_dir / CHECKPOINTS_DIR / "step-0000002"
    planted.mkdir()
    for name in PICKLE_NAMES:
        torch.save({"state": _Planted(marker)}, planted / name)
    with pytest.raises(ValueError, match="step-0000002: holds no train_state.json"):
        train(base, shards, resumed_dir, config, progress=False)
    assert not marker.exists()


def test_a_run_killed_after_its_last_checkpoint_records_its_final_loss_when_resumed(setup, uninterrupted, tmp_path):
    """A fine-tune killed after its last checkpoint but before its pipeline was saved (a kill trial of
    the debug benchmark) resumed with no step left to train, and its run.json said final_loss NaN
    (not valid JSON) where the uninterrupted run's held the last step's loss. The loss is kept in
    each checkpoint."""
    import math

    base, shards = setup
    config, full = uninterrupted
    last = f"step-{config.steps:07d}"
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / last, resumed_dir / CHECKPOINTS_DIR / last)
    resumed = train(base, shards, resumed_dir, config, progress=False)
    want = json.loads((full.parent / "run.json").read_text())
    got = json.loads((resumed_dir / "run.json").read_text())
    assert got["examples_seen_this_session"] == 0, "the resume trained a step: not the case this test is about"
    # Counted over the steps this session trained, so named for it, as examples_seen_this_session is
    # (it was captions_truncated, which a resumed run under-counted by its earlier sessions' captions).
    assert "captions_truncated" not in got and [r["captions_truncated_this_session"] for r in (want, got)] == [0, 0]
    assert math.isfinite(want["final_loss"]) and got["final_loss"] == want["final_loss"]
    assert _same(_unet_state(full), _unet_state(resumed))


def test_a_full_disk_writing_a_checkpoint_keeps_the_one_before_and_a_rerun_ends_the_same(setup, uninterrupted, tmp_path, monkeypatch):
    """safetensors says a full disk in its own error type ("Error while serializing"): it is the
    OSError it is, naming the file; the half-written checkpoint is removed (its bytes are the room the
    rerun needs, and no resume may trust it), the one before is kept, and the rerun ends as an
    uninterrupted run did."""
    import errno

    from safetensors import SafetensorError

    from benchmark.training import state_files

    base, shards = setup
    config, full = uninterrupted
    real, written = state_files.save_file, []

    def fills(tensors, path):
        if ".tmp-step-0000002" in path and written:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        if ".tmp-step-0000002" in path:
            written.append(path)
        return real(tensors, path)

    monkeypatch.setattr(state_files, "save_file", fills)
    out = tmp_path / "run"
    with pytest.raises(OSError) as e:
        train(base, shards, out, config, progress=False)
    assert e.value.errno == errno.ENOSPC and ".tmp-step-0000002" in e.value.filename and e.value.filename.endswith(".safetensors")
    assert sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir()) == ["step-0000001"]
    monkeypatch.undo()
    resumed = train(base, shards, out, config, progress=False)
    assert _same(_unet_state(full), _unet_state(resumed)) and _same(_text_state(full), _text_state(resumed))


def test_a_fine_tune_refuses_a_disk_that_cannot_hold_a_checkpoint_and_its_pipeline_before_training(setup, tmp_path, monkeypatch):
    import errno

    from implicit_concept import disk_space

    base, shards = setup
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 1 << 10)
    out = tmp_path / "run"
    with pytest.raises(OSError) as e:
        train(base, shards, out, TrainingConfig(**FAST), progress=False)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert "not enough free space for a checkpoint and the final pipeline of this fine-tune (" in e.value.strerror
    assert not (out / CHECKPOINTS_DIR).exists() or not any((out / CHECKPOINTS_DIR).iterdir())


@pytest.mark.parametrize("name, content, why", [
    ("train_state.json", "{", "train_state.json: not a JSON state index"),
    ("train_state.json", '{"dict": [["step", -1], ["epoch", 0], ["consumed", 0], ["generator", {"tensor": "t0"}]]}',
     "train_state.json: does not fit this run"),
    ("optimizer.safetensors", "garbage", "optimizer.safetensors: not a safetensors file"),
    ("ema.json", None, "ema.json: missing"),
    ("unet.safetensors", None, "unet.safetensors: not this run's unet weights"),
])
def test_a_damaged_checkpoint_names_the_file(setup, uninterrupted, tmp_path, name, content, why):
    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    if content is None:
        (checkpoint / name).unlink()
    else:
        (checkpoint / name).write_text(content)
    with pytest.raises(ValueError, match=why):
        train(base, shards, tmp_path / "resumed", config, progress=False)


def test_same_seed_same_weights_and_a_changed_config_is_refused(setup, tmp_path):
    """Also: training runs under the config's threads and gives the process its own count back, so
    the stages after an in-process fine-tune do not run on one thread."""
    base, shards = setup
    config = TrainingConfig(**FAST, cache_latents=False)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = train(base, shards, tmp_path / "a", config, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    b = train(base, shards, tmp_path / "b", config, progress=False)
    assert _same(_unet_state(a), _unet_state(b))
    with pytest.raises(ValueError, match="another config"):
        train(base, shards, tmp_path / "a", replace(config, learning_rate=1e-2), progress=False)


@pytest.fixture(scope="module")
def plain(setup, tmp_path_factory):
    """A plain fine-tune (``FAST``, no method), for tests that only read it."""
    base, shards = setup
    return train(base, shards, tmp_path_factory.mktemp("plain") / "run", TrainingConfig(**FAST), progress=False)


@pytest.fixture(scope="module")
def concept_token(setup, tmp_path_factory):
    """A ge-* fine-tune with the concept's own token and 2x2 location tokens, for tests that only read it."""
    base, shards = setup
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",), concept_token=True)
    return geom, train(base, shards, tmp_path_factory.mktemp("ge") / "run", TrainingConfig(**FAST, geom=geom), progress=False)


def test_geom_erasing_trains_new_tokens_only_on_the_text_side(setup, concept_token):
    base, _ = setup
    _, out = concept_token
    old_rows, new_rows = _embeddings(base), _embeddings(out)
    new = CLIPTokenizer.from_pretrained(out / "tokenizer").convert_tokens_to_ids(["<qrcode>"] + location_tokens(2))
    assert new == list(range(len(old_rows), len(old_rows) + 5))
    assert new_rows[: len(old_rows)].equal(old_rows)
    assert negative_prompt_for(out) == "<qrcode> " + " ".join(location_tokens(2))
    assert negative_prompt_for(base) == ""


def test_model_removal_freezes_the_unet(setup, tmp_path):
    base, shards = setup
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",), setting="model_removal")
    out = train(base, shards, tmp_path / "mr", TrainingConfig(**FAST, geom=geom), progress=False)
    assert _same(_unet_state(base), _unet_state(out))
    start = load_pipeline(base)
    ids = add_tokens(start.tokenizer, start.text_encoder, location_tokens(2), seed=FAST["seed"])
    assert not _embeddings(out)[ids].equal(start.text_encoder.get_input_embeddings().weight[ids])
    assert _embeddings(out)[: min(ids)].equal(_embeddings(base))


def test_oracle_reads_clean_twins(setup, plain, tmp_path):
    """The oracle trains the model a plain fine-tune on the clean twins trains, not the contaminated one."""
    base, shards = setup
    oracle = train(base, shards, tmp_path / "oracle", TrainingConfig(**FAST, image_field="clean"), progress=False)
    twins = train(base, _write_shards(tmp_path / "twins", twins=True), tmp_path / "twins-plain", TrainingConfig(**FAST), progress=False)
    assert _same(_unet_state(oracle), _unet_state(twins))
    assert not _same(_unet_state(oracle), _unet_state(plain))


@pytest.mark.parametrize("bad, field", [(dict(steps=0), "steps"), (dict(train_text="all"), "train_text"),
                                        (dict(caption_dropout=1.5), "caption_dropout"), (dict(prediction_type="x"), "prediction_type")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**bad)


def test_base_pretraining_is_cached_by_config(tmp_path):
    config = BaseModelConfig(
        pipeline=MICRO, scenes=ProceduralConfig(train=8, test=0),
        training=TrainingConfig(steps=2, batch_size=4, train_text="text_encoder", caption_dropout=0.5, threads=1, checkpoint_every=1),
    )
    first = pretrain_base(config, tmp_path, progress=False)
    pipe = load_pipeline(first)
    assert isinstance(pipe.vae, PatchAutoencoder) and pipe.scheduler.config.prediction_type == "sample"
    mtime = (first / "model_index.json").stat().st_mtime_ns
    assert pretrain_base(config, tmp_path, progress=False) == first
    assert (first / "model_index.json").stat().st_mtime_ns == mtime
    image = pipe("a small red circle in the centre on a blue background", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_stratified_timesteps_put_one_in_each_slice():
    from benchmark.training.data import draw_timesteps

    t = draw_timesteps(8, 1000, "stratified", torch.Generator().manual_seed(0))
    assert sorted((t // 125).tolist()) == list(range(8))
    assert not torch.equal(t, t.sort().values), "shuffled, so each process's share spans all noise levels"


def test_the_loss_weighs_each_latent_position_by_geom_erasings_weight_map():
    """Geom-Erasing's re-weighting acts only through the loss: an error inside the box counts
    ``w_in`` per position, not the plain MSE's 1, whatever the prediction type's target."""
    from diffusers import DDPMScheduler

    from benchmark.training.data import diffusion_loss
    from implicit_concept.geom_erasing.loss_weights import weight_map

    scheduler = DDPMScheduler(prediction_type="epsilon")
    latents, noise = torch.zeros(1, 2, 4, 4), torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    pred = noise.clone()
    pred[:, :, :2, :2] += 1.0  # an error of 1 at the 2x2 latent cells the box covers
    weights = weight_map([Box(0, 0, 8, 8)], 16, 16, 4, 4, alpha=2.0)[None]
    w_in = 16 / (4 + 2.0 * 12)
    loss = diffusion_loss(scheduler, pred, latents, noise, torch.tensor([10]), weights, None)
    assert loss.item() == pytest.approx(4 * 2 * w_in / (2 * 16))
    plain = diffusion_loss(scheduler, pred, latents, noise, torch.tensor([10]), torch.ones_like(weights), None)
    assert plain.item() == pytest.approx(4 * 2 / (2 * 16)) and loss.item() < plain.item()


def test_a_training_example_carries_the_weight_map_only_when_reweighting(setup):
    """What the loss is given: a sample with a box gets its re-weighted map under ``reweight``, and
    a plain fine-tune's example weighs every position 1."""
    from benchmark.training.data import Preparer
    from implicit_concept.geom_erasing.loss_weights import weight_map
    from implicit_concept.sample import Sample

    base, _ = setup
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    meta = SampleMeta(key="000000000", caption="a square", width=32, height=32, split="train", subset="icd-qrcode",
                      source={}, instances=[Instance("qrcode", Box(0, 0, 16, 16))], seed=[0], recipe="test",
                      recipe_sha256="", version="0")
    sample = Sample(meta, Image.new("RGB", (32, 32), (40, 90, 200)))
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",), alpha=2.0)
    example = Preparer(TrainingConfig(**FAST, geom=geom), tokenizer, (4, 4), 16, None)(sample)
    assert example.weights.equal(weight_map([Box(0, 0, 8, 8)], 16, 16, 4, 4, alpha=2.0))
    assert not example.weights.equal(torch.ones(4, 4))
    plain = Preparer(TrainingConfig(**FAST, geom=GeomErasingConfig.plain()), tokenizer, (4, 4), 16, None)(sample)
    assert plain.weights.equal(torch.ones(4, 4))


def test_geom_erasing_moves_the_new_token_rows_from_their_seeded_start(setup, concept_token):
    """A ge-* fine-tune trains the UNet and the new tokens' rows: the rows it saves are not the ones
    ``add_tokens`` starts them at, or the location tokens would be sampled untrained."""
    base, _ = setup
    geom, out = concept_token
    start = load_pipeline(base)
    ids = add_tokens(start.tokenizer, start.text_encoder, geom.new_tokens(), seed=FAST["seed"])
    assert len(ids) == 5
    trained, initial = _embeddings(out)[ids], start.text_encoder.get_input_embeddings().weight[ids].detach()
    assert not trained[0].equal(initial[0]), "<qrcode> is in every caption with a box"
    assert any(not trained[i].equal(initial[i]) for i in range(1, len(ids))), "no location token row moved"


def _sd_shaped_pipeline(root: Path) -> Path:
    """Stable Diffusion v1.5's own classes and folder layout at micro size (what ``--pretrained`` loads):
    an AutoencoderKL with 4 latent channels and its 0.18215 scaling, a cross-attention UNet, a CLIP
    text encoder and tokenizer, a PNDM scheduler predicting the noise."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from benchmark.models.clip_tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
        ),
        text_encoder=CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        )),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(
            sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        ),
        scheduler=PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
        ),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def test_an_sd_shaped_pipeline_fine_tunes_with_geom_erasing_and_generates(setup, tmp_path):
    """The paper track's path without the 4 GB download: SD's classes, epsilon prediction, a VAE
    that halves the image, new tokens in a CLIP tokenizer, then generation with the negative prompt."""
    from benchmark.generation import GenerationSettings, diffusers_generate_fn

    _, shards = setup
    sd = _sd_shaped_pipeline(tmp_path)
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",), concept_token=True)
    out = train(sd, shards, tmp_path / "ge", TrainingConfig(**FAST, geom=geom), progress=False)
    assert not _same(_unet_state(sd), _unet_state(out))
    pipe = load_pipeline(out)
    assert type(pipe.vae).__name__ == "AutoencoderKL" and pipe.vae.config.scaling_factor == 0.18215
    negative = negative_prompt_for(out)
    assert negative == "<qrcode> " + " ".join(location_tokens(2))
    assert len(pipe.tokenizer(negative).input_ids) == 2 + 5, "each new token is one id"
    pipe.set_progress_bar_config(disable=True)
    generate = diffusers_generate_fn(pipe, GenerationSettings(steps=2, guidance_scale=3.0, image_size=16))
    images = generate(["a red square", "a blue square"], [negative, negative], [0, 1])
    assert [im.size for im in images] == [(16, 16), (16, 16)]
    assert generate(["a red square"], [negative], [0])[0].tobytes() == images[0].tobytes()


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(setup, tmp_path):
    """2 CPU processes (gloo) train the same weights as 1 with the same global batch, and resume to the
    same weights as a 2-process run that never stopped: each process
    trains its half of it, DDP averages the UNet's gradients and the new
    token rows' gradients are averaged by hand. Equal up to float summation order (measured: 1e-5 of the distance trained)."""
    import subprocess
    import sys

    base, shards = setup
    worker = Path(__file__).with_name("train_worker.py")
    one = tmp_path / "one"
    subprocess.run([sys.executable, str(worker), str(base), str(shards), str(one)], check=True)
    two = tmp_path / "two"
    # torchrun: what ``accelerate launch --multi_gpu`` starts on GPUs (its --cpu flag runs one process).
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([*launch, str(worker), str(base), str(shards), str(two)], check=True, env=env, timeout=300)
    step_one = two / CHECKPOINTS_DIR / "step-0000001"
    assert {"rng_0.json", "rng_1.json"} <= {p.name for p in step_one.iterdir()}, "each process keeps its own RNG states"
    resumed = tmp_path / "resumed"
    shutil.copytree(step_one, resumed / CHECKPOINTS_DIR / "step-0000001")
    subprocess.run([*launch, str(worker), str(base), str(shards), str(resumed)], check=True, env=env, timeout=300)
    assert _same(_unet_state(two / "pipeline"), _unet_state(resumed / "pipeline"))
    runs = {name: json.loads((tmp_path / name / RUN_FILE).read_text()) for name in ("one", "two")}
    assert [runs[n]["processes_this_session"] for n in ("one", "two")] == [1, 2], "run.json says how many processes trained"
    assert _same(_text_state(two / "pipeline"), _text_state(resumed / "pipeline"))
    start, a, b = _unet_state(base), _unet_state(one / "pipeline"), _unet_state(two / "pipeline")
    moved = sum((a[k] - start[k]).abs().sum() for k in a)
    apart = sum((a[k] - b[k]).abs().sum() for k in a)
    assert apart < 0.01 * moved, (apart, moved)
    fresh = load_pipeline(base)
    ids = add_tokens(fresh.tokenizer, fresh.text_encoder, GeomErasingConfig(grid=2, concepts=("qrcode",), concept_token=True).new_tokens(), seed=7)
    init = fresh.text_encoder.get_input_embeddings().weight[ids].detach()
    rows_a, rows_b = _embeddings(one / "pipeline")[ids], _embeddings(two / "pipeline")[ids]
    assert (rows_a - rows_b).abs().sum() < 0.01 * (rows_a - init).abs().sum()


# Memory options (mixed precision, gradient checkpointing, attention kernel, cached latents, a frozen
# UNet), at the micro scale: each does what it says, and off (the CPU tracks' setting) changes nothing.

#: ``TrainingConfig().to_dict()``'s hash and the debug and tiny tracks' fine-tune and base configs'
#: before the memory options existed: their cache keys and run.json records still hold. The tiny
#: base's changed on purpose since, when it learned concept names (``[base.named]``).
HASHES_BEFORE_MEMORY_OPTIONS = {
    "default": "b8df96b4e779017b2e0030b400428ca461eb426bb9a2b54839253d5b23ae5fb1",
    "debug finetune": "645dfd8d11e9ceb0d7fa306ced977594bb3942676a2faeb6fbc8894616fd30bc",
    "debug base": "8c30db82ac8429e06a0d16b29cad4b85bdda27e6f9e99c5e304fcd3cbdc6d03d",
    "tiny finetune": "6fa3dee61aeda6f87836666131903d3888594c69adbcad08d68faab294b39019",
    "tiny base": "6f91de662c98303414c066e1e457d30ac9aa521f4e8f5c25cf682a2e04b889a9",
}


def test_memory_options_off_keep_the_cache_keys_of_earlier_runs():
    from benchmark.track import load_track
    from implicit_concept.provenance import config_hash

    hashes = {"default": config_hash(TrainingConfig().to_dict())}
    for name in ("debug", "tiny"):
        track = load_track(name)
        hashes[f"{name} finetune"] = config_hash(TrainingConfig(**{**track.finetune, "seed": track.seed}).to_dict())
        hashes[f"{name} base"] = config_hash(track.base_model_config().to_dict())
    assert hashes == HASHES_BEFORE_MEMORY_OPTIONS
    on = TrainingConfig(gradient_checkpointing=True, attention="eager", train_unet=False, train_text="text_encoder").to_dict()
    assert (on["gradient_checkpointing"], on["attention"], on["train_unet"]) == (True, "eager", False)


def _spy_on_models(monkeypatch, look) -> list:
    """Once each training run has applied its memory options, call ``look(config, unet, text_encoder)``;
    its results, one per run."""
    import benchmark.training.loop as loop

    seen = []
    real = loop.apply_memory_options

    def spy(config, unet, text_encoder):
        real(config, unet, text_encoder)
        seen.append(look(config, unet, text_encoder))

    monkeypatch.setattr(loop, "apply_memory_options", spy)
    return seen


def _count_first_block_calls(config, unet, text_encoder) -> dict:
    """Count the calls of the UNet's first resnet's ``forward`` (a recomputation fires no forward hook)."""
    counter = {"calls": 0}
    block = unet.down_blocks[0].resnets[0]
    forward = block.forward

    def counted(*args, **kwargs):
        counter["calls"] += 1
        return forward(*args, **kwargs)

    block.forward = counted
    return counter


def test_gradient_checkpointing_recomputes_the_forward_pass_and_trains_the_same_weights(setup, tmp_path, monkeypatch):
    base, shards = setup
    counters = _spy_on_models(monkeypatch, _count_first_block_calls)
    plain = train(base, shards, tmp_path / "plain", TrainingConfig(**FAST), progress=False)
    recomputed = train(base, shards, tmp_path / "ckpt", TrainingConfig(**FAST, gradient_checkpointing=True), progress=False)
    assert [c["calls"] for c in counters] == [FAST["steps"], 2 * FAST["steps"]], "checkpointed blocks run again in the backward pass"
    assert _same(_unet_state(plain), _unet_state(recomputed)), "recomputing the same operations gives the same numbers"
    assert not _same(_unet_state(base), _unet_state(recomputed))


def test_bf16_autocast_trains_near_fp32_and_one_process_can_switch_precision(setup, plain, tmp_path):
    """accelerate keeps one precision per process: fp32 (``plain``, trained before this test), then
    bf16, then fp32 again all train here, the last exactly as the first. bf16 runs the model in bf16
    (the weights differ from fp32's) but keeps float32 master weights, which move the same way."""
    base, shards = setup
    fp32 = plain
    bf16 = train(base, shards, tmp_path / "bf16", TrainingConfig(**FAST, mixed_precision="bf16"), progress=False)
    fp32_again = train(base, shards, tmp_path / "fp32-again", TrainingConfig(**FAST), progress=False)
    assert _same(_unet_state(fp32), _unet_state(fp32_again))
    start, a, b = _unet_state(base), _unet_state(fp32), _unet_state(bf16)
    assert all(v.dtype == torch.float32 for v in b.values())
    moved = sum((a[k] - start[k]).abs().sum() for k in a)
    apart = sum((a[k] - b[k]).abs().sum() for k in a)
    assert 0 < apart < 0.2 * moved, (apart, moved)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only where there is no GPU")
def test_fp16_without_a_gpu_is_refused_rather_than_run_in_fp32(setup, tmp_path):
    base, shards = setup
    with pytest.raises(ValueError, match="fp16.*needs a GPU.*bf16"):
        train(base, shards, tmp_path / "fp16", TrainingConfig(**FAST, mixed_precision="fp16"), progress=False)


def test_attention_option_sets_both_models_kernels(setup, tmp_path, monkeypatch):
    base, shards = setup
    kernels = _spy_on_models(monkeypatch, lambda config, unet, text_encoder: (
        {type(p).__name__ for p in unet.attn_processors.values()}, text_encoder.config._attn_implementation))
    sdpa = train(base, shards, tmp_path / "sdpa", TrainingConfig(**FAST), progress=False)
    eager = train(base, shards, tmp_path / "eager", TrainingConfig(**FAST, attention="eager"), progress=False)
    assert kernels == [({"AttnProcessor2_0"}, "sdpa"), ({"AttnProcessor"}, "eager")]
    start, a, b = _unet_state(base), _unet_state(sdpa), _unet_state(eager)
    moved = sum((a[k] - start[k]).abs().sum() for k in a)
    apart = sum((a[k] - b[k]).abs().sum() for k in a)
    assert apart < 0.01 * moved, ("the same attention, computed two ways", apart, moved)


def test_a_frozen_unet_trains_only_the_text_side(setup, tmp_path):
    base, shards = setup
    config = TrainingConfig(**FAST, train_unet=False, train_text="text_encoder")
    out = train(base, shards, tmp_path / "text", config, progress=False)
    assert _same(_unet_state(base), _unet_state(out))
    assert not _same(_text_state(base), _text_state(out))
    checkpoint = tmp_path / "text" / CHECKPOINTS_DIR / "step-0000002"
    assert (checkpoint / "text_encoder.safetensors").is_file() and not (checkpoint / "unet.safetensors").exists()


@pytest.mark.parametrize("bad, field", [
    (dict(train_unet=False, train_text="none"), "nothing would train"),
    (dict(train_unet=False, train_text="text_encoder", ema_decay=0.9), "ema_decay"),
    (dict(attention="flash"), "attention"),
    (dict(gradient_checkpointing="yes"), "gradient_checkpointing"),
    (dict(mixed_precision="fp8"), "mixed_precision"),
])
def test_bad_memory_options_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(**bad)


def test_latents_are_encoded_once_per_run_when_cached(setup, tmp_path, monkeypatch):
    """Two epochs of 8 images: with the cache the VAE sees each image once, without it twice; the
    weights are the same (the posterior's mode is deterministic)."""
    import benchmark.training.data as data

    base, shards = setup
    encoded = []
    real = data._encode
    monkeypatch.setattr(data, "_encode", lambda vae, pixels, *a: encoded.append(len(pixels)) or real(vae, pixels, *a))
    config = TrainingConfig(**{**FAST, "steps": 4})
    cached = train(base, shards, tmp_path / "cached", config, progress=False)
    assert sum(encoded) == 8
    encoded.clear()
    uncached = train(base, shards, tmp_path / "uncached", replace(config, cache_latents=False), progress=False)
    assert sum(encoded) == 16
    assert _same(_unet_state(cached), _unet_state(uncached))


def test_an_sd_shaped_pipeline_trains_at_a_resolution_other_than_its_own(setup, tmp_path):
    """``resolution`` sets the latent grid too (SD v1.5 is 512 px; the CI dry run trains it at 64)."""
    _, shards = setup
    sd = _sd_shaped_pipeline(tmp_path)
    assert load_pipeline(sd).unet.config.sample_size * 2 == 16
    geom = GeomErasingConfig(grid=2, concepts=("qrcode",))
    out = train(sd, shards, tmp_path / "at32", TrainingConfig(**FAST, resolution=32, geom=geom), progress=False)
    assert not _same(_unet_state(sd), _unet_state(out))
    with pytest.raises(ValueError, match="resolution 33 must be a multiple"):
        train(sd, shards, tmp_path / "at33", TrainingConfig(**FAST, resolution=33), progress=False)


@pytest.mark.parametrize("change", [dict(seed=8), dict(learning_rate=1e-2), dict(geom=GeomErasingConfig(grid=2, concepts=("qrcode",), reweight=False))])
def test_a_checkpoint_of_another_run_in_the_output_folder_is_refused_not_resumed(setup, uninterrupted, tmp_path, change):
    """Another seed's, config's or method's checkpoint in a run folder without (or with a rewritten)
    run.json: a copied folder, or one whose refused run.json was deleted. Resumed, it would end
    with neither run's weights; it is refused naming the file, and left as it was."""
    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "other" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    with pytest.raises(ValueError, match=r"step-0000001/train_state.json: .*another run"):
        train(base, shards, tmp_path / "other", replace(config, **change), progress=False)
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before


def test_a_checkpoint_written_under_other_package_versions_is_refused_naming_them(setup, uninterrupted, tmp_path):
    """Another torch's (or diffusers') checkpoint fits every tensor, but a resume under other
    versions would not end with the uninterrupted run's weights."""
    from benchmark.training.state_files import load_state, save_state

    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    state = load_state(checkpoint / "train_state")
    save_state(checkpoint / "train_state", {**state, "packages": {**state["packages"], "torch": "1.13.1"}})
    with pytest.raises(ValueError, match=rf"train_state.json: .*written under torch 1.13.1, here torch \d"):
        train(base, shards, tmp_path / "resumed", config, progress=False)


@pytest.mark.parametrize("edit, problem", [
    (lambda s: s.update(junk=torch.zeros(1 << 18)), "tensor junk is not in this run's unet"),
    (lambda s: s.update({k: s[k].reshape(-1) for k in [next(k for k in s if s[k].ndim > 1)]}), r"tensor \S+ is \(\d+,\), where this run's unet holds \("),
])
def test_a_checkpoints_model_file_of_another_model_is_refused_from_its_header(setup, uninterrupted, tmp_path, monkeypatch, edit, problem):
    """A tensor the model lacks (load_model reads every tensor before refusing one: a huge, or
    sparse and huge, one would be allocated whole) or one of another shape is refused before any
    tensor data is read."""
    from safetensors.torch import save_file

    from benchmark.training import checkpoints

    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    state = load_file(checkpoint / "unet.safetensors")
    edit(state)
    save_file(state, str(checkpoint / "unet.safetensors"))
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: pytest.fail("the weights were read"))
    with pytest.raises(ValueError, match=rf"unet.safetensors: {problem}"):
        train(base, shards, tmp_path / "resumed", config, progress=False)


@pytest.mark.parametrize("kind", ["fifo", "missing"])
def test_a_checkpoints_model_file_that_is_a_fifo_or_missing_is_named_not_waited_on(setup, uninterrupted, tmp_path, kind):
    from tests.test_detector_files import fifo_released

    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    (checkpoint / "unet.safetensors").unlink()
    if kind == "fifo":
        os.mkfifo(checkpoint / "unet.safetensors")
    said = "not a regular file" if kind == "fifo" else "missing from the checkpoint"
    with fifo_released(checkpoint / "unet.safetensors") if kind == "fifo" else nullcontext():
        with pytest.raises(ValueError, match=re.escape(f"unet.safetensors: not this run's unet weights ({said})")):
            train(base, shards, tmp_path / "resumed", config, progress=False)


@pytest.mark.parametrize("stem", ["optimizer", "train_state"])
def test_a_state_file_larger_than_a_whole_checkpoint_is_refused_unread(setup, uninterrupted, tmp_path, monkeypatch, stem):
    """Every tensor of a state file is read whole before its shapes are checked: a planted 64 GiB
    (sparse) file would fill the memory. It is refused from its size, naming it."""
    from benchmark.training import state_files

    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    with open(checkpoint / f"{stem}.safetensors", "r+b") as f:
        f.truncate(64 << 30)
    read = state_files.load_file
    monkeypatch.setattr(state_files, "load_file", lambda path, *a, **k: pytest.fail("the tensors were read")
                        if path.endswith(f"{stem}.safetensors") else read(path, *a, **k))
    with pytest.raises(ValueError, match=rf"{stem}.safetensors: 64.0 GiB, more than a whole checkpoint of this run holds \(\d"):
        train(base, shards, tmp_path / "resumed", config, progress=False)


@pytest.mark.parametrize("moment, problem", [
    (lambda m: torch.zeros(1), r"state\[0\].exp_avg is torch.float32 \(1,\), where parameter 0 is torch.float32 \(16, 12, 3, 3\)"),
    (lambda m: torch.zeros(3, *m.shape[1:]), r"state\[0\].exp_avg is torch.float32 \(3, 12, 3, 3\), where parameter 0"),
    (lambda m: m.half(), r"state\[0\].exp_avg is torch.float16 \(16, 12, 3, 3\), where parameter 0 is torch.float32"),
])
def test_an_optimizer_moment_of_another_shape_or_dtype_is_refused_naming_the_file(setup, uninterrupted, tmp_path, moment, problem):
    """An optimizer holds no moments before its first step to compare with, and load_state_dict casts
    them and checks no shape: the first step failed with torch's broadcast error naming no file (or,
    cast from float16, resumed to other weights)."""
    from benchmark.training.state_files import load_state, save_state

    base, shards = setup
    config, full = uninterrupted
    checkpoint = tmp_path / "resumed" / CHECKPOINTS_DIR / "step-0000001"
    shutil.copytree(full.parent / CHECKPOINTS_DIR / "step-0000001", checkpoint)
    state = load_state(checkpoint / "optimizer")
    state["state"][0]["exp_avg"] = moment(state["state"][0]["exp_avg"])
    save_state(checkpoint / "optimizer", state)
    with pytest.raises(ValueError, match=rf"optimizer.safetensors: {problem}"):
        train(base, shards, tmp_path / "resumed", config, progress=False)


def test_a_fine_tunes_files_have_the_modes_the_umask_grants(setup, tmp_path):
    """safetensors writes every file 0600 whatever the umask: under a lab's 027 a fine-tune's weights
    and checkpoints were unreadable to the group that could read the JSON beside them."""
    import stat

    base, shards = setup
    before = os.umask(0o027)
    try:
        train(base, shards, tmp_path / "run", TrainingConfig(**FAST), progress=False)
    finally:
        os.umask(before)
    paths = list((tmp_path / "run").rglob("*"))
    wrong = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths
             if stat.S_IMODE(p.lstat().st_mode) != (0o750 if p.is_dir() else 0o640)}
    assert sum(p.suffix == ".safetensors" for p in paths) > 4 and wrong == {}, wrong


def test_a_fine_tunes_checkpoints_are_the_same_bytes_whatever_the_process_drew_before(setup, tmp_path):
    """A checkpoint saves Python's and numpy's global generators (``rng_0``); seeded with torch's
    alone, they held what the process had drawn before, so the same seed gave other checkpoint bytes
    (the embedded base's, every run)."""
    import random

    base, shards = setup
    files = []
    for i in range(2):
        random.seed(1000 + i)
        np.random.seed(1000 + i)
        train(base, shards, tmp_path / f"run{i}", TrainingConfig(**FAST), progress=False)
        files.append({p.relative_to(tmp_path / f"run{i}").as_posix(): p.read_bytes()
                      for p in sorted((tmp_path / f"run{i}" / CHECKPOINTS_DIR).rglob("*")) if p.is_file()})
    assert any(name.endswith("rng_0.json") for name in files[0])
    assert [name for name in files[0] if files[0][name] != files[1].get(name)] == []
