"""Every removal method the benchmark carries, by name."""
from __future__ import annotations

from typing import Callable

from benchmark.methods.control import BaseModel
from benchmark.methods.esd import ESD
from benchmark.methods.finetuned import FINETUNED
from benchmark.methods.forget_me_not import ForgetMeNot
from benchmark.methods.interface import Method, NotImplementedMethod
from benchmark.methods.negative_prompt import NegativePrompt
from benchmark.methods.plugins import load_method
from benchmark.methods.sld import SafeLatentDiffusion

REGISTRY: dict[str, Callable[[], Method]] = {
    **{name: (lambda m=m: m) for name, m in FINETUNED.items()},
    "base": BaseModel,
    "np": NegativePrompt,
    "esd": ESD,
    "sld": SafeLatentDiffusion,
    "fmn": ForgetMeNot,
}


def get_method(spec: str) -> Method:
    return load_method(spec, REGISTRY)


__all__ = ["REGISTRY", "get_method", "Method", "NotImplementedMethod"]
