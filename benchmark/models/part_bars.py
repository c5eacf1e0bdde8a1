"""The bars transformers and diffusers draw inside one part's load or save (``Loading weights:
20/20``, ``Writing model shards: 1/1``): per-call noise, one or two per part, drawn at every redraw
off a terminal and whatever ``TQDM_DISABLE`` says, so dropped while the toolkit loads or saves a
part. The libraries' own settings (transformers' tqdm hook, diffusers' bar switch) are put back
after the block: a lab that imports the toolkit keeps its bars in its own calls."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


def _no_bar(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """transformers' tqdm hook: the stand-in it uses when its bars are off, whatever it would draw."""
    from transformers.utils.logging import EmptyTqdm

    return EmptyTqdm(*args, **kwargs)


@contextmanager
def part_bars_dropped() -> Iterator[None]:
    """transformers' and diffusers' bars off within the block, as they were after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    previous_hook = transformers_logging.set_tqdm_hook(_no_bar)
    diffusers_bars = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(previous_hook)
        if diffusers_bars:
            diffusers_logging.enable_progress_bar()
