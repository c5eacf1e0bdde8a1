"""What a diffusion pipeline is, by content: the identities that cache keys, image records and
``results.json`` name it by.

- a pipeline folder: :func:`pipeline_sha256` (the folder's parts, configs without the path they were
  loaded from) and :func:`weights_sha256` (the UNet's and text encoder's weights files alone);
- a pipeline in memory: :func:`pipeline_source`, what it draws with (each weighted part's tensors,
  the scheduler's settings, the tokenizer's vocabulary; a plug-in's own object by what it holds),
  the key generated images are made anew on;
- where it came from: :func:`model_record` (:func:`pipeline_folders`, the scheduler, and the parts
  edited in memory since :func:`remember_loaded` noted them as loaded).
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import uuid
import weakref
from pathlib import Path
from types import FunctionType, MethodType, ModuleType
from typing import Any, Iterator

import torch

from benchmark.models.pipelines import CONFIG_NAMES, DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS, loaded_weight_files, portable_config
from implicit_concept.content_hashes import folder_sha256, sha256_file
from implicit_concept.json_records import read_json_object


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
    scheduler other than the one saved beside the UNet, a part's own attention processors or hooks,
    what the pipeline holds beside its parts), whose folders alone do not draw its images.
    ``source``: :func:`pipeline_source`'s record, whose weight hashes are reused."""
    record = pipeline_folders(pipeline)
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is None or getattr(scheduler, "config", None) is None:
        return record
    record["scheduler"] = type(scheduler).__name__
    edited = [name for name in _PARTS if _edited(getattr(pipeline, name, None), (source or {}).get(name))]
    if _scheduler_edited(scheduler, record.get("unet")):
        edited.append("scheduler")
    edited += sorted({_edit_named(path) for path in (source or {}).get("beyond_parts", {})})
    record["edited_in_memory"] = edited
    return record


def _edit_named(path: str) -> str:
    """How ``edited_in_memory`` names one of :func:`_beyond_parts`' paths: the pipeline's own attribute,
    or a part's attention processors or hooks (forward hooks and replaced ``forward`` methods)."""
    top = path.split(".")[0]
    if top not in _PARTS:
        return top
    return f"{top}.attn_processors" if path.endswith(".processor") else f"{top}.hooks"


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
        record["tokenizer"] = json_sha256(vocabulary())
    # A part hashed once: a hook or a wrapper holding the pipeline names it by the same hash.
    memo = {id(getattr(pipeline, name)): record[name] for name in _PARTS if isinstance(getattr(pipeline, name, None), torch.nn.Module)}
    if all(record[name] is None for name in _PARTS):
        record["holds"] = {**_held(pipeline, memo), **_held_hooks(pipeline, memo)}
        if not record["holds"]:
            record["drawn_anew"] = uuid.uuid4().hex
    else:
        beyond = _beyond_parts(pipeline, memo)
        if beyond:  # absent for a plain pipeline: its key is what it always was
            record["beyond_parts"] = beyond
    return record


_PARTS = ("unet", "text_encoder", "vae")
#: A pipeline's attributes its key names by themselves (the weighted parts, the scheduler, the tokenizer).
_KEYED = (*_PARTS, "scheduler", "tokenizer")


def _beyond_parts(pipeline: Any, memo: dict[int, str | None]) -> dict[str, str | None]:
    """What a pipeline draws with besides its parts' weights, scheduler and tokenizer, which no
    ``state_dict`` holds: tensors and modules on the pipeline object itself (an SLD-like subclass's
    concept embedding), the attention processors its parts sample through that are not diffusers'
    own (a steering direction a custom processor holds, loaded from a lab's file), and the forward
    hooks and replaced ``forward`` methods on its modules (:func:`_held_hooks`), each by its class
    and what it holds. A lab's changed file then draws anew, as changed weights do."""
    found = {path: _part_sha256(value, memo) for path, value in held_parts(pipeline) if path.split(".")[0] not in _KEYED}
    found.update(_held_hooks(pipeline, memo))
    keys: dict[int, str | None] = {}
    for name in _PARTS:
        processors = getattr(getattr(pipeline, name, None), "attn_processors", None)
        if not isinstance(processors, dict):
            continue
        for where, processor in sorted(processors.items()):
            if id(processor) not in keys:
                kind, held = type(processor), _held(processor)
                own = kind.__module__.split(".")[0] == "diffusers" and not held
                keys[id(processor)] = None if own else json_sha256({"class": f"{kind.__module__}.{kind.__qualname__}", "holds": held})
            if keys[id(processor)] is not None:
                found[f"{name}.{where}"] = keys[id(processor)]
    return found


def _held(root: Any, memo: dict[int, str | None] | None = None) -> dict[str, str | None]:
    """What ``root`` holds that decides its images, by attribute path: modules and tensors by their
    values, schedulers by their config, tokenizers by their vocabulary (see :func:`held_parts`)."""
    return {path: _part_sha256(value, memo) for path, value in held_parts(root)}


#: Packages whose forward hooks and replaced ``forward`` methods are their own machinery (accelerate's
#: offloading, PEFT's and diffusers' bookkeeping), not a method's: not keyed, not named as edits.
_LIBRARIES = ("accelerate", "diffusers", "peft", "torch", "transformers")


def _held_hooks(root: Any, memo: dict[int, str | None]) -> dict[str, str | None]:
    """The forward hooks, forward pre-hooks and replaced ``forward`` methods on every module ``root``
    holds and on their submodules, by where they are: no ``state_dict`` holds what they add (a
    direction a hook adds to the text encoder's output, a LoRA that replaces a projection's
    ``forward`` from a network of its own, prompt-to-prompt's attention closures), so a lab's changed
    file would keep the old images and ``results.json`` would say the folders drew them. Each is
    keyed by its function and what it holds (:func:`_held`); a library's own is left out."""
    found: dict[str, str | None] = {}
    for path, part in held_parts(root):
        if not isinstance(part, torch.nn.Module):
            continue
        for where, module in part.named_modules():
            at = f"{path}.{where}" if where else path
            calls = [(f"forward_pre_hooks.{i}", hook) for i, hook in enumerate(module._forward_pre_hooks.values())]
            calls += [(f"forward_hooks.{i}", hook) for i, hook in enumerate(module._forward_hooks.values())]
            calls += [("forward", module.__dict__["forward"])] if "forward" in module.__dict__ else []
            for name, call in calls:
                origin = _origin(call)
                if origin.split(".")[0] not in _LIBRARIES:
                    found[f"{at}.{name}"] = json_sha256({"function": origin, "holds": _held(call, memo)})
    return found


def _origin(call: Any) -> str:
    """Where a hook's code is defined (``module.qualname``), through partials and bound methods."""
    while isinstance(call, (functools.partial, MethodType)):
        call = call.func if isinstance(call, functools.partial) else call.__func__
    named = call if isinstance(call, FunctionType) else type(call)
    return f"{getattr(named, '__module__', '')}.{getattr(named, '__qualname__', type(named).__qualname__)}"


def _part_sha256(value: Any, memo: dict[int, str | None] | None = None) -> str | None:
    """One of :func:`held_parts`: a module or tensor by its values, a scheduler by its config, a
    tokenizer by its vocabulary. ``memo``: hashes already made, by object id (a part many hooks hold)."""
    if memo is not None and id(value) in memo:
        return memo[id(value)]
    if isinstance(value, torch.nn.Module):
        digest = _weights_sha256(value)
    elif isinstance(value, torch.Tensor):
        digest = _tensor_sha256(value)
    elif hasattr(value, "set_timesteps") and getattr(value, "config", None) is not None:
        digest = scheduler_sha256(value)
    else:
        digest = json_sha256(value.get_vocab())
    if memo is not None:
        memo[id(value)] = digest
    return digest


def held_parts(root: Any) -> Iterator[tuple[str, Any]]:
    """The modules, tensors, schedulers and tokenizers ``root`` holds, by attribute path (``self``
    for ``root`` itself): found through attributes (``__dict__`` and ``__slots__``), containers,
    closures, bound methods and ``functools.partial`` at any depth. Each object is visited once
    (shared or cyclic references end there); a part's own insides are not walked."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, value = stack.pop()
        if id(value) in seen or isinstance(value, (str, bytes, int, float, bool, type(None), Path, type, ModuleType)):
            continue
        seen.add(id(value))
        if (isinstance(value, (torch.nn.Module, torch.Tensor))
                or (hasattr(value, "set_timesteps") and getattr(value, "config", None) is not None)
                or callable(getattr(value, "get_vocab", None))):
            yield path or "self", value
            continue
        children = _children(value)
        stack.extend((f"{path}.{name}" if path else str(name), child) for name, child in reversed(children))


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
        # Default values too: ``lambda m, i, o, d=d: o + d`` binds a loop's tensor as research code does.
        defaults = [*enumerate(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).items()]
        return ([(name, cell.cell_contents) for name, cell in zip(value.__code__.co_freevars, cells) if _has_contents(cell)]
                + [(f"defaults.{name}", default) for name, default in defaults])
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
    return json_sha256({"class": type(scheduler).__name__, "config": sampler_settings(scheduler.config)})


def sampler_settings(config: Any) -> dict[str, Any]:
    """A scheduler config's settings, without diffusers' ``_``-prefixed bookkeeping."""
    return {k: v for k, v in dict(config).items() if not str(k).startswith("_")}


def json_sha256(value: Any) -> str:
    """A JSON value's sha256 as image records name what they are drawn from (sorted keys, ``repr``
    for what JSON cannot hold, a ``sha256:`` prefix); generation's per-image keys use it too."""
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


def weights_sha256(pipeline: Path) -> str:
    """The UNet's and text encoder's weights files that :func:`~benchmark.models.pipelines.load_pipeline`
    reads, by content (configs, library versions and the variants a hub snapshot holds beside them
    aside): narrower than :func:`pipeline_sha256`, so it names a base by the weights it samples with
    (the detector's generated images are keyed on it, and the leaderboard ranks only runs on one
    base together: a snapshot with ``.fp16`` and ``.non_ema`` files beside SD v1.5's weights is the
    same base as a folder holding those weights alone)."""
    pipeline = Path(pipeline)
    parts = [(pipeline / part, stem) for part, stem in (("unet", DIFFUSERS_WEIGHTS), ("text_encoder", TRANSFORMERS_WEIGHTS))]
    files = [f for folder, stem in parts if folder.is_dir() for f in loaded_weight_files(folder, stem)]
    return folder_sha256(pipeline, only=sorted(str(f.relative_to(pipeline)) for f in files))
