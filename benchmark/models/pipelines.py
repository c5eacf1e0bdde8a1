"""Stable-Diffusion-shaped pipelines: a tiny one built from configs, or any local diffusers directory.

Both paths end in the same ``StableDiffusionPipeline`` class, so fine-tuning, Geom-Erasing and the
benchmark never care which one they hold. The tiny pipeline has SD's parts at toy sizes: CLIP's real
tokenizer (from open_clip's bundled vocabulary), a small ``CLIPTextModel``, a small
``UNet2DConditionModel``, and in the VAE's place a lossless :class:`PatchAutoencoder` that folds
4 x 4 pixel patches into channels, so 64 px images diffuse on a 16 x 16 grid (see its module for the
measurements behind that choice). Because those "latents" are pixels, the tiny pipeline predicts
the clean sample (x0) and clips it to [-1, 1] when sampling. Measured on procedural scenes: with
noise prediction, a tiny model's small errors at high noise blew up its x0 estimate and sampling
diverged; with v-prediction it sampled stably but left per-pixel noise (48 channels per cell must
carry the exact noise); x0-prediction gave clean images from the first few hundred steps.
Nothing is ever fetched from a hub and no safety checker is loaded.
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from benchmark.models import patch_autoencoder
from benchmark.models.clip_tokenizer import CLIP_MAX_LENGTH, build_clip_tokenizer, write_vocab_files
from benchmark.models.config_sizes import check_part_size, check_schedule_size
from benchmark.models.part_bars import part_bars_dropped
from benchmark.models.patch_autoencoder import PatchAutoencoder
from builders.recipe import MAX_IMAGE_SIZE
from implicit_concept.bounded_reads import file_kind
from implicit_concept.disk_space import require_space, writing
from implicit_concept.json_records import read_json_object
from implicit_concept.random_states import kept_rngs
from implicit_concept.tensor_checks import SAFETENSORS_FLOATS, all_finite

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: The schedulers a loaded pipeline may name (SD v1.5 ships PNDM; the tiny pipeline uses DDIM).
SCHEDULERS = (DDIMScheduler, PNDMScheduler, DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
              LMSDiscreteScheduler, DPMSolverMultistepScheduler)
#: The tiny pipeline's VAE as a diffusers custom component, and the negative prompt beside a saved pipeline.
CUSTOM_VAE_FILE = "patch_autoencoder.py"
NEGATIVE_PROMPT_FILE = "negative_prompt.txt"
#: Weight files that are pickles: never loaded from a pipeline folder.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")
#: Bounds on a tiny pipeline's sizes, so a config no machine can hold is refused naming its field
#: rather than failing in its first allocation: a recipe's largest image side (``MAX_IMAGE_SIZE``),
#: layers, widths and timesteps well past SD v1.5's (12 text layers, 2 per UNet block, 1280
#: channels, 1000 timesteps; a width of 10**12 overflowed torch's size arithmetic even unallocated),
#: and at most twice SD v1.5's 1.07 billion parameters (:func:`parameter_count`; 32 GB to train in
#: float32 with Adam).
MAX_LAYERS = 64
MAX_WIDTH = 65536
MAX_TIMESTEPS = 100_000
MAX_PARAMETERS = 2_000_000_000
#: CLIP's vocabulary, which the text encoder's token embedding has one row for each of.
CLIP_VOCAB_SIZE = 49408


@dataclass(frozen=True)
class TinyPipelineConfig:
    """Sizes of the embedded pipeline's parts; ``unet_attention`` says which UNet levels cross-attend.

    The noise schedule is improved-DDPM's cosine one, made for 64 px pixel images (``beta_start`` and
    ``beta_end`` only apply to the "linear" and "scaled_linear" schedules).
    """

    image_size: int = 64
    patch_size: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_layers_per_block: int = 1
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    prediction_type: str = "sample"
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        for name in ("unet_channels", "unet_attention"):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise ValueError(f"{name} must be a list, one entry per UNet level, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("image_size", "patch_size", "unet_layers_per_block", "attention_head_dim",
                     "text_hidden", "text_layers", "text_heads", "num_train_timesteps"):
            _positive_int(name, getattr(self, name))
        for name, most in (("image_size", MAX_IMAGE_SIZE), ("patch_size", MAX_IMAGE_SIZE), ("unet_layers_per_block", MAX_LAYERS),
                           ("text_layers", MAX_LAYERS), ("text_hidden", MAX_WIDTH), ("attention_head_dim", MAX_WIDTH),
                           ("num_train_timesteps", MAX_TIMESTEPS)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most}, got {getattr(self, name)}")
        if self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two, got {self.patch_size}")
        channels = self.unet_channels
        if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c <= MAX_WIDTH and c % 16 == 0 for c in channels):
            raise ValueError(f"unet_channels must be a non-empty list of multiples of 16 up to {MAX_WIDTH}, got {channels!r}")
        if len(self.unet_attention) != len(self.unet_channels) or not all(isinstance(a, bool) for a in self.unet_attention):
            raise ValueError(f"unet_attention must hold one bool per unet_channels entry, got {self.unet_attention!r}")
        if not any(self.unet_attention):
            raise ValueError("unet_attention: at least one level must cross-attend to the text")
        if self.image_size % self.vae_scale_factor or (self.image_size // self.vae_scale_factor) % 2 ** (len(self.unet_channels) - 1):
            raise ValueError(f"image_size {self.image_size} must divide by the VAE's and the UNet's down-sampling")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden ({self.text_hidden}) must be a multiple of text_heads ({self.text_heads})")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if self.beta_start >= self.beta_end:
            raise ValueError(f"beta_start ({self.beta_start}) must be below beta_end ({self.beta_end})")

    @property
    def vae_scale_factor(self) -> int:
        return self.patch_size

    @property
    def latent_channels(self) -> int:
        return 3 * self.patch_size**2

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parameter_count(config: TinyPipelineConfig) -> int:
    """The UNet's and text encoder's parameters, counted on torch's meta device: nothing allocated."""
    with torch.device("meta"):
        parts = (build_unet(config, config.text_hidden), build_text_encoder(config, CLIP_VOCAB_SIZE))
    return sum(p.numel() for part in parts for p in part.parameters())


def check_size(config: TinyPipelineConfig) -> None:
    """Refuse a pipeline of more than :data:`MAX_PARAMETERS`, before any stage allocates it."""
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise ValueError(f"unet_channels, text_hidden and text_layers make {count:,} parameters, over the {MAX_PARAMETERS:,} "
                         "a tiny pipeline may have (SD v1.5 has 1.07 billion); use a --pretrained folder for a large model")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def build_unet(config: TinyPipelineConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet_attention))
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=config.unet_layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=16,
    )


def build_text_encoder(config: TinyPipelineConfig, vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=config.text_hidden,
            intermediate_size=4 * config.text_hidden,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=CLIP_MAX_LENGTH,
        )
    )


def build_scheduler(config: TinyPipelineConfig) -> DDIMScheduler:
    """DDIM over the configured noise schedule, its x0 estimate clipped to [-1, 1] since the latents are
    pixels. ``StableDiffusionPipeline`` resets ``clip_sample``, so the clip is written as thresholding
    with ``sample_max_value`` 1 (which clips at exactly 1)."""
    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        clip_sample=False,
        thresholding=True,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(config: TinyPipelineConfig, tokenizer_cache: str | Path, seed: int = 0) -> StableDiffusionPipeline:
    """A freshly initialised tiny pipeline; the same seed gives the same weights, drawn from torch's
    global generator seeded for them and put back after (the caller's next draw is as it was)."""
    tokenizer = build_clip_tokenizer(tokenizer_cache)
    with kept_rngs():
        torch.manual_seed(seed)
        text_encoder = build_text_encoder(config, len(tokenizer))
        vae = PatchAutoencoder(patch_size=config.patch_size)
        unet = build_unet(config, config.text_hidden)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


#: Config keys that say where a part was loaded from, not what it is: diffusers writes the folder it
#: loaded a model from into the config it saves (``_name_or_path``), transformers the same for a
#: tokenizer (``name_or_path``). The same weights in two caches differ only there.
PATH_KEYS = ("_name_or_path", "name_or_path")
#: The files of a pipeline folder that are configs (which may hold a ``PATH_KEYS`` key).
CONFIG_NAMES = ("config.json", "model_index.json")
def portable_config(path: Path) -> bytes | None:
    """A config file's bytes without its ``PATH_KEYS`` (as diffusers writes a config: sorted keys,
    2-space indent, a final newline); None when it holds none (or is no JSON object), so its own
    bytes stand."""
    try:
        config = read_json_object(Path(path))
    except (OSError, ValueError):
        return None
    if not any(k in config for k in PATH_KEYS):
        return None
    kept = {k: v for k, v in config.items() if k not in PATH_KEYS}
    return (json.dumps(kept, indent=2, sort_keys=True) + "\n").encode("utf-8")


def strip_load_paths(pipeline: Path) -> None:
    """Drop from ``pipeline``'s saved configs the folder each part was loaded from (diffusers writes
    ``_name_or_path``, e.g. ``CACHE/bases/base-*/init/unet``): the same weights then make the same
    files in every cache, wherever it lies. A config without such a key is left as it is."""
    for config in sorted(Path(pipeline).rglob("*.json")):
        if config.name.endswith(CONFIG_NAMES):
            portable = portable_config(config)
            if portable is not None:
                config.write_bytes(portable)


#: The VAE classes a pipeline folder may name (the tiny pipeline's, SD's, and the tiny decoder).
VAE_CLASSES = (PatchAutoencoder, AutoencoderKL, AutoencoderTiny)
#: The class each weighted part is loaded as: a folder whose ``model_index.json`` names another (a
#: lab's UNet subclass with attention of its own) is refused, as loading it as one of these drops what it does.
PART_CLASSES = {"vae": VAE_CLASSES, "text_encoder": (CLIPTextModel,), "unet": (UNet2DConditionModel,)}
#: The tokenizer classes a folder may name (transformers 4 saved either; 5 keeps one class under both
#: names): it is loaded as a ``CLIPTokenizer`` from its files either way.
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")


def save_portable_pipeline(pipe: StableDiffusionPipeline, directory: str | Path, negative_prompt: str = "") -> Path:
    """``save_pretrained``, plus what plain diffusers and transformers need to open the folder without
    this package: the slow tokenizer's ``vocab.json`` and ``merges.txt`` beside ``tokenizer.json``,
    and for the tiny pipeline its :class:`PatchAutoencoder` as a custom component (``vae/patch_autoencoder.py``,
    loaded by ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)``, which runs that file:
    do so only for a folder you made or trust; :func:`load_pipeline` never runs it). The negative prompt
    a method samples with goes to ``negative_prompt.txt``."""
    directory = Path(directory)
    require_space(directory, weights_bytes(pipe), "the pipeline's weights")
    with writing(directory), part_bars_dropped():  # writing: safetensors' own error type, for a full disk too, said as the OSError it is
        pipe.save_pretrained(str(directory))
        strip_load_paths(directory)
        if (directory / "tokenizer").is_dir():
            write_vocab_files(directory / "tokenizer")
        if isinstance(getattr(pipe, "vae", None), PatchAutoencoder):
            (directory / "vae" / CUSTOM_VAE_FILE).write_bytes(Path(patch_autoencoder.__file__).read_bytes())
            index = read_json_object(directory / "model_index.json")
            index["vae"] = [Path(CUSTOM_VAE_FILE).stem, PatchAutoencoder.__name__]
            (directory / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (directory / NEGATIVE_PROMPT_FILE).write_text(negative_prompt + "\n", encoding="utf-8")
    return directory


def weights_bytes(pipe: Any) -> int:
    """The bytes of a pipeline's parameters (every torch part's): at most what saving it writes (not
    counting buffers, headers, configs), so a disk with less free is refused before a byte is written,
    never one that would have held it (SD v1.5 in float32 is 4.3 GB). 0 for an object that holds no
    torch parts (a plug-in's wrapper)."""
    parts = getattr(pipe, "components", None)
    modules = [m for m in parts.values() if isinstance(m, torch.nn.Module)] if isinstance(parts, dict) else []
    return sum(t.numel() * t.element_size() for m in modules for t in m.parameters())


def load_pipeline(path: str | Path, torch_dtype: torch.dtype | None = None, sampler: Any = None) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` from a local diffusers directory (the tiny one or SD v1.5).

    Each part is loaded by a class named here, as diffusers' training scripts do, never by a class
    the folder names: nothing is downloaded and no code in the folder runs (the tiny pipeline's
    custom VAE is this package's :class:`PatchAutoencoder`). Safety checker and feature extractor
    are not loaded. A folder saved as another pipeline class (``_class_name``: SLD's
    ``StableDiffusionPipelineSafe``, SDXL, a custom pipeline) is refused: loaded as a plain
    ``StableDiffusionPipeline`` it would silently lose what that class does.

    ``sampler`` (a scheduler, e.g. a track's :meth:`~benchmark.track.Track.sampler`): sample with its
    class and settings, given the folder's noise schedule and prediction type (:func:`track_sampler`),
    whatever scheduler the folder names; None: the folder's own, which must be one of ``SCHEDULERS``.
    Either is refused, naming it, when it cannot step the model's prediction type (PNDM on x0).

    Parts that do not fit each other (a UNet of another latent channel count or cross-attention
    width than the VAE and text encoder) are refused from their configs before any weight is read
    (:func:`~benchmark.models.pretrained_check.check_parts_fit`).

    The weights are read from safetensors only (a shard index must name safetensors files beside
    it), and a part is refused, naming the file and the tensor, when its weights lack a tensor the
    model needs, hold an integer tensor where the model holds floats, or hold NaN or infinite
    values (after the cast to ``torch_dtype``): such a pipeline draws blank images, which would
    score as a perfect erasure. See :func:`check_loaded_weights` for what the checks cost. A folder
    holding weights that would need applying (a LoRA beside the parts) is refused
    (:mod:`~benchmark.models.adapter_weights`): loaded, it would be the model without them.
    """
    path = Path(path)
    require_pipeline_folder(path)
    check_json_files(path)
    index = read_json_object(path / "model_index.json")
    check_pipeline_class(path, index)
    from benchmark.models.adapter_weights import check_no_adapter_weights  # they read this module's names
    from benchmark.models.pretrained_check import check_parts_fit

    for name in ("vae", "text_encoder", "unet"):
        if not (path / name).is_dir():
            raise FileNotFoundError(f"{path}: no {name}/ folder")
    classes = {name: _component_class(index, name, allowed, path) for name, allowed in PART_CLASSES.items()}
    check_tokenizer_class(index, path)
    check_parts_fit(path, classes["vae"])
    for name in classes:
        check_weights_config(path / name)  # before the adapters: a config naming adapter_model.bin says more than its name
    check_no_adapter_weights(path)

    def part(name: str, cls: Any, **kwargs: Any) -> Any:
        if not (path / name).is_dir():
            raise FileNotFoundError(f"{path}: no {name}/ folder")
        try:
            with part_bars_dropped():
                return cls.from_pretrained(str(path / name), local_files_only=True, **kwargs)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError, SafetensorError) as e:
            raise ValueError(f"{path / name}: cannot load the {name} ({_one_line(e)})") from None

    def weighted(name: str, cls: Any, stem: str) -> Any:
        folder = path / name
        variant = _weights_variant(folder, stem)
        files = weight_files(folder, stem, variant)
        headers = read_weight_headers(files)
        check_part_size(folder, cls, files)
        module, info = part(name, cls, use_safetensors=True, variant=variant, torch_dtype=torch_dtype or torch.float32,
                            output_loading_info=True)
        check_loaded_weights(module, info, headers, _described(folder, stem, variant))
        return module

    if sampler is None:
        _scheduler_config(path)  # its size checked before the class builds its tables
        scheduler = part("scheduler", _component_class(index, "scheduler", SCHEDULERS, path))
        _refuse_unfit_sampler(scheduler, f"{path / 'scheduler'}: {type(scheduler).__name__}",
                              "re-save the pipeline with one that can (pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config))")
    else:
        scheduler = track_sampler(sampler, _scheduler_config(path), str(path))
    return StableDiffusionPipeline(
        vae=weighted("vae", classes["vae"], DIFFUSERS_WEIGHTS),
        text_encoder=weighted("text_encoder", classes["text_encoder"], TRANSFORMERS_WEIGHTS),
        tokenizer=part("tokenizer", CLIPTokenizer),
        unet=weighted("unet", classes["unet"], DIFFUSERS_WEIGHTS),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def require_pipeline_folder(path: Path) -> None:
    """Refuse what is not a diffusers pipeline folder, saying what it is instead: a single-file
    checkpoint (how to convert it), a Hugging Face cache holding one (the snapshot to pass), or a
    folder with a symlink that leads nowhere among the files a pipeline is loaded from
    (:func:`dangling_link`)."""
    link = dangling_link(path)
    if link is not None:
        target = os.readlink(link)
        hub = ""
        if "blobs" in Path(target).parts:
            hub = ("; the Hugging Face cache lacks that blob (a download cut short or pruned): download the snapshot again"
                   if (link.parent / target).parent.is_dir() else "; a Hugging Face snapshot copied without the cache's "
                   "blobs/ its links point into: copy it following the links (cp -rL), or pass the snapshot inside the cache")
        raise FileNotFoundError(f"{link}: a symlink to {target!r}, which leads to no file (its target missing, or a loop){hub}")
    if path.is_file():
        raise ValueError(
            f"{path}: a file, not a diffusers pipeline folder; convert a single-file checkpoint first "
            "(diffusers: StableDiffusionPipeline.from_single_file(FILE).save_pretrained(FOLDER, safe_serialization=True))"
        )
    if not (path / "model_index.json").exists():  # a FIFO or device there is named by its reader
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (no model_index.json in it){_what_it_is(path)}")


def check_json_files(path: Path) -> None:
    """Refuse, naming the file, a pipeline folder whose JSON files (its index, the parts' configs, the
    tokenizer's) the one rule for JSON records refuses (:func:`read_json_object`): diffusers and
    transformers would read a key given twice as its last value and NaN as a number, hang on a FIFO,
    or fail deep inside on a list where an object goes."""
    for file in sorted([*path.glob("*.json"), *path.glob("*/*.json")]):
        if not file.is_dir():
            read_json_object(file)


#: A single-file checkpoint's suffixes (``.ckpt`` a pickle, read only by a conversion the user runs).
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def _what_it_is(path: Path) -> str:
    """A hint for a folder without ``model_index.json``: the pipeline folder above a part's folder, the
    snapshot of a Hugging Face cache to pass (the one ``refs/main`` names), or the single-file
    checkpoint it holds and how to convert it; "" when it is none of these."""
    if (path / "config.json").is_file() and (path.parent / "model_index.json").is_file():
        return f"; it is the {path.name}/ of the pipeline folder {path.parent}: pass that"
    for repo in [path, *sorted(path.glob("models--*"))]:
        snapshots = sorted(repo.glob("snapshots/*/model_index.json"))
        if snapshots:
            main = repo / "snapshots" / _hub_ref(repo / "refs" / "main")
            chosen = main if (main / "model_index.json").is_file() else snapshots[0].parent
            return f"; a Hugging Face cache: pass a snapshot, e.g. {chosen}"
    single = sorted(p.name for p in path.glob("*") if p.suffix in SINGLE_FILE_SUFFIXES and p.is_file()) if path.is_dir() else []
    if single:
        return (f"; it holds {', '.join(single)}, a single-file checkpoint: convert it first (diffusers: "
                "StableDiffusionPipeline.from_single_file(FILE).save_pretrained(FOLDER, safe_serialization=True))")
    return ""


def _hub_ref(path: Path) -> str:
    """The commit a Hugging Face cache's ref file names, or "" when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").strip()[:200]
    except (OSError, UnicodeDecodeError):
        return ""


#: The folders of a pipeline :func:`load_pipeline` reads files from.
LOADED_PARTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


def dangling_link(path: Path) -> Path | None:
    """The first symlink that leads to no file (its target missing, or a loop) among ``path`` itself,
    the files directly in it and those of the parts :func:`load_pipeline` reads (``LOADED_PARTS``);
    None if there is none. A Hugging Face snapshot's files are relative links into the cache's
    ``blobs/``, so a copy made without following them (``cp -r``) holds only such links: every loader
    then says the file is missing from a folder that lists it. A part that is not loaded (a safety
    checker whose blob was deleted to save space) is not looked into."""
    entries = [path, *(sorted(path.iterdir()) if path.is_dir() else [])]
    for part in LOADED_PARTS:
        if (path / part).is_dir():
            entries.extend(sorted((path / part).rglob("*")))
    return next((p for p in entries if p.is_symlink() and not p.exists()), None)


#: The pipeline class :func:`load_pipeline` builds, and the only one a folder may be saved as.
PIPELINE_CLASS = "StableDiffusionPipeline"


def check_pipeline_class(path: Path, index: dict[str, Any]) -> None:
    """Refuse a folder saved as another pipeline class than the one loaded from it (a missing
    ``_class_name`` is an SD folder): what that class does (SLD's guidance, SDXL's second text
    encoder, a lab's own sampler) would be dropped without a word."""
    class_name = index.get("_class_name", PIPELINE_CLASS)
    if class_name == PIPELINE_CLASS:
        return
    shown = ".".join(map(str, class_name)) if isinstance(class_name, list) else str(class_name)
    raise ValueError(f"{path / 'model_index.json'}: _class_name is {shown!r}; it would be loaded and sampled as a plain "
                     f"{PIPELINE_CLASS}, dropping what {shown} does: plug it in as a method instead (--method module:Class, "
                     "whose build() loads it with diffusers and returns it in a Generator)")


#: A scheduler config's fields that belong to the model, not to the sampler: the noise schedule it
#: was trained on and what its network predicts. Every other field (timestep spacing, offsets,
#: clipping, thresholding, solver order) is the sampler's, which a track fixes.
MODEL_SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                         "prediction_type", "rescale_betas_zero_snr")


def track_sampler(sampler: Any, model_config: dict[str, Any], where: str) -> Any:
    """``sampler``'s class and settings over a model's ``MODEL_SCHEDULE_FIELDS`` (those its config
    holds and the class takes), built with ``from_config`` as the benchmark's own fine-tunes keep
    their base's scheduler; refused, naming ``where`` (the model's folder), when that class cannot
    step the model's prediction type."""
    accepted = inspect.signature(type(sampler).__init__).parameters
    model = {k: model_config[k] for k in MODEL_SCHEDULE_FIELDS if k in model_config and k in accepted}
    settings = {k: v for k, v in dict(sampler.config).items() if not k.startswith("_")}
    scheduler = type(sampler).from_config({**settings, **model})
    _refuse_unfit_sampler(scheduler, f"{where}: the track samples with {type(sampler).__name__}, which",
                          "score it under a track whose sampler can, or plug it in as a method (--method module:Class) "
                          "that samples with a scheduler of its own")
    return scheduler


def same_sampler(a: Any, b: Any) -> bool:
    """Whether two schedulers sample alike: one class, and the same value of every setting it takes
    (a loaded config also keeps fields of other classes, which it ignores)."""
    if type(a) is not type(b):
        return False
    taken = inspect.signature(type(a).__init__).parameters
    return all(a.config.get(k) == b.config.get(k) for k in taken if k != "self")


def _scheduler_config(path: Path) -> dict[str, Any]:
    """The folder's scheduler config as saved, whatever scheduler class it names, its schedule's
    length checked (:func:`~benchmark.models.config_sizes.check_schedule_size`)."""
    config = path / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: missing (the model's noise schedule and prediction type are read from it)")
    settings = read_json_object(config)
    check_schedule_size(settings, config)
    check_noise_schedule(settings, config)
    return settings


#: The fields of a scheduler config that make its noise schedule, alike in every scheduler class.
NOISE_SCHEDULE_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")


def check_noise_schedule(settings: dict[str, Any], config: Path) -> None:
    """Refuse a scheduler config (read from ``config``) whose noise schedule is none: a
    ``beta_schedule`` not every scheduler of ``SCHEDULERS`` builds, values no schedule is built from
    (a negative ``beta_start``, a string), ``trained_betas`` not one per training step, or a beta
    outside [0, 1] or none above 0. Each failed inside diffusers or torch without naming the file, or
    sampled: a beta past 1 makes the noise level NaN, and the images drawn were noise, scored as an
    erasure."""
    fields = {k: settings[k] for k in NOISE_SCHEDULE_FIELDS if k in settings}
    schedule = fields.get("beta_schedule", "linear")
    if fields.get("trained_betas") is None and schedule not in BETA_SCHEDULES:
        raise ValueError(f"{config}: beta_schedule = {schedule!r}; expected one of {', '.join(BETA_SCHEDULES)} (or trained_betas)")
    try:
        betas = DDPMScheduler(**fields).betas
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{config}: no noise schedule can be built from its beta fields ({_one_line(e)})") from None
    steps = fields.get("num_train_timesteps", 1000)
    if betas.ndim != 1 or len(betas) != steps:
        raise ValueError(f"{config}: trained_betas holds {betas.numel()} values; expected one per training step "
                         f"(num_train_timesteps = {steps})")
    outside = (~torch.isfinite(betas) | (betas < 0) | (betas > 1)).nonzero()
    if len(outside):
        step = int(outside[0])
        raise ValueError(f"{config}: the noise schedule's beta at training step {step} is {float(betas[step]):.6g} "
                         f"(beta_schedule {schedule!r}, beta_start {fields.get('beta_start')!r}, beta_end {fields.get('beta_end')!r}"
                         f"{', trained_betas' if fields.get('trained_betas') is not None else ''}); a beta is a share of the "
                         "variance, in [0, 1]: outside it the noise levels are NaN or negative, and the images drawn are noise")
    if not bool((betas > 0).any()):
        raise ValueError(f"{config}: every beta of the noise schedule is 0: it adds no noise, so sampling asks "
                         "the model to denoise nothing")


def sampler_problem(scheduler: Any) -> str | None:
    """Why ``scheduler`` cannot sample (one trial step on a copy: PNDM refuses a model that predicts
    x0 only once sampling starts), or None."""
    trial = type(scheduler).from_config(scheduler.config)
    try:
        trial.set_timesteps(10)  # PNDM's Runge-Kutta warm-up needs several
        sample = torch.zeros(1, 1, 2, 2)
        t = trial.timesteps[0]
        trial.step(trial.scale_model_input(sample, t), t, sample)
    except (ValueError, NotImplementedError) as e:
        return _one_line(e)
    return None


def _refuse_unfit_sampler(scheduler: Any, what: str, fix: str) -> None:
    problem = sampler_problem(scheduler)
    if problem is not None:
        kind = scheduler.config.get("prediction_type")
        raise ValueError(f"{what} cannot sample a model whose prediction_type is {kind!r} ({problem}); {fix}")


def _one_line(error: BaseException) -> str:
    """An error from diffusers, transformers or torch in one line, without torch's advice to unpickle."""
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error):
        return f"{type(error).__name__}: a pickle, which is never loaded"
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


#: A sharded safetensors index, in transformers' and diffusers' names for it (a variant before or after "index").
SAFETENSORS_INDEX = re.compile(r"\.safetensors\.(?:\w+\.)?index(?:\.\w+)?\.json$")


def check_safetensors_index(index: Path) -> dict[str, Path]:
    """The shard each tensor of a sharded safetensors index is in. Every ``weight_map`` value must be
    a plain ``*.safetensors`` file name in the index's folder that exists: diffusers and transformers
    hand any other shard to ``torch.load``, which unpickles it. Anything else raises ``ValueError``
    naming the index and the entry."""
    try:
        data = read_json_object(index)
    except ValueError as e:
        raise ValueError(f"{e}; not a JSON shard index") from None
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index}: holds no weight_map object naming the shards")
    shards = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            problem = "is not the name of a file in this folder"
        elif not name.endswith(".safetensors"):
            pickled = Path(name).suffix in PICKLED_SUFFIXES
            problem = "is not a .safetensors file" + (f" ({Path(name).suffix} is a pickle, which is never loaded)" if pickled else "")
        elif not (index.parent / name).is_file():
            problem = "does not exist"
        else:
            shards[key] = index.parent / name
            continue
        raise ValueError(f"{index}: weight_map entry {key!r}: {name!r} {problem}")
    return shards


#: The shards of a torch distributed checkpoint, which transformers loads from a folder holding one.
DISTRIBUTED_SHARD = re.compile(r"^shard-[0-9]{5}-model-[0-9]{5}-of-[0-9]{5}\.safetensors$")
#: A ``config.json`` field naming the weights file transformers reads instead, whatever ``use_safetensors`` says
#: (it accepts ``adapter_model.bin``, a pickle); ``save_pretrained`` never writes it.
EXPLICIT_WEIGHTS_FIELD = "transformers_weights"


def check_weights_config(folder: Path) -> None:
    """Refuse a part whose ``config.json`` names the weights file to read (``transformers_weights``):
    transformers then reads that file, a pickle if it is ``adapter_model.bin``, in place of ``model.safetensors``."""
    config = folder / "config.json"
    value = read_json_object(config).get(EXPLICIT_WEIGHTS_FIELD) if config.is_file() else None
    if value is not None:
        raise ValueError(f"{config}: names {EXPLICIT_WEIGHTS_FIELD} {value!r}, a weights file to read in place of the "
                         "safetensors ones (a .bin there is a pickle, which is never loaded); remove the field")


def weight_files(folder: Path, stem: str, variant: str | None) -> list[Path]:
    """The safetensors files ``from_pretrained`` may read for a part: the shards of every safetensors
    index in ``folder`` (each checked by :func:`check_safetensors_index`), the shards of a distributed
    checkpoint, then ``STEM[.VARIANT].safetensors``."""
    files: list[Path] = []
    for index in sorted(p for p in folder.iterdir() if SAFETENSORS_INDEX.search(p.name)):
        files.extend(sorted(set(check_safetensors_index(index).values()) - set(files)))
    files.extend(sorted(p for p in folder.iterdir() if DISTRIBUTED_SHARD.match(p.name) and p not in files))
    single = folder / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")
    if single.exists() and single not in files:  # not a regular file: named by read_weight_headers, not called missing
        files.append(single)
    return files


def loaded_weight_files(folder: Path, stem: str) -> list[Path]:
    """The safetensors files :func:`load_pipeline` reads for the part in ``folder`` (:func:`weight_files`
    of the variant :func:`_weights_variant` picks), and no other: a hub snapshot also holds variants
    it never reads (``.fp16``, ``.non_ema``)."""
    return weight_files(folder, stem, _weights_variant(folder, stem))


def _described(folder: Path, stem: str, variant: str | None) -> Path:
    """The weights file to name for a part's tensor no header holds: its single file, else its index."""
    single = folder / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")
    indexes = sorted(p for p in folder.iterdir() if SAFETENSORS_INDEX.search(p.name))
    return single if single.is_file() or not indexes else indexes[0]


def read_weight_headers(files: list[Path]) -> dict[str, tuple[str, Path]]:
    """Each tensor's safetensors dtype (``F32``, ``I16``, ...) and file, from the headers only (no
    tensor data is read); a file that is not safetensors raises ``ValueError`` naming it."""
    headers: dict[str, tuple[str, Path]] = {}
    for path in files:
        if path.exists() and not path.is_file():  # safetensors' open of a FIFO blocks, holding the GIL
            raise ValueError(f"{path}: {file_kind(path.stat().st_mode)}, where a safetensors file was expected")
        try:
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    headers.setdefault(key, (f.get_slice(key).get_dtype(), path))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({_one_line(e)})") from None
    return headers


def _is_float_dtype(dtype: str) -> bool:
    """A safetensors dtype name that holds floats (F16, BF16, F32, F64, F8_*)."""
    return dtype.startswith(("F", "BF"))


def _named_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return tensors


def _header_names(headers: dict[str, Any]) -> dict[str, str]:
    """A module tensor's name -> the file's key for it: the same, or the key without the prefix a
    loader strips (transformers' ``text_model.``)."""
    names = {key.split(".", 1)[1]: key for key in headers if "." in key}
    names.update({key: key for key in headers})
    return names


def check_loaded_weights(module: torch.nn.Module, info: dict[str, Any], headers: dict[str, tuple[str, Path]], described: Path) -> None:
    """Refuse, naming the file and the tensor, a loaded part whose weights files lack
    a tensor (diffusers leaves it on the meta device, transformers draws it at random), hold one the
    class has no place for (the loaders drop it with a log line: an erasure's adapter lost), hold an
    integer or bool tensor where the model holds floats (the loaders cast it silently), or hold NaN
    or infinite values. ``info`` is ``from_pretrained``'s ``output_loading_info``; ``headers`` is
    :func:`read_weight_headers`'; ``described`` is the file named for a tensor no header holds.

    Cost: the headers are read once, without the data (2 ms for a 0.5 GiB file of 343 tensors); the
    finiteness pass sums every float tensor once in memory (:func:`all_finite`: 0.15 s per GiB of
    float32 on 2 shared CPU cores, so about 0.7 s for SD v1.5's 4.3 GiB in float32), beside the
    seconds loading them takes.
    """
    problems = [*sorted(info.get("missing_keys") or ()), *[str(m) for m in info.get("mismatched_keys") or ()]]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{described}: holds no tensor {problems[0]}{more}, which {type(module).__name__} needs; "
                         "loaded without it the part would draw noise or blank images")
    if info.get("error_msgs"):
        raise ValueError(f"{described}: does not fit {type(module).__name__} ({str(info['error_msgs'][0]).splitlines()[0]})")
    keys = _header_names(headers)
    extra = sorted(keys.get(name, name) for name in info.get("unexpected_keys") or ())
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        where = headers[extra[0]][1] if extra[0] in headers else described
        raise ValueError(f"{where}: holds tensor {extra[0]}{more}, which {type(module).__name__} has no place for; the "
                         "loader would drop it, so the part would not be the one handed over (an erasure's added "
                         "weights lost); save the pipeline with the class its weights belong to")
    tensors = _named_tensors(module)
    for key, (dtype, where) in headers.items():
        # An integer or bool tensor is fine only where the model holds one (CLIP's position_ids): under
        # a float's name, or under a name the loader renames (old attention names), it is cast.
        held = tensors.get(key, tensors.get(key.split(".", 1)[-1]))
        if not _is_float_dtype(dtype) and (held is None or held.is_floating_point()):
            raise ValueError(f"{where}: tensor {key} is {dtype}, where {type(module).__name__} holds floats "
                             "(it would be cast silently); save the weights in a float dtype")
    for name, tensor in tensors.items():
        key = keys.get(name)
        where = headers[key][1] if key is not None else described
        if tensor.is_meta:
            raise ValueError(f"{where}: holds no tensor {name}, which {type(module).__name__} needs (it was left unloaded)")
        if not tensor.is_floating_point():
            continue
        if not all_finite(tensor):
            cast = f" once read as {tensor.dtype}" if key is not None and headers[key][0] != SAFETENSORS_FLOATS.get(tensor.dtype) else ""
            raise ValueError(f"{where}: tensor {key or name} holds NaN or infinite values{cast}; a pipeline with them "
                             "draws blank images, which would score as a perfect erasure")


#: The weights file stems diffusers' models and transformers' models are saved under.
DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS = "diffusion_pytorch_model", "model"


def _weights_variant(folder: Path, stem: str) -> str | None:
    """Which safetensors weights of a part to load: the plain ``STEM.safetensors`` (or its sharded
    index), else the one variant saved (``STEM.fp16.safetensors``, as hub snapshots of SD often
    hold), preferring fp16 when there are several. A ``.bin`` or ``.ckpt`` is a pickle, and
    unpickling a file someone handed over can run its code: it is never loaded."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder.parent}: no {folder.name}/ folder")
    names = sorted(p.name for p in folder.iterdir())
    if f"{stem}.safetensors" in names or f"{stem}.safetensors.index.json" in names:
        return None
    pattern = re.compile(rf"^{re.escape(stem)}(?:\.safetensors\.index)?\.(\w+)\.(?:safetensors|json)$")
    variants = sorted({m.group(1) for m in map(pattern.match, names) if m})
    if "fp16" in variants or len(variants) == 1:
        return "fp16" if "fp16" in variants else variants[0]
    if variants:
        raise ValueError(f"{folder}: no {stem}.safetensors and several variants ({', '.join(variants)}); "
                         f"keep the one to load as {stem}.safetensors")
    pickled = [n for n in names if Path(n).suffix in PICKLED_SUFFIXES]
    found = f"only {', '.join(pickled)}, a pickle, which is never loaded" if pickled else f"found: {', '.join(names) or 'nothing'}"
    raise ValueError(f"{folder}: no {stem}.safetensors ({found}); re-save the pipeline with save_pretrained(..., safe_serialization=True)")


def _component_class(index: dict[str, Any], name: str, allowed: tuple[type, ...], path: Path) -> type:
    """The class ``model_index.json`` names for ``name``, if it is one of ``allowed``; else an error."""
    entry = index.get(name)
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ValueError(f"{path}/model_index.json: {name} is {entry!r}, want [library, class name]")
    library, class_name = entry
    for cls in allowed:
        if cls.__name__ == class_name:
            _refuse_own_module(path, name, library, cls)
            return cls
    fix = ("; re-save it with one of them (pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)), or plug it "
           "in as a method (--method module:Class), whose pipeline may sample with any scheduler") if name == "scheduler" else (
           f"; loaded as one of them it would drop what {class_name} does: plug it in as a method (--method module:Class, "
           "whose build() loads it with diffusers, not ctx.load_pipeline)")
    raise ValueError(f"{path}/model_index.json: {name} is {class_name!r}; supported: {', '.join(c.__name__ for c in allowed)}{fix}")


def _refuse_own_module(path: Path, name: str, library: Any, cls: type) -> None:
    """Refuse a part named by one of diffusers' or transformers' class names but from another module
    (``["mylab_unet", "UNet2DConditionModel"]``: a custom component, the class defined in the part's
    ``mylab_unet.py``, which diffusers runs with ``trust_remote_code``): loaded as the library's class
    from its weights, it would be sampled without what that code does. This package's own
    :class:`PatchAutoencoder` is named by whichever module saved it and is always loaded as itself."""
    own = cls.__module__.split(".")[0]
    if own not in ("diffusers", "transformers") or library == own:
        return
    where = f" (the code of {path / name / (str(library) + '.py')})" if isinstance(library, str) and (path / name / f"{library}.py").is_file() else ""
    raise ValueError(f"{path}/model_index.json: {name} is {[library, cls.__name__]!r}, a {cls.__name__} of the module {library!r}{where}, "
                     f"not the {own} class; loaded as that one it would drop what the module's code does (never run here): plug it in as a method "
                     "(--method module:Class, whose build() loads it with diffusers, not ctx.load_pipeline)")


def check_tokenizer_class(index: dict[str, Any], path: Path) -> None:
    """Refuse a folder whose ``model_index.json`` names a tokenizer other than transformers' CLIP one
    (``TOKENIZER_CLASSES``): it is read as a ``CLIPTokenizer`` from its files, so another tokenizer
    (or a lab's own, from a module in the folder) would be replaced without a word."""
    entry = index.get("tokenizer")
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" and entry[1] in TOKENIZER_CLASSES:
        return
    raise ValueError(f"{path}/model_index.json: tokenizer is {entry!r}, want one of transformers' {', '.join(TOKENIZER_CLASSES)} "
                     "(it is read as a CLIPTokenizer from its files): plug a pipeline with another in as a method (--method module:Class)")
