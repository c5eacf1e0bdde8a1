"""SD v1.5's architecture from the configs in the repo: the published shapes, built with random
weights, saved and loaded by the path real weights take; and the paper track's dry run in the form CI
affords (full-size models, small inputs, two steps)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.models import sd15
from benchmark.models.pipelines import load_pipeline


def _on_meta() -> dict[str, torch.nn.Module]:
    """The three models with no memory behind their weights: shapes only."""
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel(**sd15.UNET),
            "vae": AutoencoderKL(**sd15.VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**sd15.TEXT_ENCODER)),
        }


def test_the_configs_give_the_published_parameter_counts():
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in _on_meta().items()}
    assert counts == sd15.PARAMETERS == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_the_configs_are_sd_v1_5s():
    models = _on_meta()
    unet, vae, text = models["unet"].config, models["vae"].config, models["text_encoder"].config
    assert unet.sample_size == 64 and unet.in_channels == unet.out_channels == 4
    assert tuple(unet.block_out_channels) == (320, 640, 1280, 1280) and unet.layers_per_block == 2
    assert unet.cross_attention_dim == 768 == text.hidden_size and unet.attention_head_dim == 8
    assert tuple(unet.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert tuple(unet.up_block_types) == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert tuple(vae.block_out_channels) == (128, 256, 512, 512) and vae.latent_channels == 4
    assert vae.scaling_factor == 0.18215 and vae.sample_size == 512 and vae.layers_per_block == 2
    assert (text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (12, 12, 3072)
    assert (text.max_position_embeddings, text.vocab_size, text.hidden_act) == (77, 49408, "quick_gelu")
    scheduler = PNDMScheduler(**sd15.SCHEDULER).config
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert scheduler.num_train_timesteps == 1000 and scheduler.skip_prk_steps and scheduler.steps_offset == 1
    assert scheduler.prediction_type == "epsilon" and not scheduler.set_alpha_to_one


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("paper-dry")


@pytest.mark.slow
def test_a_random_sd15_pipeline_loads_like_the_real_folder(work):
    out = sd15.build_sd15_pipeline(work / "sd15", seed=0)
    index = json.loads((out / "model_index.json").read_text())
    assert {k: index[k] for k in ("unet", "vae", "text_encoder", "scheduler", "tokenizer")} == {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "scheduler": ["diffusers", "PNDMScheduler"],
        "tokenizer": ["transformers", "CLIPTokenizer"]}
    pipe = load_pipeline(out)
    counts = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in sd15.PARAMETERS}
    assert counts == sd15.PARAMETERS
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    assert pipe.vae_scale_factor == 8 and isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407], "CLIP's ids"


@pytest.mark.slow
def test_the_paper_dry_run_in_the_form_ci_affords(work):
    """The paper-dry track with full-size models but small inputs: 512 px data trained and sampled at
    64 px (8 x 8 latents), two steps, and the UNet frozen: only the text side trains (plain: the whole
    text encoder; Geom-Erasing: it and its new rows), so AdamW holds no 7 GB for the UNet's state and
    the run stays near 7 GB. Everything else is the full run's: data, method fine-tunes, checkpoints,
    resume to the same weights, sampling with the negative prompt. Reuses the base built above."""
    from benchmark.perf.paper_dry_run import dry_run
    from benchmark.track import load_track

    full = load_track("paper-dry")
    track = load_track("paper-dry", {
        "finetune": {**full.finetune, "train_unet": False, "train_text": "text_encoder", "resolution": 64},
        "generation": {**full.generation, "image_size": 64, "steps": 2},
    })
    report = dry_run(track, work, images=4, threads=1)
    assert report["ok"], report["checks"]
    assert len(report["checks"]) == 4
    assert report["stages"]["finetune ge-full"]["trained"] == {"unet": False, "text_encoder_rows": True, "new_token_rows": True}
    assert "<l0,0>" in report["stages"]["finetune ge-full"]["negative_prompt"]
    assert report["stages"]["finetune sd"]["negative_prompt"] == ""
    assert report["peak_rss_gib"] < 10
    # The base and one fine-tune with its checkpoints (10.7 GiB measured), never the resumed run beside
    # the uninterrupted one (13.4 GiB: CI's disk ran out there).
    assert report["peak_disk_gib"] < 12
    assert Image.open(work / "sample.png").size == (64, 64)
    assert json.loads((work / "dry_run.json").read_text())["ok"]
    assert not (work / "sd15").exists() and not (work / "resumed").exists(), "the gigabytes are removed once checked"


def test_the_documented_paper_dry_run_passes_its_start_up_checks_at_512_px(tmp_path, monkeypatch):
    """README's `python -m benchmark.perf.paper_dry_run --out ...` at the shipped paper-dry config
    (512 px, unlike the CI form above): its start-up checks (the procedural source written, the whole
    track checked as a `--pretrained` run's) pass, and the heavy stages start. They are stopped at the
    first one here; the 512 px run itself is about 15 GiB."""
    from benchmark import stages
    from benchmark.perf import paper_dry_run
    from benchmark.track import load_track

    assert load_track("paper-dry").generation["image_size"] == 512

    class Started(Exception):
        pass

    def first_stage(run):
        raise Started(run)

    monkeypatch.setattr(stages, "dataset", first_stage)  # the dry run imports its stages when it runs
    with pytest.raises(Started) as started:
        paper_dry_run.main(["--out", str(tmp_path / "paper-dry"), "--images", "1"])
    assert started.value.args[0].track.generation["image_size"] == 512
