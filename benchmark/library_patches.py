"""Library functions a plug-in replaces: a class's method or a module's function in torch, diffusers,
transformers or the toolkit (``AttnProcessor2_0.__call__ = damped``, ``F.scaled_dot_product_attention
= mine``), as research code patches a sampler.

Such a replacement is process-wide: every method sampled after it, and the fine-tunes the run shares,
would run with it, so a row would depend on which plug-in ran before. One made in a method's
``build`` or sampling holds for that method alone: put back after its images are drawn, and taken
out while the toolkit's services (``ctx.finetune``, ``ctx.load_pipeline``) run. One made at import
holds for the whole run (the base, the detector, every method) and is refused, naming the function.

torch's process-wide module hooks (``register_module_forward_hook`` and its kin, which every module's
``forward`` in the process runs through: the next method's UNet, the detector scoring its images)
are held to the same rule.

A replacement is told from a library's own (ultralytics replaces ``torch.save`` when imported) by
where its code lives: outside the installed packages and the toolkit, it is a plug-in's.
"""
from __future__ import annotations

import functools
import sys
import sysconfig
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

#: The packages whose functions sample, train and score.
LIBRARIES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "huggingface_hub", "PIL", "numpy",
             "ultralytics", "benchmark", "implicit_concept", "builders")

_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
              staticmethod, classmethod, property, functools.partial)

#: (module, attribute) for a module's function, (module, class, attribute) for a class's.
Key = tuple[str, ...]


def library_functions() -> dict[Key, Any]:
    """Every function of the loaded :data:`LIBRARIES` modules and of the classes they define, as it is now."""
    found: dict[Key, Any] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name.partition(".")[0] not in LIBRARIES:
            continue
        try:
            members = list(vars(module).items())
        except TypeError:
            continue
        for attr, value in members:
            kind = type(value)  # not isinstance: a module's deprecated alias warns when asked its __class__
            if issubclass(kind, _FUNCTIONS):
                found[(name, attr)] = value
            elif issubclass(kind, type) and vars(value).get("__module__") == name:
                for method, function in list(vars(value).items()):
                    if issubclass(type(function), _FUNCTIONS):
                        found[(name, attr, method)] = function
    return found


def _hook_tables() -> dict[str, dict[int, Any]]:
    """torch's tables of process-wide module hooks (``_global_forward_hooks``, ...), by name."""
    from torch.nn.modules import module

    return {name: table for name, table in vars(module).items() if name.startswith("_global_") and isinstance(table, dict)}


def global_hooks() -> dict[str, dict[int, Any]]:
    """A copy of each of torch's process-wide module hook tables, as they are now."""
    return {name: dict(table) for name, table in _hook_tables().items()}


def _set_hooks(held: dict[str, dict[int, Any]]) -> None:
    for name, table in _hook_tables().items():
        table.clear()
        table.update(held.get(name, {}))


def _hooks_added(before: dict[str, dict[int, Any]]) -> list[str]:
    """The process-wide module hooks registered by code outside the libraries since ``before``, named."""
    return [f"a process-wide module hook ({name.removeprefix('_global_')}: {_name(hook)})"
            for name, table in global_hooks().items() for key, hook in table.items()
            if key not in before.get(name, {}) and callable(hook) and not _library_code(hook)]


def replaced_by_plugins(before: dict[Key, Any]) -> dict[Key, Any]:
    """The functions of ``before`` replaced since by code outside the libraries, by their replacement."""
    return {key: value for key, value in library_functions().items()
            if key in before and value is not before[key] and not _library_code(value)}


def dotted(key: Key) -> str:
    return ".".join(key)


def _put(key: Key, value: Any) -> None:
    holder: Any = sys.modules[key[0]]
    for part in key[1:-1]:
        holder = getattr(holder, part)
    setattr(holder, key[-1], value)


def _put_back(before: dict[Key, Any]) -> dict[Key, Any]:
    """Put back every function a plug-in replaced since ``before``; what was replaced, by what."""
    replaced = replaced_by_plugins(before)
    for key in replaced:
        _put(key, before[key])
    return replaced


@contextmanager
def kept_library_functions() -> Iterator[None]:
    """Library functions a plug-in replaces, and process-wide module hooks it registers, in the block
    are put back (taken out) after it."""
    before, hooks = library_functions(), global_hooks()
    try:
        yield
    finally:
        _put_back(before)
        _set_hooks(hooks)


@contextmanager
def refused_library_replacements(what: str) -> Iterator[None]:
    """Refuse (put back, then a ``ValueError`` naming them) library functions replaced, and process-wide
    module hooks registered, by ``what``'s import: they would hold for the whole run."""
    before, hooks = library_functions(), global_hooks()
    try:
        yield
    except BaseException:
        _put_back(before)
        _set_hooks(hooks)
        raise
    replaced, added = _put_back(before), _hooks_added(hooks)
    _set_hooks(hooks)
    if replaced or added:
        names = ", ".join([*(f"{dotted(key)} (with {_name(value)})" for key, value in sorted(replaced.items())), *added])
        raise ValueError(f"{what}: importing it {'replaced' if replaced else 'registered'} {names}; every method of the run, and the base and fine-tunes "
                         "they share, would run with it. Make the replacement in build(ctx), where it holds for this "
                         "method's build and sampling alone, or on your own pipeline (unet.set_attn_processor, a subclass)")


def without_plugin_replacements(service: Callable[..., T]) -> Callable[..., T]:
    """``service`` (a fine-tune, a pipeline load) run with the library functions and process-wide
    module hooks as they are now (before a plug-in's code runs), the caller's put back in place after it."""
    baseline, baseline_hooks = library_functions(), global_hooks()

    @functools.wraps(service)
    def run(*args: Any, **kwargs: Any) -> T:
        theirs, their_hooks = _put_back(baseline), global_hooks()
        _set_hooks(baseline_hooks)
        try:
            return service(*args, **kwargs)
        finally:
            for key, value in theirs.items():
                _put(key, value)
            _set_hooks(their_hooks)

    return run


def _name(value: Any) -> str:
    function = _code_holder(value)
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', type(function).__name__)}"


def _code_holder(value: Any) -> Any:
    """The function a staticmethod, classmethod or property holds (not what a wrapper wraps: a
    plug-in's ``functools.wraps`` wrapper is the plug-in's code)."""
    if isinstance(value, (staticmethod, classmethod)):
        return value.__func__
    if isinstance(value, property):
        return value.fget
    return value


def _library_code(value: Any) -> bool:
    """Whether ``value``'s code is the libraries' or the toolkit's (a compiled function counts as
    theirs; a ``functools.partial`` installed over a library function, as a plug-in's)."""
    if isinstance(value, functools.partial):
        return False
    code = getattr(_code_holder(value), "__code__", None)
    if code is None:
        return True
    return any(Path(code.co_filename).resolve().is_relative_to(folder) for folder in _library_folders())


@functools.lru_cache(maxsize=1)
def _library_folders() -> tuple[Path, ...]:
    paths = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    folders = {Path(p).resolve() for p in paths if p}
    for name in ("benchmark", "implicit_concept", "builders"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            folders.add(Path(module.__file__).resolve().parent)
    return tuple(folders)
