"""Check a ``--pretrained`` folder before any stage runs, from its JSON and its file listing alone.

:func:`~benchmark.models.pipelines.load_pipeline` first opens the base inside the first fine-tune,
after the dataset and detector stages (hours at paper scale). Everything it would refuse that can be
seen without reading a tensor is refused here, at the start, in one line naming the file: a part's
folder missing, a part with no safetensors weights (the same lookup ``load_pipeline`` makes, so both
agree on which file is read), a safetensors file that is not one (a Git LFS pointer, a truncated
download: its header is read, never its tensors), a tokenizer or scheduler without its files, and a
folder of another architecture that would load and then fail mid-training with a bare tensor error:
another pipeline class (SDXL, inpainting), a UNet whose input is not the VAE's latents (an
inpainting UNet takes 9 channels), one that needs added embeddings (SDXL's ``text_time``), or one
whose cross-attention width is not the text encoder's; and one holding weights it would not apply
(a LoRA beside the parts).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel

from benchmark.models.adapter_weights import check_no_adapter_weights
from benchmark.models.config_sizes import check_part_size, check_prompt_length
from benchmark.models.patch_autoencoder import PatchAutoencoder
from benchmark.models.pipelines import (
    DIFFUSERS_WEIGHTS,
    PART_CLASSES,
    SCHEDULERS,
    TRANSFORMERS_WEIGHTS,
    _component_class,
    _scheduler_config,
    _weights_variant,
    check_json_files,
    check_tokenizer_class,
    check_weights_config,
    read_weight_headers,
    require_pipeline_folder,
    same_sampler,
    track_sampler,
    weight_files,
)
from implicit_concept.json_records import read_json_object

#: The pipeline class a base may be: SD 1.x and 2.x save this one (SD 2's v-prediction included).
PIPELINE_CLASS = "StableDiffusionPipeline"
#: The parts ``load_pipeline`` loads, in its order, and the weights stem of those with weights.
PARTS = {"vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS, "tokenizer": None, "unet": DIFFUSERS_WEIGHTS, "scheduler": None}
#: The files of each part without weights that its loader reads, each set enough alone (CLIPTokenizer:
#: ``tokenizer.json``, which transformers 5 saves alone, or the two files SD v1.5's folder holds).
NEEDED_FILES = {"tokenizer": (("tokenizer.json",), ("vocab.json", "merges.txt")), "scheduler": (("scheduler_config.json",),)}
CONFIG_FILE = "config.json"


def check_pretrained(path: str | Path) -> dict[str, Any]:
    """Raise ``FileNotFoundError`` or ``ValueError``, one line naming the file (and the field), for a
    folder :func:`~benchmark.models.pipelines.load_pipeline` would refuse or that would fail once
    loaded; else return what was read: the weights files per part and the architecture's widths.
    No tensor is read (only safetensors headers) and nothing is written."""
    path = Path(path)
    require_pipeline_folder(path)
    check_json_files(path)
    index = read_json_object(path / "model_index.json")
    class_name = index.get("_class_name", PIPELINE_CLASS)
    if class_name != PIPELINE_CLASS:
        raise ValueError(f"{path / 'model_index.json'}: _class_name is {class_name!r}; "
                         f"only SD 1.x/2.x folders ({PIPELINE_CLASS}) can be the base")
    classes = {name: _component_class(index, name, allowed, path) for name, allowed in PART_CLASSES.items()}  # each checked
    vae_class = classes["vae"]
    _component_class(index, "scheduler", SCHEDULERS, path)
    check_tokenizer_class(index, path)

    weights: dict[str, list[str]] = {}
    for name, stem in PARTS.items():
        folder = path / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{path}: no {name}/ folder (the base needs its {', '.join(PARTS)})")
        sets = NEEDED_FILES.get(name, ())
        if sets and not any(all((folder / f).is_file() for f in files) for files in sets):
            needed = next(f for f in sets[-1] if not (folder / f).is_file())
            read_from = ", or from ".join(" and ".join(files) for files in sets)
            raise FileNotFoundError(f"{folder / needed}: missing (the {name} is read from {read_from})")
        if stem is None:
            continue
        variant = _weights_variant(folder, stem)
        files = weight_files(folder, stem, variant)
        if not files:
            raise ValueError(f"{folder}: no {stem}{'.' + variant if variant else ''}.safetensors weights file")
        read_weight_headers(files)  # each one a safetensors file: the header only, never the tensors
        weights[name] = [str(f.relative_to(path)) for f in files]

    latent_channels, hidden_size = check_parts_fit(path, vae_class)  # each weighted part's config.json too
    for name, files in weights.items():  # built on the meta device, within what its weights hold
        check_part_size(path / name, classes[name], [path / f for f in files])
    _scheduler_config(path)  # the length of its schedule, which building a scheduler fills
    for name in PART_CLASSES:
        check_weights_config(path / name)
    check_no_adapter_weights(path)
    return {"weights": weights, "latent_channels": latent_channels, "cross_attention_dim": hidden_size}


def base_sampler_difference(path: str | Path, sampler: Any) -> str | None:
    """How a base folder's scheduler does not sample as ``sampler`` (a track's
    :meth:`~benchmark.track.Track.sampler`, given the folder's noise schedule and prediction type),
    in a few words ("EulerDiscreteScheduler, not the track's PNDMScheduler", or the settings that
    differ); None when it does. From JSON only."""
    found = _sampler_difference(Path(path), sampler)
    return None if found is None else found[1]


def _sampler_difference(path: Path, sampler: Any) -> tuple[Path, str] | None:
    """:func:`base_sampler_difference` and the file that says it: ``model_index.json`` for the class
    (diffusers and ``load_pipeline`` take it from there) where ``scheduler_config.json``'s
    ``_class_name`` names another, else ``scheduler_config.json``."""
    index = read_json_object(path / "model_index.json")
    own_class = _component_class(index, "scheduler", SCHEDULERS, path)
    config = _scheduler_config(path)
    own = own_class.from_config(config)
    track = track_sampler(sampler, config, str(path))
    config_file = path / "scheduler" / "scheduler_config.json"
    if same_sampler(track, own):
        return None
    if own_class is not type(track):
        said = f"{own_class.__name__}, not the track's {type(track).__name__}"
        if config.get("_class_name") != own_class.__name__:
            return path / "model_index.json", f"{said} (its scheduler class; {config_file.name} names {config.get('_class_name')!r})"
        return config_file, said
    taken = [k for k in inspect.signature(type(track).__init__).parameters if k != "self"]
    return config_file, "; ".join(f"{k} = {own.config.get(k)!r}, not {track.config.get(k)!r}" for k in taken
                                  if own.config.get(k) != track.config.get(k))


def check_base_sampler(path: str | Path, sampler: Any) -> None:
    """Refuse, in one line naming the file and the settings that differ, a base folder whose scheduler
    does not sample as ``sampler`` (:func:`base_sampler_difference`). The benchmark's methods sample
    with the scheduler their base was saved with (fine-tunes keep it), while ``score-pipeline`` judges
    a handed-over folder with the track's: a base saved with another would give a run's rows and a
    handed-over copy of the same model other images, both recorded as on the track's protocol."""
    found = _sampler_difference(Path(path), sampler)
    if found is None:
        return
    file, said = found
    name = type(sampler).__name__
    raise ValueError(
        f"{file}: {said}; the track samples with {name} (score-pipeline "
        "judges every handed-over folder with it) and the benchmark's methods with their base's scheduler, so they would "
        f"draw other images: re-save the base with the track's (pipe.scheduler = {name}.from_config(...) "
        "with the settings the track names)"
    )


def _default(cls: type, name: str) -> Any:
    """A model class's default for a config field its saved config.json may leave out."""
    return inspect.signature(cls.__init__).parameters[name].default


def check_parts_fit(path: str | Path, vae_class: type) -> tuple[int, int]:
    """Refuse, one line naming the file and the field, a pipeline folder whose parts do not fit
    each other, from their ``config.json`` files alone (no tensor is read): a UNet whose input is not
    the VAE's latents (an inpainting UNet takes 9 channels), one that needs added embeddings (SDXL's
    ``text_time``), or one whose cross-attention width is not the text encoder's. Loaded, such a
    folder fails mid-sampling with a bare tensor error (or draws images of another mode). Returns the
    latent channels and the text encoder's width."""
    path = Path(path)
    unet_file, vae_file, text_file = (path / part / CONFIG_FILE for part in ("unet", "vae", "text_encoder"))
    for part, config in (("unet", unet_file), ("vae", vae_file), ("text_encoder", text_file)):
        if not config.is_file():
            raise FileNotFoundError(f"{config}: missing (the {part}'s architecture)")
    unet, vae, text = (read_json_object(f) for f in (unet_file, vae_file, text_file))
    latent_channels = vae.get("latent_channels")
    if vae_class is PatchAutoencoder and latent_channels is None:
        latent_channels = vae.get("in_channels", 3) * vae.get("patch_size", 4) ** 2
    if latent_channels is None:
        latent_channels = _default(vae_class, "latent_channels")
    for field in ("in_channels", "out_channels"):
        channels = unet.get(field, _default(UNet2DConditionModel, field))
        if channels != latent_channels:
            kind = " (an inpainting UNet)" if field == "in_channels" and channels == 9 else ""
            raise ValueError(f"{unet_file}: {field} = {channels}{kind}; the VAE's latents have {latent_channels} channels "
                             f"({vae_file}), so {latent_channels} needed")
    for field in ("addition_embed_type", "class_embed_type"):
        if unet.get(field) is not None:
            kind = " (an SDXL UNet)" if unet.get(field) == "text_time" else ""
            raise ValueError(f"{unet_file}: {field} = {unet[field]!r}{kind}; an SD 1.x/2.x UNet has none "
                             "(it would need inputs this pipeline never gives)")
    hidden = (text.get("text_config") or {}) if text.get("model_type") == "clip" else text
    hidden_size = hidden.get("hidden_size", 512)  # CLIPTextConfig's default
    check_prompt_length(path / "tokenizer", hidden.get("max_position_embeddings", 77), text_file)  # 77: CLIPTextConfig's default
    cross = unet.get("cross_attention_dim", _default(UNet2DConditionModel, "cross_attention_dim"))
    widths = set(cross) if isinstance(cross, (list, tuple)) else {cross}
    if widths != {hidden_size}:
        raise ValueError(f"{unet_file}: cross_attention_dim = {cross}, but the text encoder's hidden_size is {hidden_size} "
                         f"({text_file}); the UNet cannot attend to its text")
    return latent_channels, hidden_size
