"""Plug-in methods: how one named on the command line is loaded, and the code its images are keyed on.

Loading (:func:`load_method`): a registered name, an ``implicit_concept.methods`` entry point, or
``package.module:Class`` / ``path/to/file.py:Class``, imported under torch's settings as they were,
its failures a :class:`~benchmark.failures.MethodFailed` naming ``--method``.

Provenance (:func:`method_sources`, :func:`code_sha256`): the source files a method's images depend
on, so a plug-in edited since its images were made draws them anew and its results row names its code.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib
import inspect
import os
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from benchmark.failures import MethodFailed, plugin_failure, plugin_output
from benchmark.library_patches import refused_library_replacements
from benchmark.methods.interface import Method
from benchmark.plugin_state import kept_plugin_state
from implicit_concept.content_hashes import sha256_file
from implicit_concept.torch_settings import kept_torch_settings
from implicit_concept.validate import FOLDER_NAME


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
    with kept_torch_settings(), plugin_output(), kept_plugin_state(), refused_library_replacements(f"--method {spec}"):
        installed = entry_points(group=ENTRY_POINTS)
        for ep in installed:
            if ep.name == spec:
                return _named(_made(_entry_point_class(ep, spec), spec, ep.attr or ep.value), spec, ep.name, registry)
        if ":" in spec:
            return _plugin(spec, registry)
    names = sorted({ep.name for ep in installed})
    near = difflib.get_close_matches(spec, [*registry, *names], n=1)
    raise ValueError(f"unknown method {spec!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                     + f" (known: {', '.join(registry)}; installed plug-ins ({ENTRY_POINTS} entry points): "
                     + (", ".join(names) or "none") + "; or package.module:Class, or path/to/file.py:Class)")


#: The entry point group a lab's package registers its methods under (its ``pyproject.toml``'s
#: ``[project.entry-points."implicit_concept.methods"]``).
ENTRY_POINTS = "implicit_concept.methods"


def _entry_point_class(ep: Any, spec: str) -> Any:
    """What an entry point names, loaded; one whose module or class is not there (a typo in the
    lab's ``pyproject.toml``, a package removed but its metadata left) is refused naming the entry
    point and its package, not as the method's failure."""
    try:
        return ep.load()
    except (ModuleNotFoundError, AttributeError) as e:
        # Not there: its module (or a package above it), or its class (or a name below it: Outer.Inner)
        # in the module, which imported.
        missing = _is_missing(e, ep.module) if isinstance(e, ModuleNotFoundError) else (
            ep.module in sys.modules and _attribute_missing(sys.modules[ep.module], ep.attr or ""))
        if not missing:
            raise MethodFailed(f"--method {spec}", f"importing {ep.module}", e) from e
        package = f" of package {ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else ""
        raise ValueError(f"--method {spec}: the entry point '{ep.name} = {ep.value}'{package} cannot be loaded ({e}); "
                         f"fix it in that package's [project.entry-points.\"{ENTRY_POINTS}\"] and reinstall it") from None
    except BaseException as e:
        raise plugin_failure(f"--method {spec}", f"importing {ep.module}", e) from e


def _attribute_missing(module: ModuleType, path: str) -> bool:
    """Whether a name on ``path`` (an entry point's ``Outer.Inner``) is not there, from ``module`` down."""
    found: Any = module
    for name in path.split("."):
        if not hasattr(found, name):
            return True
        found = getattr(found, name)
    return False


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
    except BaseException as e:  # SyntaxError, NameError, an ImportError inside it: the plug-in's own code
        raise plugin_failure(f"--method {spec}", f"importing {module_name}", e) from e
    if as_file:
        _require_imported_from(module, module_name, spec)
    _require_own_helpers(module, spec)
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"--method {spec}: cannot import (module {module_name!r} has no attribute {attr!r}{_which_file(module, module_name)})")
    return _named(_made(cls, spec, attr), spec, attr, registry)


def _made(cls: Any, spec: str, attr: str) -> Any:
    """The method ``--method`` or an entry point names (``attr``), made with no arguments: refused in
    one line if it is not a class of a method that can be made so, its constructor's failure a
    :class:`MethodFailed`."""
    if not callable(cls):
        raise ValueError(f"--method {spec}: {attr} is {_a(cls)}, not a class; name the method's class (made with no arguments)")
    if inspect.isabstract(cls):
        raise ValueError(f"--method {spec}: {attr} leaves {', '.join(sorted(cls.__abstractmethods__))} abstract; "
                         "a method defines build(ctx)")
    try:
        inspect.signature(cls).bind()
    except TypeError as e:
        raise ValueError(f"--method {spec}: {attr}() cannot be made without arguments ({e})") from None
    except ValueError:
        pass  # no signature to check (a builtin): calling it tells
    try:
        method = cls()
    except BaseException as e:
        raise plugin_failure(f"--method {spec}", f"{attr}()", e) from e
    try:
        has_build = callable(getattr(method, "build", None))  # a Method subclass's too: a setting named build hides it
    except BaseException as e:
        raise plugin_failure(f"--method {spec}", "reading its build", e) from e
    if not has_build:
        raise ValueError(f"--method {spec}: {attr} has no build(ctx) method")
    return method


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
        if file is not None and not any(_installed(folder) for folder in Path(file).resolve().parents):
            # Another lab's plug-in of the same module name (two labs' methods.py), named before this one.
            raise ValueError(f"--method {spec}: imports as module {name!r}, as {file} does, imported first (by another --method): "
                             "one name holds one module; rename one file, or give each a package folder (an __init__.py "
                             "beside it makes it lab_a.methods)")
        raise ValueError(f"--method {spec}: imports as module {name!r}, which is {file or 'a module without a file'}, "
                         "not this file (an installed module of that name comes first): rename yours")


def _require_own_helpers(module: ModuleType, spec: str) -> None:
    """Refuse a plug-in whose import of a helper beside it (``from helpers import X``, ``helpers.py``
    in its folder) got another module of that name: another lab's, imported first by another
    ``--method``, or an installed one already imported (a lab's ``utils.py``): one name holds one
    module, so its code, and its results, would be the other one's."""
    found = _module_files(sys.modules.get(module.__name__.split(".")[0]))
    if found is None or _installed(found[0]):
        return
    folder, root = found
    todo, read = sorted(root.rglob("*.py")) if root.is_dir() else [root], set()
    while todo:
        path = todo.pop()
        if path in read:
            continue
        read.add(path)
        for name in sorted(_imported_names(path)):
            beside = _beside(folder, name)
            if beside is None:
                continue
            held = _module_files(sys.modules.get(name))
            if held is not None and held[1].resolve() != beside.resolve():
                if _installed(held[0]):
                    raise ValueError(f"--method {spec}: imports {name!r} as {held[1]}, an installed module already imported, "
                                     f"not {beside} beside it: rename yours")
                raise ValueError(f"--method {spec}: imports {name!r} as {held[1]}, imported first (by another --method), not "
                                 f"{beside} beside it: one name holds one module; rename one, or give each lab a package "
                                 "folder (an __init__.py beside it makes it lab_a.helpers)")
            todo.extend(sorted(beside.rglob("*.py")) if beside.is_dir() else [beside])


def _beside(folder: Path, name: str) -> Path | None:
    """The module ``name`` as a file or package in ``folder``, if there is one."""
    for path in (folder / f"{name}.py", folder / name):
        if path.is_file() or (path / "__init__.py").is_file():
            return path
    return None


def _named(method: Any, spec: str, default: str, registry: dict[str, Callable[[], Method]]) -> Any:
    """A plug-in with its ``name`` (else ``default``), refused if the name could leave the run's
    folders or is a built-in method's, whose images and results rows it would replace."""
    try:
        name = getattr(method, "name", "") or default
    except BaseException as e:
        raise plugin_failure(f"--method {spec}", "reading its name", e) from e
    if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name):
        raise ValueError(f"--method {spec}: name {name!r} must be 1 to 64 of letters, digits, '_', '-' and '.', "
                         "starting with a letter or digit (it names the method's folders)")
    if name in registry:
        raise ValueError(f"--method {spec}: name {name!r} is the built-in method's; "
                         "a plug-in under it would replace that method's images and results")
    same = next((known for known in registry if known.casefold() == name.casefold()), None)
    if same is not None:
        raise ValueError(f"--method {spec}: name {name!r} differs from the built-in {same!r} in case only; its folders would "
                         f"be {same}'s on a case-insensitive filesystem (macOS, Windows), replacing its images and results")
    _check_shape(method, spec)
    if getattr(method, "name", None) != name:
        try:
            method.name = name
        except AttributeError:
            frozen = dataclasses.is_dataclass(method) and method.__dataclass_params__.frozen
            raise ValueError(f"--method {spec}: its name is {getattr(method, 'name', None)!r} and cannot be set "
                             f"to {name!r} ({'a frozen dataclass' if frozen else 'a read-only property'}): give it a name "
                             "of 1 to 64 letters, digits, '_', '-' and '.'") from None
    return method


def _check_shape(method: Any, spec: str) -> None:
    """Refuse, before any stage runs, a plug-in whose ``build`` or ``finetunes`` cannot be called with
    the context alone (``def build(self)``, a second required argument), or whose ``description`` is
    not text: found only after its fine-tunes trained (hours), or when results.json is written."""
    for step in ("build", "finetunes"):
        try:
            call = getattr(method, step, None)
        except BaseException as e:
            raise plugin_failure(f"--method {spec}", f"reading its {step}", e) from e
        if call is None and step == "finetunes":
            continue
        try:
            signature = inspect.signature(call)
        except (TypeError, ValueError):
            continue  # no signature to check (a builtin): calling it tells
        try:
            signature.bind(None)
        except TypeError as e:
            raise ValueError(f"--method {spec}: {type(method).__name__}.{step}{signature} cannot be called as {step}(ctx) "
                             f"({e}); the benchmark calls it with the MethodContext alone") from None
        kind = _deferred_kind(call, step)
        if kind is not None:
            raise ValueError(f"--method {spec}: {type(method).__name__}.{step} is {kind}; the benchmark calls {step}(ctx) and "
                             f"uses what it returns ({'a Generator' if step == 'build' else 'a list of FineTune'}): "
                             "make it a plain def that returns it")
    try:
        description = getattr(method, "description", "")
    except BaseException as e:
        raise plugin_failure(f"--method {spec}", "reading its description", e) from e
    if description is not None and not isinstance(description, str):
        raise ValueError(f"--method {spec}: description is {_a(description)}, not text (it is written to results.json)")


def _deferred_kind(call: Any, step: str) -> str | None:
    """What kind of function ``call`` is if calling it returns something other than its result: an
    ``async def`` (a coroutine, never awaited) or, for ``build``, a generator function (its ``yield``ed
    Generator is never taken; ``finetunes`` may yield its fine-tunes, as they are read as a list)."""
    if inspect.iscoroutinefunction(call):
        return "an async def (calling it gives a coroutine, never awaited)"
    if inspect.isasyncgenfunction(call):
        return "an async generator (async def with yield)"
    if step == "build" and inspect.isgeneratorfunction(call):
        return "a generator function (it yields; calling it gives a generator, not what it yields)"
    return None


def _a(value: Any) -> str:
    """What a value is, for an error: ``a tuple``, or an instance of a method class, naming the class."""
    if callable(getattr(value, "build", None)):
        return f"a {type(value).__name__} object (an instance: name its class, {type(value).__name__})"
    kind = type(value).__name__
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def code_sha256(method: Any) -> str | None:
    """The code that defines the method, so a plug-in edited since its images were made draws them
    anew, even when its pipeline has no weights to compare (a plain callable): see :func:`method_sources`."""
    files = method_sources(method)
    if not files:
        return None
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name} {sha256_file(path)}\n".encode())
    return digest.hexdigest()


#: The toolkit's own packages: a built-in method is keyed by its class's file, not the whole toolkit.
_TOOLKIT = ("benchmark", "implicit_concept")


def method_sources(method: Any) -> list[tuple[str, Path]]:
    """The source files a method's images depend on, by a stable name: for a built-in method, the
    file of its class; for a plug-in, every ``.py`` file of the package (or the module) defining its
    class and each base class, and of every module beside it (in the same folder, as a lab's working
    folder holds its helpers) that those files import, followed import by import. Installed
    packages (site-packages) and the toolkit itself are not followed."""
    files: dict[str, Path] = {}
    todo: list[tuple[str, Path]] = []
    plugin = not is_toolkit_class(type(method))
    for cls in type(method).__mro__:
        if cls is object or cls.__module__ == "builtins":
            continue
        top = cls.__module__.split(".")[0]
        if top in _TOOLKIT and cls is not type(method) and (not plugin or cls.__module__ == Method.__module__):
            # The interface (Method) is the toolkit's, not the method's; a built-in method a plug-in
            # subclasses (its sampler, its edit) is part of the plug-in's code.
            continue
        found = _module_files(sys.modules.get(top)) if top not in _TOOLKIT else None
        if found and not _installed(found[0]):
            todo.append(found)
            continue
        try:  # a built-in method, or an installed plug-in (an upgrade changes its file): the class's own file
            path = inspect.getsourcefile(cls)
        except TypeError:
            path = None
        if path and Path(path).is_file():
            files.setdefault(cls.__module__, Path(path))
    while todo:
        folder, root = todo.pop()
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            if "__pycache__" in path.parts:
                continue
            name = str(path.relative_to(folder))
            if name in files:
                continue
            files[name] = path
            for imported in _imported_names(path):
                if imported in _TOOLKIT:
                    continue
                beside = folder / f"{imported}.py" if (folder / f"{imported}.py").is_file() else folder / imported
                if (beside.is_file() or (beside / "__init__.py").is_file()) and not _installed(folder):
                    if str(beside.relative_to(folder)) not in files:
                        todo.append((folder, beside))
    return sorted(files.items())


def is_toolkit_class(cls: type) -> bool:
    """Whether ``cls`` is defined by the toolkit (a built-in method, the interface), not by a plug-in."""
    return cls.__module__.split(".")[0] in _TOOLKIT


def _module_files(module: Any) -> tuple[Path, Path] | None:
    """(the folder it was found in, the package folder or module file) of a top-level module."""
    paths = list(getattr(module, "__path__", None) or [])
    if paths and Path(paths[0]).is_dir():
        root = Path(paths[0])
        return root.parent, root
    file = getattr(module, "__file__", None)
    if file and Path(file).is_file():
        return Path(file).parent, Path(file)
    return None


def _installed(folder: Path) -> bool:
    """Whether ``folder`` holds the standard library or installed packages (not a lab's own code)."""
    folder = folder.resolve()
    if folder.name in ("site-packages", "dist-packages"):
        return True
    return any(folder == Path(p).resolve() for p in {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} if p)


def _imported_names(path: Path) -> set[str]:
    """The top-level names a source file imports (absolute imports only; relative ones stay in its package)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names
