"""Torch's process-wide settings (threads, default dtype and device, grad mode, the numerics switches): set for a block, then put back.

Training arithmetic on a CPU depends on the thread count (a reduction is split by thread), so what a
track trains, edits or samples runs under the count the track names wherever it runs: in the main
process or a worker, on 2 cores or 64. And code the benchmark does not own (a plug-in's build or
pipeline) may change any of these settings; they are put back after it, so the stages that follow
(scoring, the next method) run as they would have. The numerics switches are those a lab's script
flips for speed or reproducibility (``torch.set_float32_matmul_precision("high")``, TF32, cuDNN
autotuning, the attention kernels, deterministic algorithms, anomaly mode, flushing denormals): each changes what a
training step computes (on a CPU, ``"medium"`` makes oneDNN's matmuls bfloat16), so a fine-tune
every method shares would otherwise depend on which plug-in asked for it first.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch

T = TypeVar("T")

#: The most torch threads a config may name: more than any machine's cores, and far below what
#: crashes torch (100 000 threads segfaulted the first matrix product, with no message).
MAX_THREADS = 1024


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block under ``threads`` intra-op threads (None: as the process is)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


#: The ``torch.backends`` switches that change numerics, by their current names (the ``fp32_precision``
#: settings ``set_float32_matmul_precision`` and the ``allow_tf32`` flags write through to; read by
#: these names alone, since torch refuses to read the old ones once the new ones were set). A name a
#: torch version lacks is passed over.
BACKEND_SWITCHES = (
    "fp32_precision", "cuda.matmul.fp32_precision", "cudnn.fp32_precision", "cudnn.conv.fp32_precision",
    "cudnn.rnn.fp32_precision", "mkldnn.fp32_precision", "mkldnn.matmul.fp32_precision", "mkldnn.conv.fp32_precision",
    "mkldnn.rnn.fp32_precision", "cuda.matmul.allow_fp16_reduced_precision_reduction",
    "cuda.matmul.allow_bf16_reduced_precision_reduction", "cuda.matmul.allow_fp16_accumulation",
    "cudnn.enabled", "cudnn.benchmark", "cudnn.deterministic", "mkldnn.enabled", "mkldnn.deterministic",
)

#: The switches ``torch.backends.cuda`` reads and sets through functions (which attention kernels
#: ``scaled_dot_product_attention`` may pick: each sums in its own order), by (getter, setter).
SDP_SWITCHES = {
    "cuda.flash_sdp": ("flash_sdp_enabled", "enable_flash_sdp"),
    "cuda.mem_efficient_sdp": ("mem_efficient_sdp_enabled", "enable_mem_efficient_sdp"),
    "cuda.math_sdp": ("math_sdp_enabled", "enable_math_sdp"),
    "cuda.cudnn_sdp": ("cudnn_sdp_enabled", "enable_cudnn_sdp"),
    "cuda.fp16_bf16_reduction_math_sdp": ("fp16_bf16_reduction_math_sdp_allowed", "allow_fp16_bf16_reduction_math_sdp"),
}


def numerics() -> dict[str, Any]:
    """Torch's process-wide numerics switches as they are now (:data:`BACKEND_SWITCHES`,
    :data:`SDP_SWITCHES`, deterministic algorithms, anomaly mode, flushing denormals)."""
    state: dict[str, Any] = {}
    for name in BACKEND_SWITCHES:
        holder, attr = _backend(name)
        if holder is not None:
            state[name] = getattr(holder, attr)
    for name, (getter, _) in SDP_SWITCHES.items():
        if hasattr(torch.backends.cuda, getter):
            state[name] = getattr(torch.backends.cuda, getter)()
    state["deterministic_algorithms"] = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    state["fill_uninitialized_memory"] = torch.utils.deterministic.fill_uninitialized_memory
    state["anomaly"] = (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled())
    state["flush_denormal"] = _flushes_denormals()
    return state


def set_numerics(state: dict[str, Any]) -> None:
    """Put back what :func:`numerics` read, writing only the switches that differ (a process whose
    code never touched them is never written to)."""
    now = numerics()
    for name, value in state.items():
        if now.get(name) == value:
            continue
        if name == "deterministic_algorithms":
            torch.use_deterministic_algorithms(value[0], warn_only=value[1])
        elif name == "fill_uninitialized_memory":
            torch.utils.deterministic.fill_uninitialized_memory = value
        elif name == "anomaly":
            torch.autograd.set_detect_anomaly(*value)
        elif name == "flush_denormal":
            torch.set_flush_denormal(value)
        elif name in SDP_SWITCHES:
            getattr(torch.backends.cuda, SDP_SWITCHES[name][1])(value)
        else:
            holder, attr = _backend(name)
            setattr(holder, attr, value)


def _backend(name: str) -> tuple[Any, str]:
    """(the ``torch.backends`` object holding switch ``name``, its attribute), or (None, attribute)."""
    *path, attr = name.split(".")
    holder: Any = torch.backends
    for part in path:
        holder = getattr(holder, part, None)
    return (holder if holder is not None and hasattr(holder, attr) else None), attr


def _flushes_denormals() -> bool:
    """Whether the CPU flushes denormal floats to zero (``torch.set_flush_denormal`` has no getter)."""
    return torch.tensor([1e-39], dtype=torch.float32, device="cpu").mul(1.0).item() == 0.0


@contextmanager
def kept_torch_settings() -> Iterator[None]:
    """Whatever the block does to the thread count, the default dtype and device, grad mode or the
    numerics switches is undone after it."""
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    device, switches = torch.get_default_device(), numerics()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        _set_default_device(device)
        set_numerics(switches)


def _set_default_device(device: torch.device) -> None:
    """``device`` as torch's default; the CPU as torch has it unset, not as a device context every op passes through."""
    if torch.get_default_device() != device:
        torch.set_default_device(None if device.type == "cpu" else device)


@contextmanager
def toolkit_torch_settings(switches: dict[str, Any] | None = None) -> Iterator[None]:
    """Run the block under the toolkit's own settings (grad mode on, float32 default dtype, tensors
    made on the CPU unless placed, and ``switches``, the numerics switches as :func:`numerics` read
    them outside any plug-in's code), whatever a plug-in set around it, and put the caller's back
    after: the fine-tuning service a plug-in's ``build`` calls trains the same model from a
    ``@torch.no_grad()`` build, a float64 one, one that set ``torch.set_default_device("cuda")`` or
    ``torch.set_float32_matmul_precision("medium")``."""
    with kept_torch_settings():
        torch.set_grad_enabled(True)
        torch.set_default_dtype(torch.float32)
        _set_default_device(torch.device("cpu"))
        if switches is not None:
            set_numerics(switches)
        yield


def under_toolkit_settings(service: Callable[..., T]) -> Callable[..., T]:
    """``service`` (a fine-tune, a pipeline load) run under :func:`toolkit_torch_settings`, with the
    numerics switches as they are now (when the service is made, before a plug-in's code runs)."""
    switches = numerics()

    @functools.wraps(service)
    def run(*args: Any, **kwargs: Any) -> T:
        with toolkit_torch_settings(switches):
            return service(*args, **kwargs)

    return run
