"""``--pretrained`` is checked at a run's start, from JSON and file listings: every folder
``load_pipeline`` would refuse, or that would load and fail mid-training (another architecture), is
refused before any stage in one line naming the file; the layouts labs hold pass. The folders are
SD-1.5-shaped (the same classes, block types, 4 latent channels, 8x VAE and CLIP tokenizer as
``benchmark/models/sd15.py``) at toy widths."""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.benchmark_run import BenchmarkRun
from benchmark.cli import main
from benchmark.models import sd15
from benchmark.models.clip_tokenizer import build_clip_tokenizer
from benchmark.models.pipelines import load_pipeline, save_portable_pipeline
from benchmark.models.pretrained_check import check_pretrained
from benchmark.track import load_track


def _tiny_sd(out: Path, text_dim: int = 32, prediction_type: str = "epsilon") -> Path:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**sd15.UNET, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "cross_attention_dim": text_dim,
                                   "attention_head_dim": 2, "norm_num_groups": 8, "sample_size": 8})
    vae = AutoencoderKL(**{**sd15.VAE, "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64})
    text = CLIPTextModel(CLIPTextConfig(**{**sd15.TEXT_ENCODER, "hidden_size": text_dim, "intermediate_size": 64, "num_hidden_layers": 1,
                                           "num_attention_heads": 2, "projection_dim": text_dim}))
    out.mkdir(parents=True)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(out / "tokenizer"),
                                   scheduler=PNDMScheduler(**{**sd15.SCHEDULER, "prediction_type": prediction_type}),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return save_portable_pipeline(pipe, out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _tiny_sd(tmp_path_factory.mktemp("sd") / "sd-tiny")


@pytest.fixture
def copy(tiny, tmp_path):
    def make(name: str = "copy") -> Path:
        return Path(shutil.copytree(tiny, tmp_path / name))
    return make


def _edit(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def _refused(folder: Path, error: type, *fragments: str) -> str:
    with pytest.raises(error) as e:
        check_pretrained(folder)
    message = str(e.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# The layouts labs hold: checked, and load_pipeline agrees by loading them.

def _fp16_only(folder: Path) -> None:
    for part, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        plain = folder / part / f"{stem}.safetensors"
        save_file({k: v.half() for k, v in load_file(plain).items()}, folder / part / f"{stem}.fp16.safetensors", metadata={"format": "pt"})
        plain.unlink()


def _hub_snapshot(folder: Path, root: Path) -> Path:
    """huggingface_hub's cache layout: every file of the snapshot a symlink into blobs/."""
    snapshot = root / "models--runwayml--stable-diffusion-v1-5" / "snapshots" / ("a" * 40)
    blobs = root / "models--runwayml--stable-diffusion-v1-5" / "blobs"
    blobs.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        blob = blobs / f"{i:064x}"
        shutil.copyfile(f, blob)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def test_the_layouts_labs_hold_pass_and_load(tiny, copy, tmp_path):
    full = check_pretrained(tiny)
    assert full["weights"] == {"vae": ["vae/diffusion_pytorch_model.safetensors"], "text_encoder": ["text_encoder/model.safetensors"],
                               "unet": ["unet/diffusion_pytorch_model.safetensors"]}
    assert full["latent_channels"] == 4 and full["cross_attention_dim"] == 32
    fp16 = copy("fp16-only")
    _fp16_only(fp16)
    assert check_pretrained(fp16)["weights"]["unet"] == ["unet/diffusion_pytorch_model.fp16.safetensors"]
    beside = copy("bin-beside")  # a pickle beside the safetensors is ignored, never opened
    (beside / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not even a pickle")
    (beside / "model_index.json").write_text(json.dumps({**json.loads((beside / "model_index.json").read_text()),
                                                         "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
                                                         "feature_extractor": ["transformers", "CLIPImageProcessor"]}))
    snapshot = _hub_snapshot(tiny, tmp_path / "hub")
    sd2 = _tiny_sd(tmp_path / "sd2", text_dim=48, prediction_type="v_prediction")  # SD 2: v-prediction, a wider text encoder
    assert check_pretrained(sd2)["cross_attention_dim"] == 48
    link = tmp_path / "link"
    link.symlink_to(tiny)
    for folder in (fp16, beside, snapshot, sd2, link):
        check_pretrained(folder)
        load_pipeline(folder)
    message = _refused(tmp_path / "hub", FileNotFoundError, "no model_index.json")
    assert str(snapshot) in message, "the cache's root names the snapshot to pass"


def test_the_embedded_pipeline_passes(tmp_path):
    """A saved tiny pipeline of this package (its VAE is the PatchAutoencoder: 48 latent channels)."""
    from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline

    folder = save_portable_pipeline(build_tiny_pipeline(TinyPipelineConfig(unet_channels=(16, 32), unet_attention=(False, True),
                                                                           text_hidden=16, text_layers=1),
                                                        tmp_path / "tok"), tmp_path / "tiny")
    assert check_pretrained(folder)["latent_channels"] == 48


# Refused, one line naming the file, without reading a tensor.

@pytest.mark.parametrize("part", ["vae", "text_encoder", "tokenizer", "unet", "scheduler"])
def test_a_missing_part_is_refused(copy, part):
    folder = copy()
    shutil.rmtree(folder / part)
    _refused(folder, FileNotFoundError, str(folder), f"no {part}/ folder")


@pytest.mark.parametrize("part,stem,pickled", [("unet", "diffusion_pytorch_model", "diffusion_pytorch_model.bin"),
                                               ("text_encoder", "model", "pytorch_model.bin"),
                                               ("vae", "diffusion_pytorch_model", "diffusion_pytorch_model.bin")])
def test_a_part_with_only_pickled_weights_is_refused_as_load_pipeline_refuses_it(copy, tmp_path, part, stem, pickled):
    folder = copy()
    (folder / part / f"{stem}.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / part / pickled).write_bytes(pickle.dumps(Evil()))
    message = _refused(folder, ValueError, f"{folder / part}: no {stem}.safetensors", pickled, "never loaded")
    with pytest.raises(ValueError) as late:
        load_pipeline(folder)
    assert str(late.value) == message, "the same lookup of the weights file"
    assert not marker.exists()


def test_an_empty_part_a_pointer_file_and_missing_files_are_refused(copy):
    empty = copy("empty")
    for f in (empty / "unet").iterdir():
        f.unlink()
    _refused(empty, ValueError, f"{empty / 'unet'}: no diffusion_pytorch_model.safetensors", "found: nothing")
    pointer = copy("lfs-pointer")  # a clone without git-lfs: every weights file is a 130-byte pointer
    weights = pointer / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 3438167536\n")
    _refused(pointer, ValueError, str(weights), "not a readable safetensors file")
    for part, name in (("tokenizer", "merges.txt"), ("tokenizer", "vocab.json"), ("scheduler", "scheduler_config.json"), ("unet", "config.json"),
                       ("text_encoder", "config.json")):
        folder = copy(f"no-{part}-{name}")
        (folder / part / name).unlink()
        if part == "tokenizer":
            (folder / part / "tokenizer.json").unlink()  # else read from it
        _refused(folder, FileNotFoundError, str(folder / part / name), "missing")


@pytest.mark.parametrize("kept", [("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.json", "vocab.json")])
def test_a_tokenizer_of_either_layout_passes_as_it_loads(copy, kept):
    """transformers 5 saves a CLIP tokenizer as tokenizer.json alone (pipe.save_pretrained), SD v1.5's
    folder holds vocab.json and merges.txt: either loads, and was refused for lacking the other."""
    folder = copy()
    for file in (folder / "tokenizer").iterdir():
        if file.name in ("tokenizer.json", "vocab.json", "merges.txt") and file.name not in kept:
            file.unlink()
    check_pretrained(folder)
    assert load_pipeline(folder).tokenizer("a qr code").input_ids == load_pipeline(copy("all")).tokenizer("a qr code").input_ids


def test_a_single_file_checkpoint_and_a_folder_without_an_index_are_refused(tiny, tmp_path):
    single = tmp_path / "v1-5-pruned-emaonly.safetensors"
    shutil.copyfile(tiny / "unet" / "diffusion_pytorch_model.safetensors", single)
    _refused(single, ValueError, str(single), "a file, not a diffusers pipeline folder", "from_single_file")
    _refused(tiny / "unet", FileNotFoundError, "no model_index.json")


@pytest.mark.parametrize("class_name", ["StableDiffusionXLPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionUpscalePipeline"])
def test_another_pipeline_class_is_refused(copy, class_name):
    folder = copy()
    _edit(folder / "model_index.json", _class_name=class_name)
    _refused(folder, ValueError, str(folder / "model_index.json"), repr(class_name), "StableDiffusionPipeline")


def test_a_scheduler_or_vae_class_load_pipeline_does_not_load_is_refused(copy):
    folder = copy()
    _edit(folder / "model_index.json", scheduler=["diffusers", "FlowMatchEulerDiscreteScheduler"])
    _refused(folder, ValueError, str(folder / "model_index.json"), "FlowMatchEulerDiscreteScheduler")


@pytest.mark.parametrize("entry", [["transformers", "T5TokenizerFast"], ["lab_tokenizer", "CLIPTokenizer"], None])
def test_a_tokenizer_of_another_class_is_refused_not_read_as_clips(copy, tmp_path, entry):
    """The tokenizer was loaded as a CLIPTokenizer from its files whatever class (or module of the
    folder's own, never run) the folder names."""
    folder = copy()
    marker = tmp_path / "ran"
    (folder / "tokenizer" / "lab_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _edit(folder / "model_index.json", tokenizer=entry)
    said = f"{folder}/model_index.json: tokenizer is {entry!r}, want one of transformers' CLIPTokenizer, CLIPTokenizerFast"
    _refused(folder, ValueError, said)
    with pytest.raises(ValueError, match=re.escape(said)):
        load_pipeline(folder)
    assert not marker.exists()
    _edit(folder / "model_index.json", tokenizer=["transformers", "CLIPTokenizerFast"])
    check_pretrained(folder)
    load_pipeline(folder)


@pytest.mark.parametrize("fields,fragments", [
    ({"in_channels": 9}, ("in_channels = 9 (an inpainting UNet)", "4 needed")),
    ({"out_channels": 8}, ("out_channels = 8", "4 needed")),
    ({"addition_embed_type": "text_time", "addition_time_embed_dim": 8}, ("addition_embed_type = 'text_time' (an SDXL UNet)",)),
    ({"class_embed_type": "projection"}, ("class_embed_type = 'projection'",)),
    ({"cross_attention_dim": 64}, ("cross_attention_dim = 64", "hidden_size is 32")),
    ({"cross_attention_dim": [32, 32, 64, 64]}, ("cross_attention_dim = [32, 32, 64, 64]",)),
])
def test_a_unet_of_another_architecture_is_refused(copy, fields, fragments):
    """Each loads through load_pipeline's classes and then fails mid-training with a bare tensor
    error; refused here naming unet/config.json and the field."""
    folder = copy()
    _edit(folder / "unet" / "config.json", **fields)
    _refused(folder, ValueError, str(folder / "unet" / "config.json"), *fragments)


def test_a_text_encoder_of_another_width_is_refused(copy):
    folder = copy()
    _edit(folder / "text_encoder" / "config.json", hidden_size=1024)
    _refused(folder, ValueError, "cross_attention_dim = 32", "hidden_size is 1024", str(folder / "text_encoder" / "config.json"))


# The run: refused by check_start before any stage, in one line, nothing claimed.

def test_a_broken_pretrained_folder_stops_the_run_before_any_stage(copy, tmp_path, capsys):
    inpainting = copy("inpainting")
    _edit(inpainting / "unet" / "config.json", in_channels=9)
    with pytest.raises(ValueError, match=r"^--pretrained .*unet/config.json: in_channels = 9"):
        BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path / "runs", pretrained=inpainting).check_start()
    no_tokenizer = copy("no-tokenizer")
    shutil.rmtree(no_tokenizer / "tokenizer")
    for folder, fragment in ((inpainting, "in_channels = 9"), (no_tokenizer, "no tokenizer/ folder")):
        argv = ["benchmark", "--track", "debug", "--name", "pre", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
                "--cache", str(tmp_path / "cache"), "--quiet", "--pretrained", str(folder)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--pretrained" in err and str(folder) in err and fragment in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "runs" / "pre" / "run.json").exists() and not (tmp_path / "data").exists(), "no stage ran"
    BenchmarkRun(track=load_track("debug"), name="ok", runs_root=tmp_path / "runs", pretrained=copy("fine")).check_start()


@pytest.mark.parametrize("part,module,class_name", [("unet", "unet_2d_condition", "UNet2DConditionModel"),
                                                    ("text_encoder", "modeling_lab_clip", "CLIPTextModel"),
                                                    ("vae", "lab_vae", "AutoencoderKL"),
                                                    ("scheduler", "lab_scheduler", "PNDMScheduler")])
def test_a_part_named_by_a_library_class_from_the_folders_own_module_is_refused_never_run(copy, tmp_path, part, module, class_name):
    """A custom component (diffusers loads ``[module, Class]`` from ``part/module.py`` with
    trust_remote_code) that reuses diffusers' or transformers' class name was loaded as the library's
    class from its weights, without its code, and scored as the lab's model."""
    folder = copy()
    marker = tmp_path / "ran"
    (folder / part / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    _edit(folder / "model_index.json", **{part: [module, class_name]})
    said = (f"{folder}/model_index.json: {part} is {[module, class_name]!r}, a {class_name} of the module {module!r} "
            f"(the code of {folder / part / module}.py), not the ")
    assert _refused(folder, ValueError, said, "plug it in as a method").count("\n") == 0
    with pytest.raises(ValueError, match=re.escape(said)):
        load_pipeline(folder)
    assert not marker.exists()


def test_a_snapshot_copied_without_its_blobs_or_missing_a_blob_is_named_not_called_missing(tiny, tmp_path):
    """``cp -r`` of a Hugging Face snapshot copies its relative links into ``blobs/``, which then lead
    nowhere; a pruned cache leaves one such link. Every loader said the file was missing (or 'no
    model_index.json in it') from a folder that lists it."""
    snapshot = _hub_snapshot(tiny, tmp_path / "hub")
    copied = tmp_path / "sd15"
    shutil.copytree(snapshot, copied, symlinks=True)  # what cp -r does
    pruned = {}
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "tokenizer/tokenizer.json"):
        cache = shutil.copytree(tmp_path / "hub", tmp_path / f"pruned-{name.replace('/', '-')}", symlinks=True)
        folder = next((cache / "models--runwayml--stable-diffusion-v1-5" / "snapshots").iterdir())
        (folder / name).resolve().unlink()
        pruned[name] = folder
    for call in (check_pretrained, load_pipeline):
        with pytest.raises(FileNotFoundError) as e:
            call(copied)
        assert str(e.value).startswith(f"{copied / 'model_index.json'}: a symlink to '../../blobs/") and "cp -rL" in str(e.value), e.value
        for name, folder in pruned.items():
            with pytest.raises(FileNotFoundError) as e:
                call(folder)
            assert str(e.value).startswith(f"{folder / name}: a symlink to '") and "lacks that blob" in str(e.value), e.value
    gone = tmp_path / "gone"
    gone.symlink_to(tmp_path / "nowhere")
    _refused(gone, FileNotFoundError, f"{gone}: a symlink to '{tmp_path / 'nowhere'}', which leads to no file")
    unloaded = Path(shutil.copytree(snapshot, tmp_path / "no-safety-checker-blob", symlinks=False))
    (unloaded / "safety_checker").mkdir()
    (unloaded / "safety_checker" / "model.safetensors").symlink_to("../../blobs/pruned")  # a part never loaded is not looked into
    check_pretrained(unloaded)


def test_a_folder_without_an_index_says_what_it_holds_and_what_to_pass(tiny, tmp_path):
    """A folder holding a single-file checkpoint, a part's folder, and a cache of several snapshots:
    each said only 'no model_index.json in it', or named the snapshot that sorts first, not the one
    ``refs/main`` names (the one the hub loads)."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.copyfile(tiny / "unet" / "diffusion_pytorch_model.safetensors", downloads / "v1-5-pruned-emaonly.safetensors")
    (downloads / "v1-inference.yaml").write_text("model: {}\n")
    _refused(downloads, FileNotFoundError, f"{downloads}: not a diffusers pipeline folder", "it holds v1-5-pruned-emaonly.safetensors, "
             "a single-file checkpoint: convert it first", "from_single_file")
    _refused(tiny / "unet", FileNotFoundError, f"it is the unet/ of the pipeline folder {tiny}: pass that")
    repo = tmp_path / "hub" / "models--runwayml--stable-diffusion-v1-5"
    old, new = (repo / "snapshots" / (c * 40) for c in "0f")
    for snapshot in (old, new):
        shutil.copytree(tiny, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("f" * 40)
    for given in (repo, tmp_path / "hub"):
        message = _refused(given, FileNotFoundError, f"{given}: not a diffusers pipeline folder", f"pass a snapshot, e.g. {new}")
        with pytest.raises(FileNotFoundError, match=re.escape(message)):
            load_pipeline(given)
    (repo / "refs" / "main").unlink()
    _refused(repo, FileNotFoundError, f"pass a snapshot, e.g. {old}")


def test_a_snapshot_holding_variants_beside_the_weights_is_the_same_base_as_the_weights_alone(tiny, copy):
    """``huggingface-cli download`` fetches SD v1.5's ``.fp16`` and ``.non_ema`` files beside the
    weights ``from_pretrained`` fetches alone; load_pipeline reads only the latter. Every file was in
    the base's weights sha256, so two labs' runs on one SD v1.5 were 'not comparable' on the
    leaderboard (and the detector's base generations were made again)."""
    from benchmark.models.pipeline_identity import weights_sha256

    full = copy("full-snapshot")
    for part, stem in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        tensors = load_file(full / part / f"{stem}.safetensors")
        save_file({k: v.half() for k, v in tensors.items()}, full / part / f"{stem}.fp16.safetensors", metadata={"format": "pt"})
        save_file({k: v + 1 for k, v in tensors.items()}, full / part / f"{stem}.non_ema.safetensors", metadata={"format": "pt"})
    assert weights_sha256(full) == weights_sha256(tiny)
    fp16 = copy("fp16-only")
    _fp16_only(fp16)
    other = copy("other-unet")
    unet = other / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 1 for k, v in load_file(unet).items()}, unet, metadata={"format": "pt"})
    assert len({weights_sha256(tiny), weights_sha256(fp16), weights_sha256(other)}) == 3, "the weights read still name the base"


def test_a_base_sampling_off_the_track_names_the_file_its_scheduler_class_is_read_from(copy):
    """The scheduler class is read from ``model_index.json`` (by diffusers and ``load_pipeline``): a
    folder whose index names Euler while its ``scheduler_config.json`` says PNDM was refused naming
    the config file, which names the track's own class. The file named holds what is wrong: the index
    there, the config for a class both files name, or for settings."""
    from benchmark.models.pretrained_check import check_base_sampler

    track = load_track("paper").sampler()
    check_base_sampler(copy("same"), track)
    index_only = copy("index-only")
    _edit(index_only / "model_index.json", scheduler=["diffusers", "EulerDiscreteScheduler"])
    both = copy("both")
    _edit(both / "model_index.json", scheduler=["diffusers", "DDIMScheduler"])
    _edit(both / "scheduler" / "scheduler_config.json", _class_name="DDIMScheduler")
    settings = copy("settings")
    _edit(settings / "scheduler" / "scheduler_config.json", steps_offset=0)
    for folder, file, said in ((index_only, "model_index.json", "EulerDiscreteScheduler, not the track's PNDMScheduler (its scheduler "
                                "class; scheduler_config.json names 'PNDMScheduler')"),
                               (both, "scheduler/scheduler_config.json", "DDIMScheduler, not the track's PNDMScheduler; "),
                               (settings, "scheduler/scheduler_config.json", "steps_offset = 0, not 1")):
        with pytest.raises(ValueError) as e:
            check_base_sampler(folder, track)
        assert str(e.value).startswith(f"{folder / file}: {said}") and "\n" not in str(e.value), str(e.value)


def test_a_run_resumed_on_other_weights_at_the_same_pretrained_path_is_refused_before_any_stage(copy, tmp_path):
    """run.json records --pretrained's path, and the weights there change (a link moved to a newer
    snapshot, a re-download): the rows of methods not rerun were kept beside the new ones, all under
    the new base's record in results.json."""
    from benchmark.models.pipeline_identity import weights_sha256
    from benchmark.protocol import _base_record

    from .real_runs import real_run
    from .test_results_page import fake_run

    base = copy("models-sd")
    run = real_run(tmp_path / "runs" / "r", pretrained=base, data_root=tmp_path / "data")
    fake_run(run.root)
    results = json.loads((run.root / "results.json").read_text())
    (run.root / "results.json").write_text(json.dumps({**results, "base": _base_record(run, base)}))
    (run.root / "run.json").write_text(json.dumps(run.record()))
    run.check_start()  # the same weights: a resume, or another --method added
    unet = base / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights_sha256(base)
    save_file({k: v + 1 for k, v in load_file(unet).items()}, unet, metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        real_run(tmp_path / "runs" / "r", pretrained=base, data_root=tmp_path / "data").check_start()
    assert str(e.value) == (f"--pretrained {base}: its weights (sha256 {weights_sha256(base)[:12]}) are not the base {run.root / 'results.json'}'s "
                            f"rows were made from ({before[:12]}); use another --name or remove the folder")


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.safetensors", "shard-00001-model-00001-of-00001.safetensors"],
                         ids=["single", "distributed-shard"])
def test_a_fifo_where_a_weights_file_belongs_is_named_not_waited_on(copy, name):
    """safetensors' open of a FIFO waits for a writer while holding the GIL: the whole run hung."""
    from tests.test_detector_files import fifo_released

    folder = copy()
    if name == "diffusion_pytorch_model.safetensors":
        (folder / "unet" / name).unlink()
    os.mkfifo(folder / "unet" / name)  # a shard is read beside the single file, as from_pretrained would
    with fifo_released(folder / "unet" / name):
        _refused(folder, ValueError, f"{folder / 'unet' / name}: a FIFO (named pipe), where a safetensors file was expected")


# A config of a few bytes naming sizes the libraries act on before any weight is read.

#: One child imports the libraries once, then forks one process per folder, each given 2 GB of address
#: space past those imports: a child per folder spent most of its time importing them again.
_SIZED_BY_CHILD = """
import json, os, re, resource, sys
from benchmark.models.pipelines import load_pipeline
from benchmark.models.pretrained_check import check_pretrained
from benchmark.track import load_track
for folder in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024 + (2 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
        for name, call in (("check", check_pretrained), ("load", load_pipeline), ("track", lambda f: load_pipeline(f, sampler=load_track("debug").sampler()))):
            try:
                call(folder)
                said = "accepted"
            except (ValueError, FileNotFoundError) as e:
                said = str(e)
            print(json.dumps([folder, name, said]), flush=True)
        os._exit(0)
    print(json.dumps([folder, "exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])]), flush=True)
"""

SIZED = [
    ("unet/config.json", {"block_out_channels": [10**6] * 4}, "the UNet2DConditionModel it describes is larger than its weights files hold"),
    ("unet/config.json", {"layers_per_block": 10**8}, "the UNet2DConditionModel it describes is larger than its weights files hold"),
    ("unet/config.json", {"block_out_channels": "wide"}, "cannot build a UNet2DConditionModel from it ("),
    ("vae/config.json", {"block_out_channels": [10**5] * 4}, "the AutoencoderKL it describes is larger than its weights files hold"),
    ("text_encoder/config.json", {"max_position_embeddings": 10**10}, "the CLIPTextModel it describes is larger than its weights files hold"),
    ("text_encoder/config.json", {"num_hidden_layers": 10**7}, "the CLIPTextModel it describes is larger than its weights files hold"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 10**10}, "num_train_timesteps = 10000000000; expected an integer in [1, 100000]"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": True}, "num_train_timesteps = True; expected an integer"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": 10**12}, "model_max_length = 1000000000000; the pipeline pads every prompt to it"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": None}, "model_max_length = None; the pipeline pads every prompt to it"),
]


@pytest.fixture(scope="module")
def sized_by_child(tiny, tmp_path_factory):
    """Each case of ``SIZED`` in its own copy of the tiny folder, and what the child's process for it
    said: ``{folder: {"check": ..., "load": ..., "track": ..., "exit": code}}`` (read-only)."""
    root = tmp_path_factory.mktemp("sized")
    folders = []
    for i, (part, fields, _) in enumerate(SIZED):
        folder = Path(shutil.copytree(tiny, root / f"case{i}"))
        data = json.loads((folder / part).read_text())
        data.update(fields)
        (folder / part).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
        folders.append(folder)
    done = subprocess.run([sys.executable, "-c", _SIZED_BY_CHILD, *map(str, folders)], capture_output=True, text=True,
                          timeout=300 * len(folders),
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OPENBLAS_NUM_THREADS": "1"})
    said = {folder: {} for folder in folders}
    for line in done.stdout.splitlines():
        folder, name, value = json.loads(line)
        said[Path(folder)][name] = value
    return done, said


@pytest.mark.parametrize("case", range(len(SIZED)), ids=[f"{part}-{i}" for i, (part, _, _) in enumerate(SIZED)])
def test_a_config_naming_sizes_its_weights_do_not_hold_is_refused_before_anything_is_built(sized_by_child, case):
    """Before: diffusers allocated the UNet from its config (16 TB asked for), a scheduler a 40 GB
    table, the tokenizers library aborted the process padding a prompt to 10**12 tokens, a depth of
    10**8 layers was built one module at a time; check_pretrained passed each. Now check_pretrained
    and load_pipeline (the folder's scheduler or a track's) refuse each in one line naming the file,
    in a process given 2 GB of address space past its imports, so a bomb fails this test."""
    part, _, fragment = SIZED[case]
    done, everything = sized_by_child
    folder, said = list(everything.items())[case]
    exit_code, said = said.get("exit"), {k: v for k, v in said.items() if k != "exit"}
    assert done.returncode == 0 and exit_code == 0 and set(said) == {"check", "load", "track"}, (done.returncode, exit_code, done.stderr[-3000:])
    for name, message in said.items():
        assert message.startswith(f"{folder / part}: ") and fragment in message and "\n" not in message, (name, message)
