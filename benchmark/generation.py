"""Generation from evaluation prompts: chunked, resumable, one fixed seed per image.

Images are saved as ``{case_number}_{i}.png`` (ESD's naming). A killed run continues where it
stopped: finished images are skipped, and each image's seed depends only on its prompt row and
index, so a resumed run gives the same images as an uninterrupted one. Images record what made
them (``source.json``: the model's weights by content, the negative prompt, the settings, and each
image's prompt text and seed); made by another model, prompt or setting, they are stale and made anew.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import uuid
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FunctionType, MethodType, ModuleType
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from tqdm import tqdm

from benchmark.failures import MethodFailed
from benchmark.models.pipelines import CONFIG_NAMES, portable_config
from benchmark.prompts import Prompt
from implicit_concept.files import atomic_write_bytes, atomic_write_json, folder_sha256, read_json_object, sha256_file
from implicit_concept.provenance import canonical_json
from implicit_concept.torch_settings import torch_threads
from implicit_concept.validate import check_int, check_number

SOURCE_FILE = "source.json"

#: (prompts, negative prompts, seeds) -> images; any pipeline or method can be wrapped as one.
GenerateFn = Callable[[Sequence[str], Sequence[str], Sequence[int]], list[Image.Image]]


@dataclass(frozen=True)
class GenerationSettings:
    steps: int = 25
    guidance_scale: float = 7.5
    image_size: int = 64
    images_per_prompt: int = 1
    chunk_size: int = 16
    #: Torch threads sampling runs under (None: as the process is). Sampling arithmetic can depend
    #: on the thread count (a debug model's images differed by a pixel level between 1 and 2), so a
    #: track's images are made under one count wherever they are made.
    threads: int | None = None

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_number("guidance_scale", self.guidance_scale, 0, 100)
        check_int("image_size", self.image_size, 8)
        check_int("images_per_prompt", self.images_per_prompt, 1)
        check_int("chunk_size", self.chunk_size, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1)


def image_name(prompt: Prompt, i: int) -> str:
    return f"{prompt.case_number}_{i}.png"


def image_prompts(prompts: Sequence[Prompt], settings: GenerationSettings) -> list[Prompt]:
    """The prompt of each image :func:`generate_images` returns, in its order: what scores that pair
    an image with its prompt (prompt following) must be given."""
    return [p for p in prompts for _ in range(settings.images_per_prompt)]


def image_seed(prompt: Prompt, i: int) -> int:
    return prompt.evaluation_seed * 1000 + i


def generate_images(
    generate: GenerateFn,
    prompts: Sequence[Prompt],
    out_dir: Path,
    negative_prompt: str = "",
    settings: GenerationSettings = GenerationSettings(),
    progress: bool = True,
    desc: str = "generate",
    source: dict[str, Any] | None = None,
) -> list[Path]:
    """Generate every missing image; return the paths of all images, in prompt order.

    Batches are always the same fixed chunks of the full list, and a chunk with any image missing
    is generated whole: batched float arithmetic then matches an uninterrupted run exactly.
    ``source`` names the model (e.g. where its weights were loaded from); images in ``out_dir``
    made by another source, negative prompt or settings are removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = [(p, i) for p in prompts for i in range(settings.images_per_prompt)]
    if source is not None:
        _claim(out_dir, {"model": source, "negative_prompt": negative_prompt, "settings": asdict(settings)},
               {image_name(p, i): _drawn_from(p, i) for p, i in items})
    chunks = [items[s : s + settings.chunk_size] for s in range(0, len(items), settings.chunk_size)]
    todo = [c for c in chunks if not all((out_dir / image_name(p, i)).exists() for p, i in c)]
    with tqdm(total=sum(len(c) for c in todo), unit="img", disable=not progress, desc=desc) as bar:
        for chunk in todo:
            try:
                with torch_threads(settings.threads):
                    images = generate(
                        [p.prompt for p, _ in chunk], [negative_prompt] * len(chunk), [image_seed(p, i) for p, i in chunk]
                    )
            except GenerationError as e:
                raise GenerationError(str(e) if str(e).startswith(f"{desc}: ") else f"{desc}: {e}") from None
            except Exception as e:
                from benchmark.methods.interface import NotImplementedMethod

                if isinstance(e, NotImplementedMethod):
                    raise  # a method not carried yet, said while sampling: missing, as from build
                raise MethodFailed(desc, "the pipeline", e) from e
            _check_images(images, len(chunk), settings.image_size, desc)
            for (p, i), image in zip(chunk, images):
                _save_atomic(image, out_dir / image_name(p, i))
            bar.update(len(chunk))
    return [out_dir / image_name(p, i) for p, i in items]


class GenerationError(ValueError):
    """A pipeline returned something other than one image of the asked size per prompt."""


def _check_images(images: Any, asked: int, size: int, desc: str) -> None:
    """Refuse, naming what was generating, what no image file should be made from: a plug-in's
    pipeline that drops prompts, returns arrays or tensors, or ignores the track's image size."""
    if not isinstance(images, (list, tuple)):
        raise GenerationError(f"{desc}: the pipeline returned {type(images).__name__}, not a list of PIL images")
    if len(images) != asked:
        raise GenerationError(f"{desc}: the pipeline returned {len(images)} images for {asked} prompts")
    for image in images:
        if not isinstance(image, Image.Image):
            raise GenerationError(f"{desc}: the pipeline returned a {type(image).__name__}, not a PIL image (output_type='pil')")
        if image.size != (size, size):
            raise GenerationError(f"{desc}: the pipeline returned {image.width}x{image.height} images; the track asks for {size}x{size}")
        if image.mode != "RGB":
            raise GenerationError(f"{desc}: the pipeline returned mode {image.mode} images; the benchmark saves and scores RGB "
                                  "(what a transparent or high-bit-depth image means is the method's to say: convert it to RGB)")


def _drawn_from(prompt: Prompt, i: int) -> str:
    """What one image is drawn from besides the model and settings: its prompt's text and its seed."""
    return _json_sha256({"prompt": prompt.prompt, "seed": image_seed(prompt, i)})


def _claim(out_dir: Path, record: dict[str, Any], images: dict[str, str]) -> None:
    """Record what the images in ``out_dir`` are drawn from: the model, negative prompt and settings
    for all of them, and each image's own prompt text and seed (``images``). An image made by another
    model or setting, or from another prompt under the same name (a prompts file edited in place),
    is removed so that it is drawn anew; so is any image the record does not account for."""
    record = json.loads(canonical_json(record))
    path = out_dir / SOURCE_FILE
    old = _recorded(path)
    same_model = isinstance(old, dict) and isinstance(old.get("images"), dict) and {k: v for k, v in old.items() if k != "images"} == record
    drawn = dict(old["images"]) if same_model else {}
    for name, key in images.items():
        if drawn.get(name) != key:
            (out_dir / name).unlink(missing_ok=True)
            drawn[name] = key
    for stale in out_dir.glob("*.png"):
        if stale.name not in drawn:
            stale.unlink()
    if old != {**record, "images": drawn}:
        atomic_write_json(path, {**record, "images": drawn})


def _recorded(path: Path) -> Any:
    """What ``source.json`` says made the images beside it; None if it is missing or unreadable,
    so the images are made anew rather than trusted."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _folder(part: Any) -> str | None:
    """The folder a part's weights were loaded from; None for a part built in memory."""
    config = getattr(part, "config", None)
    return config.get("_name_or_path") if isinstance(config, dict) else getattr(config, "_name_or_path", None)


def _loaded_from(part: Any) -> str | None:
    """The sha256 of the folder a part's weights were loaded from (see :func:`folder_sha256`), else its name."""
    name = _folder(part)
    return f"sha256:{folder_sha256(Path(name))}" if name and Path(name).is_dir() else name


def pipeline_folders(pipeline: Any) -> dict[str, str | None]:
    """Where a pipeline's weighted parts were loaded from, for people to open (``results.json``'s ``model``)."""
    return {"class": type(pipeline).__name__, **{name: _folder(getattr(pipeline, name, None)) for name in ("unet", "text_encoder", "vae")}}


#: Each weighted part's tensors as they were loaded (:func:`remember_loaded`), by module.
_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_loaded(pipeline: Any) -> Any:
    """Note each weighted part's tensors as loaded from its folder, so :func:`model_record` can tell a
    part a method edited in memory afterwards (a post-hoc weight edit) from the folder it names.
    Costs one pass over the weights (as :func:`pipeline_source` makes again before sampling)."""
    for name in _PARTS:
        part = getattr(pipeline, name, None)
        if isinstance(part, torch.nn.Module):
            _LOADED[part] = _weights_sha256(part)
    return pipeline


def model_record(pipeline: Any, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`pipeline_folders`, with the scheduler's class and ``edited_in_memory``: the parts that
    differ from what their folders hold (weights a method changed after ``ctx.load_pipeline``, a
    scheduler other than the one saved beside the UNet), whose folders alone do not draw its images.
    ``source``: :func:`pipeline_source`'s record, whose weight hashes are reused."""
    record = pipeline_folders(pipeline)
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is None or getattr(scheduler, "config", None) is None:
        return record
    record["scheduler"] = type(scheduler).__name__
    edited = [name for name in _PARTS if _edited(getattr(pipeline, name, None), (source or {}).get(name))]
    if _scheduler_edited(scheduler, record.get("unet")):
        edited.append("scheduler")
    record["edited_in_memory"] = edited
    return record


def _edited(part: Any, now: str | None) -> bool:
    """Whether a part loaded by :func:`remember_loaded` holds other tensors now."""
    loaded = _LOADED.get(part) if isinstance(part, torch.nn.Module) else None
    if loaded is None:
        return False
    return loaded != (now if now is not None else _weights_sha256(part))


def _scheduler_edited(scheduler: Any, unet_folder: str | None) -> bool:
    """Whether ``scheduler`` is not the one saved in the pipeline folder holding ``unet_folder``: another
    class, or another value of a setting its class takes (a file's other fields are ignored by it)."""
    saved_file = Path(unet_folder).parent / "scheduler" / "scheduler_config.json" if unet_folder else None
    if saved_file is None or not saved_file.is_file():
        return False
    try:
        saved = read_json_object(saved_file)
    except (OSError, ValueError):
        return True
    if saved.get("_class_name", type(scheduler).__name__) != type(scheduler).__name__:
        return True
    taken = inspect.signature(type(scheduler).__init__).parameters
    now = json.loads(json.dumps(sampler_settings(scheduler.config), default=repr))
    return any(now.get(k) != v for k, v in saved.items() if k in taken)


def pipeline_source(pipeline: Any) -> dict[str, Any]:
    """What a pipeline draws with, by content, so images are made anew exactly when it changes: each
    weighted part's tensors as they are in memory (a moved copy is the same model; new weights at the
    same path, or weights a plug-in edited after loading, are not), the scheduler's config and the
    tokenizer's vocabulary. A part that is not a torch module is named by the folder it came from.

    A plug-in's own object (a wrapper around a pipeline, a function closing over one) is keyed by
    every module, tensor, scheduler and tokenizer it holds; one that holds none of these cannot be
    compared, and its images are drawn anew on every run rather than trusted."""
    record: dict[str, Any] = {"class": type(pipeline).__name__}
    for name in _PARTS:
        part = getattr(pipeline, name, None)
        record[name] = _weights_sha256(part) if isinstance(part, torch.nn.Module) else _loaded_from(part)
    scheduler = getattr(pipeline, "scheduler", None)
    if getattr(scheduler, "config", None) is not None:
        record["scheduler"] = scheduler_sha256(scheduler)
    vocabulary = getattr(getattr(pipeline, "tokenizer", None), "get_vocab", None)
    if callable(vocabulary):
        record["tokenizer"] = _json_sha256(vocabulary())
    if all(record[name] is None for name in _PARTS):
        record["holds"] = _held(pipeline)
        if not record["holds"]:
            record["drawn_anew"] = uuid.uuid4().hex
    return record


_PARTS = ("unet", "text_encoder", "vae")


def _held(root: Any) -> dict[str, str | None]:
    """What ``root`` holds that decides its images, by attribute path: modules and tensors by their
    values, schedulers by their config, tokenizers by their vocabulary; found through attributes
    (``__dict__`` and ``__slots__``), containers, closures, bound methods and ``functools.partial``
    at any depth. Each object is visited once (shared or cyclic references end there)."""
    found: dict[str, str | None] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), Path, type, ModuleType)):
            continue
        seen.add(id(value))
        if isinstance(value, torch.nn.Module):
            found[path or "self"] = _weights_sha256(value)
            continue
        if isinstance(value, torch.Tensor):
            found[path or "self"] = _tensor_sha256(value)
            continue
        if hasattr(value, "set_timesteps") and getattr(value, "config", None) is not None:
            found[path or "self"] = scheduler_sha256(value)
            continue
        if callable(getattr(value, "get_vocab", None)):
            found[path or "self"] = _json_sha256(value.get_vocab())
            continue
        children = _children(value)
        stack.extend((f"{path}.{name}" if path else str(name), child) for name, child in reversed(children))
    return found


def _children(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if isinstance(value, (set, frozenset)):
        return []
    if isinstance(value, functools.partial):
        return [("func", value.func), ("args", value.args), ("keywords", value.keywords)]
    if isinstance(value, FunctionType):
        cells = value.__closure__ or ()
        return [(name, cell.cell_contents) for name, cell in zip(value.__code__.co_freevars, cells) if _has_contents(cell)]
    if isinstance(value, MethodType):
        return [("__self__", value.__self__), ("__func__", value.__func__)]
    children = [(k, v) for k, v in (getattr(value, "__dict__", None) or {}).items() if not k.startswith("__")]
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                children.append((slot, getattr(value, slot)))
    return children


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a cell not yet filled
        return False
    return True


def _weights_sha256(part: torch.nn.Module) -> str | None:
    """The part's tensors; offloaded to the meta device (accelerate's sequential offload) they have
    no values here, and the folder they came from stands in."""
    state = part.state_dict()
    if any(t.is_meta for t in state.values()):
        return _loaded_from(part)
    digest = hashlib.sha256()
    for name in sorted(state):
        _update(digest, name, state[name])
    return f"sha256:{digest.hexdigest()}"


def _tensor_sha256(tensor: torch.Tensor) -> str | None:
    if tensor.is_meta:
        return None
    digest = hashlib.sha256()
    _update(digest, "", tensor)
    return f"sha256:{digest.hexdigest()}"


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())


def scheduler_sha256(scheduler: Any) -> str:
    """A scheduler by its class and its settings, the same in every process: diffusers' own
    ``_``-prefixed bookkeeping is left out (``_use_default_values`` is a list made from a set, in
    another order under every ``PYTHONHASHSEED``, whenever ``from_config`` or an older config file
    left a field at its default; ``_class_name`` and ``_diffusers_version`` say what wrote a file),
    so a rerun or a resume keeps the images the same sampler drew."""
    return _json_sha256({"class": type(scheduler).__name__, "config": sampler_settings(scheduler.config)})


def sampler_settings(config: Any) -> dict[str, Any]:
    """A scheduler config's settings, without diffusers' ``_``-prefixed bookkeeping."""
    return {k: v for k, v in dict(config).items() if not str(k).startswith("_")}


def _json_sha256(value: Any) -> str:
    return f"sha256:{hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()}"


def pipeline_sha256(path: Path) -> str:
    """The content of a diffusers pipeline folder: ``model_index.json`` and the parts it names, not
    the single-file checkpoints a hub snapshot keeps beside them, as :func:`folder_sha256` hashes
    them, except that a config is hashed without the folder it was loaded from (``PATH_KEYS``): the
    same pipeline in a moved or second cache hashes the same (and its fine-tunes are found there)."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline directory (no model_index.json)")
    parts = [k for k, v in read_json_object(index).items() if not k.startswith("_") and isinstance(v, list) and v[0]]
    return folder_sha256(path, only=[index.name, *parts], digest=_portable_sha256)


def _portable_sha256(path: Path) -> str:
    """A file's sha256, a config's without the path it was loaded from (so a config without one
    hashes as its bytes do, and earlier cache keys hold)."""
    portable = portable_config(path) if path.name.endswith(CONFIG_NAMES) else None
    return hashlib.sha256(portable).hexdigest() if portable is not None else sha256_file(path)


def diffusers_generate_fn(pipeline, settings: GenerationSettings, **call_kwargs) -> GenerateFn:
    """Wrap a diffusers text-to-image pipeline; each image gets its own seeded CPU generator."""
    def generate(prompts: Sequence[str], negatives: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.no_grad():
            result = pipeline(
                prompt=list(prompts),
                negative_prompt=list(negatives) if any(negatives) else None,
                generator=generators,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                height=settings.image_size,
                width=settings.image_size,
                output_type="pil",
                **call_kwargs,
            )
        # A diffusers output's .images; a plain function may return the list of images itself.
        images = result if isinstance(result, (list, tuple)) else getattr(result, "images", None)
        if images is None:
            raise GenerationError(f"{type(pipeline).__name__} returned a {type(result).__name__} with no .images, not a diffusers pipeline output")
        return list(images)

    return generate


def _save_atomic(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
