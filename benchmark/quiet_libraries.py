"""``--quiet``: the libraries' own output off for a command's length, put back after."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
    "YOLO_VERBOSE": "False", "PYTHONWARNINGS": "ignore",
}


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """``--quiet``: the libraries' own loading bars, logged and Python warnings (diffusers'
    deprecations) and summaries off too, not only ours, for the command's length. Set here, in the
    composition root, never by the library modules, and put back after, so a caller of :func:`main`
    (a test, a notebook) keeps its own settings."""
    import logging
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from implicit_concept.detector.yolo_env import verbosity_from_environment

    libraries = (diffusers_logging, transformers_logging)
    before = [(library.get_verbosity(), library.is_progress_bar_enabled()) for library in libraries]
    environment = {name: os.environ.get(name) for name in QUIET_ENVIRONMENT}
    ultralytics = logging.getLogger("ultralytics")
    ultralytics_level, ultralytics_imported = ultralytics.level, "ultralytics.utils" in sys.modules
    for library in libraries:
        library.set_verbosity_error()
        library.disable_progress_bar()
    # --jobs workers are spawned: they start from the environment, which the libraries read at import
    # (ultralytics resets its logger's level from YOLO_VERBOSE then).
    os.environ.update(QUIET_ENVIRONMENT)
    ultralytics.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for library, (verbosity, bars) in zip(libraries, before):
            library.set_verbosity(verbosity)
            if bars:
                library.enable_progress_bar()
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        ultralytics.setLevel(ultralytics_level)
        if not ultralytics_imported:  # imported during the command: as the caller's environment says, not --quiet's
            verbosity_from_environment()
