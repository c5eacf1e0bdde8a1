"""A pipeline part saved or loaded the way the toolkit does draws none of transformers' or
diffusers' per-call bars (``Loading weights 20/20``, ``Writing model shards 1/1``), which ignored
the toolkit's rules off a terminal, and the caller's own bar settings for those libraries are as
they were after the call."""
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel
from transformers.utils import logging as transformers_logging

from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline, save_portable_pipeline

MICRO = TinyPipelineConfig(image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
                           text_hidden=16, text_layers=1, text_heads=2)
LIBRARY_BARS = ("Loading weights", "Writing model shards", "Loading checkpoint shards")


def test_saving_and_loading_a_pipeline_draws_no_library_bar(tmp_path, capfd):
    pipe = build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=3)
    capfd.readouterr()
    save_portable_pipeline(pipe, tmp_path / "pipe")
    load_pipeline(tmp_path / "pipe")
    err = capfd.readouterr().err
    assert not [bar for bar in LIBRARY_BARS if bar in err], err[-2000:]
    assert transformers_logging.set_tqdm_hook(None) is None and diffusers_logging.is_progress_bar_enabled()


def test_the_callers_own_bar_settings_hold_after_and_still_apply_to_its_own_calls(tmp_path, capfd):
    pipe = build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=3)
    drawn = []

    def callers_hook(factory, args, kwargs):
        drawn.append(kwargs.get("desc"))
        return transformers_logging.EmptyTqdm(*args, **kwargs)

    previous = transformers_logging.set_tqdm_hook(callers_hook)
    diffusers_logging.disable_progress_bar()
    try:
        save_portable_pipeline(pipe, tmp_path / "pipe")
        load_pipeline(tmp_path / "pipe")
        assert drawn == [], "the toolkit's own loads and saves go through no caller's hook"
        assert diffusers_logging.is_progress_bar_enabled() is False
        CLIPTextModel.from_pretrained(tmp_path / "pipe" / "text_encoder", local_files_only=True)
        assert "Loading weights" in drawn, "the caller's hook is back for its own calls"
    finally:
        assert transformers_logging.set_tqdm_hook(previous) is callers_hook
        diffusers_logging.enable_progress_bar()


def test_a_part_saved_in_shards_loads_without_diffusers_shard_bar(tmp_path, capfd):
    """A pretrained base's UNet in several safetensors shards: diffusers drew its own bar over them
    ("Loading checkpoint shards") at every load, under its own switch, not transformers' hook."""
    import shutil

    pipe = build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=3)
    save_portable_pipeline(pipe, tmp_path / "pipe")
    shutil.rmtree(tmp_path / "pipe" / "unet")
    pipe.unet.save_pretrained(tmp_path / "pipe" / "unet", max_shard_size="20KB")
    assert len(list((tmp_path / "pipe" / "unet").glob("*.safetensors"))) > 1, "saved in shards"
    capfd.readouterr()
    load_pipeline(tmp_path / "pipe")
    err = capfd.readouterr().err
    assert "Loading checkpoint shards" not in err, err[-2000:]
    assert diffusers_logging.is_progress_bar_enabled()
