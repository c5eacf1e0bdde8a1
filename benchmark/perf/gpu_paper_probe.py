"""What the paper track costs on one GPU, measured unattended in a few minutes; prints one JSON object.

    python -m benchmark.perf.gpu_paper_probe [--budget 360] [--json probe.json]

SD v1.5's architecture with random weights (nothing to download; speed and memory do not depend on
the weights) is fine-tuned by the benchmark's own loop on a small icd-v1 at 512 px, plainly and with
Geom-Erasing, at batch 1, 4 and 8 with the paper track's memory options (fp16, gradient
checkpointing, SDPA, cached latents): median step time and peak GPU memory of each. Then sampling
throughput: 512 px, the paper track's sampler settings, Geom-Erasing's negative prompt, fp16.

Each measurement runs in its own process (its peak is its own; a batch that does not fit is recorded
as an error and the probe goes on) in the order a short lease most needs them: batch 1, sampling,
batch 4, batch 8. Once the budget is spent, what remains is reported as skipped, so the probe ends in
about ``budget`` seconds plus the setup (about a minute) whatever the GPU. Runs write their
checkpoints and pipelines (14 GB each) to /dev/shm when it has room, so disk speed is not measured.
Without CUDA it stops at once, with an error in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmark.perf import probe_cli
from benchmark.perf.child_process import ChildError, ChildResult, run_in_child

if TYPE_CHECKING:
    from benchmark.generation import GenerationSettings
    from benchmark.training import TrainingConfig
    from implicit_concept.geom_erasing.training_target import GeomErasingConfig

TRACK = "paper"
BATCH_SIZES = (1, 4, 8)
METHODS = ("plain", "geom-erasing")
MEMORY_OPTIONS = ("mixed_precision", "gradient_checkpointing", "attention", "cache_latents")
DEFAULT_BUDGET = 360
DEFAULT_STEPS = 10
SCRATCH_NEEDED = 40 * 2**30
GIB = 2**30


def geom_for(method: str) -> GeomErasingConfig:
    """Geom-Erasing as ge-full trains it on a concept subset, or the plain fine-tune."""
    from implicit_concept.geom_erasing.training_target import GeomErasingConfig

    return GeomErasingConfig(concepts=("qrcode",)) if method == "geom-erasing" else GeomErasingConfig.plain()


def plan() -> list[tuple[str, int | None, str | None]]:
    """The measurements in the order they run: ("train", batch, method) and ("sample", None, None)."""
    first, *rest = BATCH_SIZES
    return [("train", first, m) for m in METHODS] + [("sample", None, None)] + [("train", b, m) for b in rest for m in METHODS]


def probe(measure_training: Callable[[int, str, float], ChildResult], measure_sampling: Callable[[float], ChildResult],
          budget: float, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Run :func:`plan` with the given measuring functions (each given the seconds left, its timeout)
    and assemble the report: per training run the median step, images/s and peak memory, an error if
    it failed, or "skipped" once the budget is spent; Geom-Erasing's overhead per batch size."""
    started = clock()
    training: list[dict[str, Any]] = []
    sampling: dict[str, Any] = {}
    for kind, batch, method in plan():
        left = budget - (clock() - started)
        entry: dict[str, Any] = {"batch_size": batch, "method": method} if kind == "train" else {}
        if left <= 0:
            entry["skipped"] = "time budget spent"
        else:
            try:
                child = measure_training(batch, method, left) if kind == "train" else measure_sampling(left)
            except ChildError as e:
                entry["error"] = str(e).splitlines()[0][:500]
            else:
                entry.update(child.value, seconds=round(child.seconds, 1), **_gib(child))
                if kind == "train":
                    entry["images_per_second"] = round(batch / entry["step_seconds_median"], 2)
        if kind == "train":
            training.append(entry)
        else:
            sampling = entry
    return {"training": training, "geom_erasing_overhead": overhead(training), "sampling": sampling,
            "seconds": round(clock() - started, 1), "budget_seconds": budget}


def overhead(training: list[dict[str, Any]]) -> dict[str, float]:
    """Geom-Erasing's median step over the plain one's, minus 1, for each batch size measured both ways."""
    step = {(e["batch_size"], e["method"]): e["step_seconds_median"] for e in training if "step_seconds_median" in e}
    return {str(b): round(step[b, "geom-erasing"] / step[b, "plain"] - 1, 4) for b in BATCH_SIZES
            if (b, "plain") in step and (b, "geom-erasing") in step}


def _gib(child: ChildResult) -> dict[str, float | None]:
    def gib(n: int | None) -> float | None:
        return None if n is None else round(n / GIB, 2)
    return {"peak_allocated_gib": gib(child.peak_cuda_allocated_bytes), "peak_reserved_gib": gib(child.peak_cuda_reserved_bytes),
            "peak_host_rss_gib": gib(child.peak_rss_bytes)}


def training_run(base: Path, data: str, out: Path, config: TrainingConfig) -> dict[str, Any]:
    """One fine-tune by the benchmark's loop; its step times, then its 14 GB of outputs removed."""
    from benchmark.training import RUN_FILE, train
    from implicit_concept.json_records import read_json_object

    train(base, data, out, config, progress=False)
    record = read_json_object(out / RUN_FILE)
    shutil.rmtree(out)
    return {**{k: record[k] for k in ("step_seconds_median", "prepare_seconds", "final_loss")},
            "captions_truncated": record["captions_truncated_this_session"]}  # one session: the probe's whole run


def sampling_run(base: Path, settings: GenerationSettings, prompt: str) -> dict[str, Any]:
    """Sample one chunk at the track's settings in fp16 on the GPU, with Geom-Erasing's tokens added
    and its negative prompt (the concept's name and every location token), after a short warm-up."""
    import torch

    from benchmark.generation import GenerationSettings, diffusers_generate_fn
    from benchmark.models.pipelines import load_pipeline
    from implicit_concept.geom_erasing.location_tokens import add_tokens

    pipe = load_pipeline(base, torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    geom = geom_for("geom-erasing")
    add_tokens(pipe.tokenizer, pipe.text_encoder, geom.new_tokens())
    negative = geom.negative_prompt()
    generate = diffusers_generate_fn(pipe, settings)
    diffusers_generate_fn(pipe, GenerationSettings(steps=2, guidance_scale=settings.guidance_scale, image_size=settings.image_size))(
        [prompt], [negative], [0])
    torch.cuda.synchronize()
    started = time.perf_counter()
    images = generate([prompt] * settings.chunk_size, [negative] * settings.chunk_size, list(range(settings.chunk_size)))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"images": len(images), "image_size": images[0].size[0], "steps": settings.steps, "guidance_scale": settings.guidance_scale,
            "dtype": "float16", "negative_prompt": negative, "sampling_seconds": round(seconds, 2),
            "images_per_second": round(len(images) / seconds, 3)}


def _scratch() -> str | None:
    """/dev/shm when it can hold a run's checkpoint and pipeline beside the base, else the default temp folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > SCRATCH_NEEDED else None


def main(argv: list[str] | None = None) -> int:
    p = probe_cli.parser("benchmark.perf.gpu_paper_probe", __doc__.split("\n")[0])
    p.add_argument("--budget", type=probe_cli.number(1), default=DEFAULT_BUDGET, help="seconds of measuring after setup (default: %(default)s)")
    p.add_argument("--steps", type=probe_cli.count(1), default=DEFAULT_STEPS, help="training steps per run, median taken (default: %(default)s)")
    p.add_argument("--json", type=probe_cli.output("file"), help="also write the JSON to this file")
    args = p.parse_args(argv)
    import torch

    from benchmark.track import load_track

    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: this probe measures a GPU (torch.cuda.is_available() is False); "
                                   "on a CPU run python -m benchmark.perf.training_speed --full-size"}))
        return 2

    track = load_track(TRACK)
    options = {k: track.finetune[k] for k in MEMORY_OPTIONS}
    settings = track.generation_settings()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "device_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / GIB, 1),
        "torch": torch.__version__, "track": TRACK, "memory_options": options, "resolution": 512, "steps_per_run": args.steps,
        "weights": "random (SD v1.5's architecture): speed and memory only",
    }
    started = time.perf_counter()
    try:
        report.update(_measure(track, settings, args))
    except (ChildError, OSError, ValueError) as e:
        report["error"] = f"setup failed: {type(e).__name__}: {str(e).splitlines()[0][:500]}"
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    if args.json:
        probe_cli.write_json(args.json, report)
    return 0 if any("step_seconds_median" in e for e in report.get("training", [])) else 1


def _measure(track: Any, settings: GenerationSettings, args: argparse.Namespace) -> dict[str, Any]:
    """Set up (the SD-v1.5-shaped base, a small icd-v1 at 512 px) in a scratch folder, then :func:`probe`."""
    from benchmark.models.sd15 import build_sd15_pipeline
    from benchmark.perf.paper_data import small_icd_v1
    from benchmark.training import TrainingConfig

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-paper-probe-", dir=_scratch()) as tmp:
        root = Path(tmp)
        base = root / "sd15"
        run_in_child(build_sd15_pipeline, base)
        shards = str(small_icd_v1(root / "data", train=2 * max(BATCH_SIZES)) / "icd-qrcode" / "train")
        prompt = "a small red circle to the left of a large blue square on a white background"
        setup = round(time.perf_counter() - started, 1)

        def measure_training(batch: int, method: str, left: float) -> ChildResult:
            config = TrainingConfig(**{**track.finetune, "steps": args.steps, "batch_size": batch, "checkpoint_every": 10**6,
                                       "seed": track.seed}, geom=geom_for(method))
            return run_in_child(training_run, base, shards, root / f"{method}-{batch}", config, timeout=left)

        def measure_sampling(left: float) -> ChildResult:
            return run_in_child(sampling_run, base, settings, prompt, timeout=left)

        return {"setup_seconds": setup, **probe(measure_training, measure_sampling, args.budget)}


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
