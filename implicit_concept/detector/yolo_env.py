"""The one place ultralytics is imported: offline, with no integration, reading no label cache, and
writing only under the cache folder the user named.

ultralytics reads its environment once, at import: ``YOLO_OFFLINE`` stops its online checks, and a
config dir under the cache folder holding a TTF named ``Arial.ttf`` stops the font download that
dataset checks trigger even with plots off; where a cache folder was named (and can be written),
``MPLCONFIGDIR`` puts matplotlib's font cache beside it. A multi-process launch's ``WORLD_SIZE`` is
hidden from it (it would act as its own DDP worker). The cache folder is the one :func:`use_cache` (the commands'
``--cache``) or ``$IMPLICIT_CONCEPT_CACHE`` names, else the user's cache folder: a library caller
gets nothing written into its current folder.

The process is the caller's: what ultralytics changes process-wide (environment variables, warnings
filters, torch's thread count, numpy's and torch's print options) at import and in every call the
toolkit makes is put back after it (:func:`ultralytics_call`), and its console output goes to
stderr, without colour codes unless stderr is a terminal: stdout is for results.

After the import, what it would do with the network or with files it finds is switched off:

- Integrations. Every on/off switch in its settings (``sync``, ``clearml``, ``comet``, ``dvc``,
  ``mlflow``, ``raytune``, ``tensorboard``, ``wandb`` and any a later version adds) is turned off,
  its API key is cleared and ``ULTRALYTICS_API_KEY`` removed from the environment, and
  ``add_integration_callbacks`` registers nothing, so no trainer, validator or predictor gets a
  platform, analytics or logger callback whatever the settings or the environment say.
- PIL. ultralytics replaces ``PIL.Image.open`` for every caller in the process: on a file Pillow
  cannot identify, it tries to pip-install ``pi-heif`` and reports the missing package instead of
  the file. Pillow's own ``open`` is put back, so a bad image fails as itself, here and in the builders.
- Interrupts. Its ``TryExcept`` (around its plots and some checks) swallows every exception, Ctrl-C's
  ``KeyboardInterrupt`` included, so a Ctrl-C while a plot was drawn was lost and the command ran on;
  it swallows ``Exception`` only.
- Label caches. ``labels/<split>.cache`` is a pickle that ultralytics ``np.load(allow_pickle=True)``s
  before checking anything about it, so a planted one would run code. They are neither read (every
  dataset is rescanned, a second or so for ours) nor written.
- Plots. Its validator draws a batch's grids (``val_batchN_labels.jpg``, ``val_batchN_pred.jpg``)
  each in a thread of its own, both scaling the batch's one image array to 0-255 in place (numpy
  lets go of the GIL in the multiply): a grid drawn while the other was half-way had black tiles, so
  a run's test folder and its rerun's differed. They are drawn one after the other in the calling thread.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from implicit_concept.files import atomic_write_bytes
from implicit_concept.progress import LOG_INTERVAL_S, disabled_by_environment

CACHE_ENV = "IMPLICIT_CONCEPT_CACHE"
API_KEY_ENV = "ULTRALYTICS_API_KEY"

_cache: Path | None = None
_prepared = False


class YoloEnvError(RuntimeError):
    """ultralytics was imported before it was prepared, so it may go online."""


class CacheFolderError(OSError):
    """The cache folder cannot be written. A class of its own: ``OSError(errno, ...)`` would become
    a ``NotADirectoryError`` or ``FileExistsError``, which callers read as "a file where a folder
    goes" and describe anew, losing the advice to name another folder."""


def use_cache(folder: str | Path) -> None:
    """Put ultralytics' settings and font, and matplotlib's caches, under ``folder``.

    Call it before anything imports matplotlib or ultralytics (the commands do, first thing): both
    read their folders once per process, so a later call changes nothing for them.
    """
    global _cache
    _cache = Path(folder).expanduser().resolve()
    _matplotlib_under(_cache)


def _matplotlib_under(cache: Path) -> None:
    """``MPLCONFIGDIR`` under ``cache``, where it can be written: in a read-only cache (a share, a
    finished one handed over) matplotlib kept its own folder's cache, warning in two lines that it
    made a temporary one, at every command."""
    folder = cache / "matplotlib"
    nearest = next(p for p in (folder, *folder.parents) if p.exists())
    if nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK):
        os.environ.setdefault("MPLCONFIGDIR", str(folder))


def cache_dir() -> Path:
    """The folder :func:`use_cache` named, else ``$IMPLICIT_CONCEPT_CACHE``, else the user's cache
    folder (``$XDG_CACHE_HOME/implicit-concept``, by default ``~/.cache/implicit-concept``)."""
    if _cache is not None:
        return _cache
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "implicit-concept").expanduser().resolve()


def _cache_named() -> bool:
    return _cache is not None or bool(os.environ.get(CACHE_ENV))


@contextmanager
def ultralytics_call(threads: int | None = None) -> Iterator[None]:
    """Run ultralytics code whose process-wide changes are undone after it: ``os.environ``, the
    warnings filters, torch's thread count and numpy's and torch's print options are as they were
    when the block ends. ``threads``: torch's thread count within the block (None: as it is)."""
    import numpy as np
    import torch

    environ = dict(os.environ)
    torch_threads = torch.get_num_threads()
    numpy_print = np.get_printoptions()
    torch_print = dict(vars(torch._tensor_str.PRINT_OPTS))
    try:
        with warnings.catch_warnings():
            if threads is not None:
                torch.set_num_threads(threads)
            yield
    finally:
        torch.set_num_threads(torch_threads)
        np.set_printoptions(**numpy_print)
        torch.set_printoptions(**{k: torch_print[k] for k in ("precision", "threshold", "edgeitems", "linewidth", "sci_mode")})
        for name in [name for name in os.environ if name not in environ]:
            del os.environ[name]
        for name, value in environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


@contextmanager
def info_hidden() -> Iterator[None]:
    """ultralytics' informational lines off within the block, its warnings shown: building the
    network the toolkit names logs ``Overriding model.yaml nc=80 with nc=3`` and a layer table at
    every build, and its first import a settings notice pointing at ``yolo settings`` (the toolkit
    sets them): nothing a user acts on. A filter on its logger, taken off after the block, so the
    level a caller gave it is never touched (its import sets the level anew)."""
    logger = logging.getLogger("ultralytics")
    hidden = _BelowWarning()
    logger.addFilter(hidden)
    try:
        yield
    finally:
        logger.removeFilter(hidden)


class _BelowWarning(logging.Filter):
    """Passes warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def verbosity_from_environment() -> None:
    """ultralytics' verbosity as ``YOLO_VERBOSE`` says now, if it is imported. It reads the variable
    once, at import, into its bars' switch (``VERBOSE``) and its logger's and handler's levels: imported
    inside ``--quiet`` (which sets it for the spawned ``--jobs`` workers), it stayed silent for the
    rest of the process (a notebook's, or a test's, later detector training printed no epoch)."""
    utils = sys.modules.get("ultralytics.utils")
    if utils is None:
        return
    utils.VERBOSE = utils.env_bool("YOLO_VERBOSE", True)
    level = logging.INFO if utils.VERBOSE else logging.ERROR
    logger = logging.getLogger("ultralytics")
    logger.setLevel(level)
    for handler in logger.handlers:
        if handler.get_name() == "ultralytics.utils.set_logging":
            handler.setLevel(level)


def predict_threads(device: str) -> int | None:
    """The torch thread count ultralytics predicts on ``device`` at: the one its ``select_device``
    sets on a CPU when a predictor is set up (None on a GPU, where it sets none)."""
    import torch

    if str(device).lower().startswith(("cpu", "mps")) or not torch.cuda.is_available():
        return import_ultralytics("ultralytics.utils").NUM_THREADS
    return None


def import_ultralytics(name: str = "ultralytics") -> ModuleType:
    """ultralytics, or one of its modules by name, prepared as above; safe to call any number of times."""
    global _prepared
    if name != "ultralytics" and not name.startswith("ultralytics."):
        raise ValueError(f"{name!r} is not an ultralytics module")
    if not _prepared:
        with ultralytics_call():
            if "ultralytics" in sys.modules:
                _check_already_imported()
            else:
                with info_hidden():
                    _import_offline(cache_dir())
            _log_to_stderr()
            _bars_to_stderr()
            _switch_off_integrations()
            _restore_pil_open()
            _let_interrupts_through()
            _refuse_label_caches()
            _plot_in_the_calling_thread()
        _prepared = True
    os.environ.pop(API_KEY_ENV, None)  # read by ultralytics at each training start, not only at import
    return importlib.import_module(name)


def _font_source() -> Path:
    """A TTF that is always installed: matplotlib (a pinned dependency) ships DejaVu Sans. Found
    without importing matplotlib, which would settle its config folder for the whole process."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("matplotlib is not installed")
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"


def _install_font(config_dir: Path) -> None:
    target = config_dir / "Ultralytics" / "Arial.ttf"
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, Path(_font_source()).read_bytes())


def _import_offline(cache: Path) -> None:
    """Within :func:`ultralytics_call`, which puts the environment set here back afterwards."""
    config_dir = cache / "ultralytics"
    if _cache_named():
        _matplotlib_under(cache)
    try:
        _install_font(config_dir)
    except OSError as e:
        raise CacheFolderError(
            e.errno,
            f"the cache folder {cache} cannot be written ({e.strerror or e}); name a writable one with "
            f"--cache, implicit_concept.detector.yolo_env.use_cache() or ${CACHE_ENV}",
            e.filename,
        ) from e
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    # Our detector always runs in one process. Under torchrun or accelerate launch, ultralytics
    # would read WORLD_SIZE and RANK at import and act as a worker of a DDP run of its own.
    os.environ.pop("WORLD_SIZE", None)
    # Its logger's handler takes sys.stdout at import, and the settings file it creates says so there.
    with redirect_stdout(_STDERR):
        import ultralytics  # noqa: F401
        import ultralytics.utils  # noqa: F401  (where the import-time reading happens)


class _Stderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time, without ANSI colour codes
    unless it is a terminal: where ultralytics' console output goes."""

    _ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def write(self, text: str) -> int:
        stream = sys.stderr
        isatty = getattr(stream, "isatty", None)
        if not (isatty and isatty()):
            text = self._ansi.sub("", text)
        return stream.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())

    @property
    def encoding(self) -> str:
        return getattr(sys.stderr, "encoding", None) or "utf-8"


_STDERR = _Stderr()


def _log_to_stderr() -> None:
    """ultralytics' logger writes to stderr (a handler on stdout is moved, whenever it was made)."""
    import logging

    for handler in logging.getLogger("ultralytics").handlers:
        if isinstance(handler, logging.StreamHandler) and (
            handler.get_name() == "ultralytics.utils.set_logging" or handler.stream in (sys.stdout, sys.__stdout__)
        ):
            handler.setStream(_STDERR)


def _check_already_imported() -> None:
    from ultralytics.utils import ONLINE, USER_CONFIG_DIR

    if ONLINE or not (USER_CONFIG_DIR / "Arial.ttf").is_file():
        raise YoloEnvError(
            "ultralytics was imported before implicit_concept.detector.yolo_env.import_ultralytics() prepared it "
            f"(online checks {'on' if ONLINE else 'off'}, no font in {USER_CONFIG_DIR}); "
            "import it through implicit_concept.detector.yolo_env instead"
        )


def _bars_to_stderr() -> None:
    """ultralytics' own progress bars (training, validation) default to stderr, not stdout, and keep
    the toolkit's rules (``progress.py``): off a terminal redrawn once a minute, not at each step, and
    off under ``TQDM_DISABLE``, which ultralytics does not read."""
    bar = importlib.import_module("ultralytics.utils.tqdm").TQDM
    original = bar.__init__
    if getattr(original, "_to_stderr", False):
        return

    parameters = inspect.signature(original)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # Its arguments by name, however the caller gave them (file, mininterval, disable by position too).
        call = parameters.bind(self, *args, **kwargs)
        given = call.arguments
        if given.get("file") is None:
            given["file"] = _STDERR
        isatty = getattr(given["file"], "isatty", None)
        if "mininterval" not in given and not (isatty and isatty()):
            given["mininterval"] = LOG_INTERVAL_S
        if disabled_by_environment():
            given["disable"] = True
        original(*call.args, **call.kwargs)

    __init__._to_stderr = True  # type: ignore[attr-defined]
    bar.__init__ = __init__


def _switch_off_integrations() -> None:
    from ultralytics.utils import SETTINGS

    switches = {key: False for key, default in SETTINGS.defaults.items() if isinstance(default, bool)}
    if any(SETTINGS.get(key) is not False for key in switches) or SETTINGS.get("api_key"):
        SETTINGS.update({**switches, "api_key": ""})
    for module in ("ultralytics.utils.callbacks", "ultralytics.utils.callbacks.base"):
        importlib.import_module(module).add_integration_callbacks = _register_no_integration


def _register_no_integration(instance: Any) -> None:
    """ultralytics' add_integration_callbacks, registering none: no platform, analytics or logger."""


def _restore_pil_open() -> None:
    from PIL import Image

    patches = importlib.import_module("ultralytics.utils.patches")
    replaced = getattr(patches, "image_open", None)
    if replaced is not None and Image.open is replaced:
        Image.open = patches._image_open


def _let_interrupts_through() -> None:
    try_except = importlib.import_module("ultralytics.utils").TryExcept
    original = try_except.__exit__
    if getattr(original, "_lets_interrupts_through", False):
        return

    def __exit__(self: Any, exc_type: Any, value: Any, traceback: Any) -> bool:
        if exc_type is not None and not issubclass(exc_type, Exception):
            return False  # KeyboardInterrupt, SystemExit: raised on
        return original(self, exc_type, value, traceback)

    __exit__._lets_interrupts_through = True  # type: ignore[attr-defined]
    try_except.__exit__ = __exit__


def _refuse_label_caches() -> None:
    for module in ("ultralytics.data.utils", "ultralytics.data.dataset"):
        loaded = importlib.import_module(module)
        loaded.load_dataset_cache_file = _never_load_label_cache
        loaded.save_dataset_cache_file = _never_save_label_cache


def _plot_in_the_calling_thread() -> None:
    validator = importlib.import_module("ultralytics.models.yolo.detect.val")
    if not isinstance(validator.plot_images, functools.partial):
        validator.plot_images = functools.partial(validator.plot_images, threaded=False)


def _never_load_label_cache(path: Path) -> dict:
    """ultralytics catches this and rescans the labels, as for a missing cache."""
    raise FileNotFoundError(f"{path}: label caches are pickles and are never read")


def _never_save_label_cache(prefix: str, path: Path, x: dict, version: str) -> None:
    """Nothing is written that nothing may read; the version is still stamped, as ultralytics expects."""
    x["version"] = version
