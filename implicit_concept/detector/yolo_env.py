"""The one place that makes ultralytics run offline; every other module imports it through here.

ultralytics reads its environment once, at import: ``YOLO_OFFLINE`` stops its online checks, and a
config dir of our own holding a TTF font named ``Arial.ttf`` stops the font download that dataset
checks trigger even with plots off. A multi-process launch's ``WORLD_SIZE`` is hidden from it (it
would act as its own DDP worker). Nothing else about ultralytics' global settings is changed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

from implicit_concept.files import atomic_write_bytes

CACHE_ENV = "IMPLICIT_CONCEPT_CACHE"


class YoloEnvError(RuntimeError):
    """ultralytics was imported before it was prepared, so it may go online."""


def cache_dir() -> Path:
    """``$IMPLICIT_CONCEPT_CACHE``, else ``$XDG_CACHE_HOME/implicit-concept`` (``~/.cache/...``)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "implicit-concept"


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


def import_ultralytics() -> ModuleType:
    """Import ultralytics offline and return it; safe to call any number of times."""
    if "ultralytics" in sys.modules:
        return _check_already_imported(sys.modules["ultralytics"])
    config_dir = cache_dir() / "ultralytics"
    _install_font(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    # Our detector always runs in one process. Under torchrun or accelerate launch, ultralytics
    # would read WORLD_SIZE and RANK at import and act as a worker of a DDP run of its own.
    world_size = os.environ.pop("WORLD_SIZE", None)
    try:
        import ultralytics as module
        import ultralytics.utils  # noqa: F401  (where the import-time reading happens)
    finally:
        if world_size is not None:
            os.environ["WORLD_SIZE"] = world_size
    return module


def _check_already_imported(module: ModuleType) -> ModuleType:
    from ultralytics.utils import ONLINE, USER_CONFIG_DIR

    if ONLINE or not (USER_CONFIG_DIR / "Arial.ttf").is_file():
        raise YoloEnvError(
            "ultralytics was imported before implicit_concept.detector.yolo_env.import_ultralytics() prepared it "
            f"(online checks {'on' if ONLINE else 'off'}, no font in {USER_CONFIG_DIR}); "
            "import it through implicit_concept.detector.yolo_env instead"
        )
    return module
