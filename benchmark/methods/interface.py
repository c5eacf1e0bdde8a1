"""The one interface every removal method follows, and how methods are found by name.

A method receives a :class:`MethodContext` (the concepts, a cached fine-tuning service, the track's
settings) and returns a :class:`Generator`: the pipeline to sample from and the negative prompt to
sample with. Another lab's method is a class with the same shape, named on the command line as
``package.module:Class`` or registered under the ``implicit_concept.methods`` entry point group.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from benchmark.failures import MethodFailed
from benchmark.models.pipelines import save_portable_pipeline
from implicit_concept.concepts import concept
from implicit_concept.files import atomic_dir, locked
from implicit_concept.provenance import cache_key, canonical_json
from implicit_concept.torch_settings import kept_torch_settings, torch_threads
from implicit_concept.validate import FOLDER_NAME

#: Pipeline call arguments the benchmark sets itself, the same for every method being compared.
FIXED_BY_TRACK = ("prompt", "negative_prompt", "generator", "latents", "num_inference_steps", "guidance_scale",
                  "height", "width", "num_images_per_prompt", "output_type")


@dataclass(frozen=True)
class FineTune:
    """What to fine-tune on (the contaminated subset or its clean twins), from what ("base", or "sd":
    the plain fine-tune, as Model Removal starts from the model that learned the concept), and how:
    Geom-Erasing's config and overrides of the track's ``[finetune]`` table."""

    data: str = "contaminated"
    geom: Any = None
    start: str = "base"
    training: dict[str, Any] = field(default_factory=dict)
    #: The training seed; None: the track's (for a track's ``seed_methods``, each of its ``seeds``
    #: in turn). A seed set here is the method's own and is kept under every training seed.
    seed: int | None = None

    def __post_init__(self) -> None:
        # ``data`` names the fine-tune's folder and what it trains on: anything but these two (a
        # typo, a path) is refused rather than trained as the contaminated data under another name.
        if self.data not in FINETUNE_DATA:
            raise ValueError(f"FineTune.data must be one of {', '.join(map(repr, FINETUNE_DATA))}, got {self.data!r}")
        if self.start not in ("base", "sd"):
            raise ValueError(f"FineTune.start must be 'base' or 'sd', got {self.start!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"FineTune.seed must be None or a non-negative int, got {self.seed!r}")
        if not isinstance(self.training, dict):
            raise ValueError(f"FineTune.training must be a dict of [finetune] overrides, got {type(self.training).__name__}")

    def under_seed(self, seed: int) -> "FineTune":
        """This fine-tune under a training seed of the track: its own seed if it set one, else ``seed``."""
        return self if self.seed is not None else replace(self, seed=seed)


#: What a fine-tune can train on: the contaminated subset, or its clean twins.
FINETUNE_DATA = ("contaminated", "clean")


@dataclass
class MethodContext:
    """What a method is given: the concepts its training subset carries, and shared services."""

    concepts: tuple[str, ...]
    work_dir: Path
    seed: int
    finetune: Callable[[FineTune], Path]
    load_pipeline: Callable[[Path], Any]
    train_shards: Path
    settings: dict[str, Any] = field(default_factory=dict)
    detector: Any = None
    base: Path | None = None
    #: Torch threads an edit of ``sd`` runs under (the track's fine-tune threads): its weights then
    #: do not depend on the machine's core count or on the process it runs in.
    threads: int | None = None

    def edited_sd(self, tag: str, record: dict[str, Any], edit: Callable[[Any], None]) -> Path:
        """The plainly fine-tuned model with ``edit`` applied in place, saved once under ``work_dir``
        in a folder named by the ``sd`` model and the edit's ``record``.

        Post-hoc methods (ESD, FMN) start from ``sd``; a rerun loads what an earlier run saved, and
        a new ``sd`` (other data, other settings) is edited anew.
        """
        sd = self.finetune(FineTune())
        out = self.work_dir / f"pipeline-{cache_key({'sd': str(sd), 'tag': tag, 'record': record, 'threads': self.threads})}"
        with locked(out):
            if not (out / "model_index.json").exists():
                pipe = self.load_pipeline(sd)
                with torch_threads(self.threads):
                    edit(pipe)
                with atomic_dir(out) as tmp:
                    save_portable_pipeline(pipe, tmp)
                    (tmp / f"{tag}.json").write_text(canonical_json(record))
        return out

    @property
    def phrase(self) -> str:
        """The concepts' names as one prompt ("QR code, watermark, text" on a mixed subset)."""
        return ", ".join(concept(c).phrase for c in self.concepts)


@dataclass
class Generator:
    """A pipeline ready to sample from, the negative prompt to use, and extra call arguments."""

    pipeline: Any
    negative_prompt: str = ""
    call_kwargs: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    name: str = ""
    description: str = ""

    @abstractmethod
    def build(self, ctx: MethodContext) -> Generator:
        """Train or load what the method needs (cache it under ``ctx.work_dir``) and return it."""

    def finetunes(self, ctx: MethodContext) -> list[FineTune]:
        """The fine-tunes ``build`` will ask ``ctx.finetune`` for. A benchmark run over several
        processes (``accelerate launch``) trains these with all of them first, then builds, generates
        and scores on the main process alone. None by default: a method that trains no fine-tune."""
        return []


def declared_finetunes(method: Any, ctx: MethodContext) -> list[FineTune]:
    """``method.finetunes(ctx)`` (none for a plug-in without it), each checked to be a :class:`FineTune`."""
    try:
        declared = list(getattr(method, "finetunes", lambda ctx: [])(ctx))
    except NotImplementedMethod:
        return []  # its build says so too: reported as missing, not as a failure
    except Exception as e:
        raise MethodFailed(f"method {method.name}", "finetunes(ctx)", e) from e
    for ft in declared:
        if not isinstance(ft, FineTune):
            raise ValueError(f"method {method.name}: finetunes() gave {type(ft).__name__}, not a FineTune")
    return declared


def checked_generator(method: Any, generator: Any) -> Generator:
    """What ``method.build`` returned, refused with the method's name unless it is a usable :class:`Generator`."""
    if not isinstance(generator, Generator):
        raise ValueError(f"method {method.name}: build() returned {type(generator).__name__}, not a Generator(pipeline, negative_prompt, call_kwargs)")
    if not callable(generator.pipeline):
        raise ValueError(f"method {method.name}: Generator.pipeline is a {type(generator.pipeline).__name__}, not a callable diffusers pipeline")
    if not isinstance(generator.negative_prompt, str):
        raise ValueError(f"method {method.name}: Generator.negative_prompt is a {type(generator.negative_prompt).__name__}, not a str")
    if not isinstance(generator.call_kwargs, dict):
        raise ValueError(f"method {method.name}: Generator.call_kwargs is a {type(generator.call_kwargs).__name__}, not a dict")
    fixed = sorted(set(generator.call_kwargs) & set(FIXED_BY_TRACK))
    if fixed:
        raise ValueError(f"method {method.name}: Generator.call_kwargs sets {', '.join(fixed)}, which the track fixes "
                         "for every method (prompts, seeds, steps, guidance, size)")
    try:
        canonical_json(generator.call_kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"method {method.name}: Generator.call_kwargs must hold JSON values, as they are recorded "
                         f"with the images ({e})") from None
    return generator


class NotImplementedMethod(Exception):
    """Raised by a method the benchmark names but does not carry yet; the report marks it missing."""


def _import_plugin(module: str) -> ModuleType:
    """Import a plug-in's module as ``python -m`` would find it: installed, or in the working folder
    (the console script, unlike ``python -m``, does not put it on ``sys.path``). The working folder is
    searched last, so it never shadows an installed package (an error names the file imported)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise
    sys.path.append(os.getcwd())
    return importlib.import_module(module)


def _is_missing(e: ModuleNotFoundError, module: str) -> bool:
    """Whether the plug-in's module itself (or a package above it) is missing, not a module it imports."""
    parts = module.split(".")
    return e.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _which_file(module: ModuleType, name: str) -> str:
    """Where ``module`` was imported from, and a working-folder file of the same name it shadowed."""
    file = getattr(module, "__file__", None)
    said = f"; {name!r} was imported from {file}" if file else ""
    beside = Path(os.getcwd()) / (name.replace(".", os.sep) + ".py")
    if file and beside.is_file() and Path(file).resolve() != beside.resolve():
        said += f", not {beside} in the working folder (an installed module of that name comes first: rename yours)"
    return said


def load_method(spec: str, registry: dict[str, Callable[[], Method]]) -> Method:
    """A registered name, an entry point name, or ``package.module:Class``.

    A plug-in's module is imported and its class made under torch's settings as they were (what its
    import does to grad mode, the default dtype or threads is undone), so it cannot change how the
    benchmark trains or samples anything else. A plug-in that fails to import or to be made is a
    :class:`MethodFailed` naming ``--method`` and keeping its own traceback."""
    if spec in registry:
        return registry[spec]()
    with kept_torch_settings():
        for ep in entry_points(group="implicit_concept.methods"):
            if ep.name == spec:
                try:
                    made = ep.load()()
                except Exception as e:
                    raise MethodFailed(f"--method {spec}", f"entry point {ep.value}", e) from e
                return _named(made, spec, ep.name, registry)
        if ":" in spec:
            return _plugin(spec, registry)
    raise ValueError(f"unknown method {spec!r} (known: {', '.join(registry)}; or package.module:Class, or path/to/file.py:Class)")


def _plugin(spec: str, registry: dict[str, Callable[[], Method]]) -> Any:
    module_name, _, attr = spec.rpartition(":")
    as_file = _is_file_spec(module_name)
    if as_file:
        module_name = _module_of_file(module_name, spec)
    if not module_name or not attr or module_name.startswith(".") or not attr.isidentifier():
        raise ValueError(f"--method {spec}: expected package.module:Class or path/to/file.py:Class")
    try:
        module = _import_plugin(module_name)
    except ModuleNotFoundError as e:
        if not _is_missing(e, module_name):
            raise MethodFailed(f"--method {spec}", f"importing {module_name}", e) from e
        raise ValueError(f"--method {spec}: cannot import ({e}); a plug-in module is found in the working folder or on "
                         "PYTHONPATH, or give its file: --method path/to/file.py:Class") from None
    except Exception as e:  # SyntaxError, NameError, an ImportError inside it: the plug-in's own code
        raise MethodFailed(f"--method {spec}", f"importing {module_name}", e) from e
    if as_file:
        _require_imported_from(module, module_name, spec)
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"--method {spec}: cannot import (module {module_name!r} has no attribute {attr!r}{_which_file(module, module_name)})")
    try:
        inspect.signature(cls).bind()
    except TypeError as e:
        raise ValueError(f"--method {spec}: {attr}() cannot be made without arguments ({e})") from None
    except ValueError:
        pass  # no signature to check (a builtin): calling it tells
    try:
        method = cls()
    except Exception as e:
        raise MethodFailed(f"--method {spec}", f"{attr}()", e) from e
    if not isinstance(method, Method) and not callable(getattr(method, "build", None)):
        raise ValueError(f"--method {spec}: {attr} has no build(ctx) method")
    return _named(method, spec, attr, registry)


def _is_file_spec(module: str) -> bool:
    """Whether ``--method``'s module part is a file path (``mylab/methods.py``), not a dotted name."""
    return module.endswith(".py") or "/" in module or os.sep in module


def _module_of_file(text: str, spec: str) -> str:
    """The dotted name a plug-in file is imported under: its name below the outermost package
    folder holding it (each with an ``__init__.py``), so its imports of its own package work, with
    that folder put last on ``sys.path`` (as the working folder is). Its code is then keyed for the
    image cache as a plug-in named ``package.module:Class`` is (:func:`method_sources`)."""
    path = Path(text)
    if path.suffix != ".py" or not path.is_file():
        problem = "no such file" if path.suffix == ".py" and not path.exists() else "not a .py file"
        raise ValueError(f"--method {spec}: {text}: {problem}; name a plug-in as path/to/file.py:Class, or as "
                         "package.module:Class (found in the working folder or on PYTHONPATH)")
    path = path.resolve()
    parts = [] if path.stem == "__init__" else [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if not parts or not all(part.isidentifier() for part in parts):
        raise ValueError(f"--method {spec}: {text} would be imported as {'.'.join(parts) or 'nothing'!r}, not a Python "
                         "module name; rename the file (letters, digits and '_')")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    return ".".join(parts)


def _require_imported_from(module: ModuleType, name: str, spec: str) -> None:
    """Refuse a plug-in file whose module name an installed module (or one already imported) holds:
    that module, not the file named, would be run."""
    path = Path(spec.rpartition(":")[0]).resolve()
    file = getattr(module, "__file__", None)
    if file is None or Path(file).resolve() not in (path, path.parent / "__init__.py"):
        raise ValueError(f"--method {spec}: imports as module {name!r}, which is {file or 'a module without a file'}, "
                         "not this file (an installed module of that name comes first): rename yours")


def _named(method: Any, spec: str, default: str, registry: dict[str, Callable[[], Method]]) -> Any:
    """A plug-in with its ``name`` (else ``default``), refused if the name could leave the run's
    folders or is a built-in method's, whose images and results rows it would replace."""
    try:
        name = getattr(method, "name", "") or default
    except Exception as e:
        raise MethodFailed(f"--method {spec}", "reading its name", e) from e
    if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name):
        raise ValueError(f"--method {spec}: name {name!r} must be 1 to 64 of letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit (it names the method's folders)")
    if name in registry:
        raise ValueError(f"--method {spec}: name {name!r} is the built-in method's; "
                         "a plug-in under it would replace that method's images and results")
    if getattr(method, "name", None) != name:
        try:
            method.name = name
        except AttributeError:
            raise ValueError(f"--method {spec}: its name is {getattr(method, 'name', None)!r} and cannot be set "
                             f"to {name!r} (a read-only property): give it a name of 1 to 64 letters, digits, '_', '-' and '.'") from None
    return method
