"""The one place ultralytics is imported: offline, with no integration, reading no label cache, and
writing only under the cache folder the user named.

ultralytics reads its environment once, at import: ``YOLO_OFFLINE`` stops its online checks, and a
config dir under the cache folder holding a TTF named ``Arial.ttf`` stops the font download that
dataset checks trigger even with plots off; ``MPLCONFIGDIR`` puts matplotlib's font cache beside it.
A multi-process launch's ``WORLD_SIZE`` is hidden from it (it would act as its own DDP worker).

After the import, what it would do with the network or with files it finds is switched off:

- Integrations. Every on/off switch in its settings (``sync``, ``clearml``, ``comet``, ``dvc``,
  ``mlflow``, ``raytune``, ``tensorboard``, ``wandb`` and any a later version adds) is turned off,
  its API key is cleared and ``ULTRALYTICS_API_KEY`` removed from the environment, and
  ``add_integration_callbacks`` registers nothing, so no trainer, validator or predictor gets a
  platform, analytics or logger callback whatever the settings or the environment say.
- PIL. ultralytics replaces ``PIL.Image.open`` for every caller in the process: on a file Pillow
  cannot identify, it tries to pip-install ``pi-heif`` and reports the missing package instead of
  the file. Pillow's own ``open`` is put back, so a bad image fails as itself, here and in the builders.
- Label caches. ``labels/<split>.cache`` is a pickle that ultralytics ``np.load(allow_pickle=True)``s
  before checking anything about it, so a planted one would run code. They are neither read (every
  dataset is rescanned, a second or so for ours) nor written.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from implicit_concept.files import atomic_write_bytes

CACHE_ENV = "IMPLICIT_CONCEPT_CACHE"
#: The benchmark's default ``--cache``: where ultralytics' files go when no folder was named.
DEFAULT_CACHE = Path(".cache") / "implicit-concept"
API_KEY_ENV = "ULTRALYTICS_API_KEY"

_cache: Path | None = None
_prepared = False


class YoloEnvError(RuntimeError):
    """ultralytics was imported before it was prepared, so it may go online."""


def use_cache(folder: str | Path) -> None:
    """Put ultralytics' settings and font, and matplotlib's caches, under ``folder``.

    Call it before anything imports matplotlib or ultralytics (the commands do, first thing): both
    read their folders once per process, so a later call changes nothing for them.
    """
    global _cache
    _cache = Path(folder).expanduser().resolve()
    os.environ.setdefault("MPLCONFIGDIR", str(_cache / "matplotlib"))


def cache_dir() -> Path:
    """The folder :func:`use_cache` named, else ``$IMPLICIT_CONCEPT_CACHE``, else ``.cache/implicit-concept``."""
    if _cache is not None:
        return _cache
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def import_ultralytics(name: str = "ultralytics") -> ModuleType:
    """ultralytics, or one of its modules by name, prepared as above; safe to call any number of times."""
    global _prepared
    if name != "ultralytics" and not name.startswith("ultralytics."):
        raise ValueError(f"{name!r} is not an ultralytics module")
    if not _prepared:
        if "ultralytics" in sys.modules:
            _check_already_imported()
        else:
            _import_offline(cache_dir())
        _switch_off_integrations()
        _restore_pil_open()
        _refuse_label_caches()
        _prepared = True
    os.environ.pop(API_KEY_ENV, None)  # read by ultralytics at each training start, not only at import
    return importlib.import_module(name)


def _font_source() -> Path:
    """A TTF that is always installed: matplotlib (a pinned dependency) ships DejaVu Sans."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _install_font(config_dir: Path) -> None:
    target = config_dir / "Ultralytics" / "Arial.ttf"
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, Path(_font_source()).read_bytes())


def _import_offline(cache: Path) -> None:
    config_dir = cache / "ultralytics"
    os.environ.setdefault("MPLCONFIGDIR", str(cache / "matplotlib"))
    _install_font(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    # Our detector always runs in one process. Under torchrun or accelerate launch, ultralytics
    # would read WORLD_SIZE and RANK at import and act as a worker of a DDP run of its own.
    world_size = os.environ.pop("WORLD_SIZE", None)
    try:
        import ultralytics  # noqa: F401
        import ultralytics.utils  # noqa: F401  (where the import-time reading happens)
    finally:
        if world_size is not None:
            os.environ["WORLD_SIZE"] = world_size


def _check_already_imported() -> None:
    from ultralytics.utils import ONLINE, USER_CONFIG_DIR

    if ONLINE or not (USER_CONFIG_DIR / "Arial.ttf").is_file():
        raise YoloEnvError(
            "ultralytics was imported before implicit_concept.detector.yolo_env.import_ultralytics() prepared it "
            f"(online checks {'on' if ONLINE else 'off'}, no font in {USER_CONFIG_DIR}); "
            "import it through implicit_concept.detector.yolo_env instead"
        )


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


def _refuse_label_caches() -> None:
    for module in ("ultralytics.data.utils", "ultralytics.data.dataset"):
        loaded = importlib.import_module(module)
        loaded.load_dataset_cache_file = _never_load_label_cache
        loaded.save_dataset_cache_file = _never_save_label_cache


def _never_load_label_cache(path: Path) -> dict:
    """ultralytics catches this and rescans the labels, as for a missing cache."""
    raise FileNotFoundError(f"{path}: label caches are pickles and are never read")


def _never_save_label_cache(prefix: str, path: Path, x: dict, version: str) -> None:
    """Nothing is written that nothing may read; the version is still stamped, as ultralytics expects."""
    x["version"] = version
