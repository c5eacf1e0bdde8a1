"""Every progress bar of the project, made in one place so that all of them behave alike off a
terminal: a log file or a CI job gets a bar's first and last lines and one every ``LOG_INTERVAL_S``,
not ten carriage-return redraws a second for hours (nor one per ``set_postfix``, which tqdm redraws
at once whatever its interval: here a postfix shows at the bar's next redraw); and ``TQDM_DISABLE``
(tqdm's own convention) turns them off even where the caller asked for one (tqdm lets an explicit ``disable=`` win over it)."""
from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm as terminal_tqdm
from tqdm.auto import tqdm
from tqdm.autonotebook import tqdm as chosen_tqdm

#: Seconds between a bar's redraws when it writes to a file or a pipe rather than a terminal.
LOG_INTERVAL_S = 60.0

_FALSE = ("", "0", "false", "no", "off")


def disabled_by_environment() -> bool:
    """Whether ``TQDM_DISABLE`` is set to a true value (``1``, ``true``, ...)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE


def progress_bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, shown when ``progress`` and ``TQDM_DISABLE`` allow, redrawn
    every ``LOG_INTERVAL_S`` seconds only when its stream (stderr by default) is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if chosen_tqdm is terminal_tqdm and not (isatty and isatty()):  # a notebook's widget redraws as it likes
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
    return _Bar(iterable, disable=not progress or disabled_by_environment(), **kwargs)


class _Bar(tqdm):
    """A bar whose postfix (a loss, a rate) waits for the next redraw the interval allows."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh, **kwargs)
