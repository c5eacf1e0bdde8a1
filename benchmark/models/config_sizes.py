"""A pipeline folder's configs sized before anything is built from them.

A ``config.json`` of a few bytes names a part's widths, depths and table sizes, and the libraries act
on it before they read a weight: diffusers allocates a UNet from its config (``block_out_channels``
of 10**6 asked for 16 TB), a scheduler fills ``num_train_timesteps``-long tables, a tokenizer pads
every prompt to its ``model_max_length`` (10**12 aborted the process in the tokenizers library).
Each is refused here, one line naming the file: a weighted part built from its config on torch's
meta device (nothing allocated) and stopped once it makes more than its weights files hold
(:func:`check_part_size`), a schedule longer than any model trains on (:func:`check_schedule_size`),
a prompt length the text encoder has no positions for (:func:`check_prompt_length`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from implicit_concept.json_records import read_json_object

#: The longest noise schedule a scheduler config may name: the bound a track's own base takes.
MAX_TRAIN_TIMESTEPS = 100_000
#: What a part may make beyond its weights: buffers no weights file holds (position ids, a VAE's
#: fixed patches), and a slack for the tensors a constructor makes and drops.
SPARE_VALUES, SPARE_TENSORS = 1 << 24, 1024
_FACTORIES = frozenset((torch.empty, torch.zeros, torch.ones, torch.full, torch.arange, torch.linspace, torch.eye,
                        torch.rand, torch.randn, torch.randint, torch.tensor, torch.empty_strided))


class _OverBudget(Exception):
    pass


class _Budget(TorchFunctionMode):
    """Counts the tensors and values torch's factories make inside it, raising past the budget."""

    def __init__(self, values: int, tensors: int) -> None:
        super().__init__()
        self.values, self.tensors = values, tensors

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _FACTORIES and isinstance(out, torch.Tensor):
            self.values -= out.numel()
            self.tensors -= 1
            if self.values < 0 or self.tensors < 0:
                raise _OverBudget
        return out


def weights_size(files: list[Path]) -> tuple[int, int]:
    """``(values, tensors)`` the safetensors ``files`` hold, from their headers alone."""
    values = tensors = 0
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                values += int(torch.Size(shape).numel())
                tensors += 1
    return values, tensors


def check_part_size(folder: Path, cls: type, files: list[Path]) -> None:
    """Refuse, naming ``folder``'s ``config.json``, a part whose config makes it larger than its
    weights ``files`` (safetensors, already checked readable) allow: it is built from the config on the
    meta device, and stopped once it makes twice their values or tensors (plus :data:`SPARE_VALUES`,
    :data:`SPARE_TENSORS`), so a config naming a huge width or depth costs neither memory nor time.
    A config the class cannot be built from (a string where a width goes) is refused naming it too."""
    config_file = folder / "config.json"
    values, tensors = weights_size(files)
    try:
        with torch.device("meta"), _Budget(2 * values + SPARE_VALUES, 2 * tensors + SPARE_TENSORS):
            if hasattr(cls, "config_class"):  # transformers
                cls(cls.config_class.from_pretrained(str(folder), local_files_only=True))
            else:
                cls.from_config(cls.load_config(str(folder)))
    except _OverBudget:
        raise ValueError(f"{config_file}: the {cls.__name__} it describes is larger than its weights files hold "
                         f"({values:,} values in {tensors:,} tensors); not built") from None
    except (TypeError, ValueError, KeyError, AttributeError, OSError, RuntimeError, OverflowError, RecursionError,
            json.JSONDecodeError) as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise ValueError(f"{config_file}: cannot build a {cls.__name__} from it ({type(e).__name__}: {first})") from None


def check_schedule_size(config: dict[str, Any], file: Path) -> None:
    """Refuse a scheduler config (read from ``file``) whose ``num_train_timesteps`` is not an integer
    in [1, :data:`MAX_TRAIN_TIMESTEPS`]: every scheduler fills tables that long when built."""
    steps = config.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise ValueError(f"{file}: num_train_timesteps = {steps!r}; expected an integer in [1, {MAX_TRAIN_TIMESTEPS}]")


def check_prompt_length(tokenizer: Path, positions: Any, text_file: Path) -> None:
    """Refuse a tokenizer folder whose ``tokenizer_config.json`` pads prompts to more tokens than the
    text encoder has positions (``positions``, read from ``text_file``): the pipeline pads every prompt
    to ``model_max_length``, which transformers takes as 10**30 where the file names none."""
    config_file = tokenizer / "tokenizer_config.json"
    if not tokenizer.is_dir():
        said = "not a folder" if os.path.lexists(tokenizer) else "missing"
        raise FileNotFoundError(f"{tokenizer}: {said} (the pipeline's tokenizer, which reads every prompt)")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: missing (it names model_max_length, the length every prompt is padded to; "
                                f"the text encoder has {positions!r} positions)")
    length = read_json_object(config_file).get("model_max_length")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= positions:
        raise ValueError(f"{config_file}: model_max_length = {length!r}; the pipeline pads every prompt to it, and the "
                         f"text encoder has {positions!r} positions ({text_file}): expected an integer in [1, {positions!r}]")
