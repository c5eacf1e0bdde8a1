"""What a Geom-Erasing training step costs over a plain one, and how fast the tiny pipeline trains and samples.

    python -m benchmark.perf.training_speed --data data/icd-tiny/icd-qrcode/train
    python -m benchmark.perf.training_speed --full-size       # SD v1.5's shape at 512 px, batch 1

All fine-tunes run the same loop on the same data with the same seed, so their batches, timesteps
and noise are identical. "geom-erasing" differs from "plain" by its captions (concept and location
tokens), its loss weights and its trainable new-token embeddings; "ge-frozen-tokens" has the captions
and weights but keeps the new embeddings fixed, which separates the per-sample work from the cost of
back-propagating through the text encoder to the new embeddings. Runs alternate so a neighbour's
load hits all alike, and the median step time of each is compared (target: at most 3% overhead).
The one-off preparation pass (latents, captions, weight maps) is reported apart. Untrained weights
are used: speed does not depend on them.

``--full-size`` measures the same at the paper track's scale: SD v1.5's architecture with random
weights (:mod:`benchmark.models.sd15`), a small icd-v1 at 512 px, batch 1, the paper-dry track's
memory options (bf16 on a CPU, gradient checkpointing, SDPA). Each run is a fresh process, so its
peak memory is its own (see :func:`full_size` for how steps are compared).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmark.perf import probe_cli
from benchmark.perf.child_process import run_in_child

if TYPE_CHECKING:
    from benchmark.training import TrainingConfig
    from implicit_concept.geom_erasing.training_target import GeomErasingConfig

#: The full-size runs take their memory options from this track (bf16: a CPU has no fp16 training).
FULL_SIZE_TRACK = "paper-dry"
FULL_SIZE_DEFAULTS = {"steps": 6, "repeats": 2, "batch_size": 1}
TINY_DEFAULTS = {"steps": 20, "repeats": 2, "batch_size": 32}
#: What the tiny runs train on without ``--data``: ``make dataset``'s.
TINY_DATA = "data/icd-tiny/icd-qrcode/train"


def main(argv: list[str] | None = None) -> int:
    p = probe_cli.parser("benchmark.perf.training_speed", __doc__.split("\n")[0])
    p.add_argument("--full-size", action="store_true", help="SD v1.5's architecture at 512 px instead of the tiny pipeline")
    p.add_argument("--data", type=probe_cli.existing("source"), help="ICD shards with boxes (default: data/icd-tiny/icd-qrcode/train; "
                                  "with --full-size a small icd-v1 built from procedural scenes)")
    p.add_argument("--steps", type=probe_cli.count(1), help=f"training steps per timed run (default: {TINY_DEFAULTS['steps']}, full size {FULL_SIZE_DEFAULTS['steps']})")
    p.add_argument("--repeats", type=probe_cli.count(1), help=f"timed runs per config, alternated (default: {TINY_DEFAULTS['repeats']}, full size {FULL_SIZE_DEFAULTS['repeats']})")
    p.add_argument("--batch-size", type=probe_cli.count(1), help=f"(default: {TINY_DEFAULTS['batch_size']}, full size {FULL_SIZE_DEFAULTS['batch_size']})")
    p.add_argument("--threads", type=probe_cli.count(1), default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--samples", type=probe_cli.count(1), default=16, help="images per sampling call (default: %(default)s)")
    p.add_argument("--sampling-steps", type=probe_cli.count(1), default=25, help="DDIM steps per image (default: %(default)s)")
    p.add_argument("--json", type=probe_cli.output("file"), help="also write the numbers to this file")
    args = p.parse_args(argv)
    for name, value in (FULL_SIZE_DEFAULTS if args.full_size else TINY_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.full_size:
        if args.steps < 2:
            p.error("--full-size needs --steps >= 2: each run's first step (its warm-up) is left out")
        return full_size(args)
    if args.data is None and not Path(TINY_DATA).is_dir():
        p.error(f"--data: {TINY_DATA} is not built (make dataset); name ICD shards with boxes")
    args.data = args.data or TINY_DATA
    return tiny(args)


def tiny(args: argparse.Namespace) -> int:
    """The tiny pipeline: plain, Geom-Erasing with frozen new tokens and Geom-Erasing, alternated; then sampling."""
    import torch

    from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline, save_portable_pipeline
    from benchmark.training import RUN_FILE, TrainingConfig, train
    from implicit_concept.geom_erasing.training_target import GeomErasingConfig
    from implicit_concept.json_records import read_json_object

    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="training-speed-") as tmp:
        root = Path(tmp)
        base = root / "base"
        save_portable_pipeline(build_tiny_pipeline(TinyPipelineConfig(), root / "tokenizer", seed=0), base)
        geom = GeomErasingConfig(concepts=("qrcode", "watermark", "text"))
        configs = {
            "plain": (GeomErasingConfig.plain(), "new_tokens"),
            "ge-frozen-tokens": (geom, "none"),
            "geom-erasing": (geom, "new_tokens"),
        }
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for repeat in range(args.repeats):
            for name, (geom, train_text) in configs.items():
                config = TrainingConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=10**6,
                                        threads=args.threads, geom=geom, train_text=train_text, seed=0)
                out = root / f"{name}-{repeat}"
                train(base, args.data, out, config, progress=False)
                runs[name].append(read_json_object(out / RUN_FILE))
        step = {name: statistics.median(r["step_seconds_median"] for r in rs) for name, rs in runs.items()}
        prepare = {name: statistics.median(r["prepare_seconds"] for r in rs) for name, rs in runs.items()}
        overhead = {name: step[name] / step["plain"] - 1 for name in configs if name != "plain"}

        pipe = load_pipeline(root / "geom-erasing-0" / "pipeline")
        pipe.set_progress_bar_config(disable=True)
        negative = read_json_object(root / "geom-erasing-0" / RUN_FILE)["negative_prompt"]
        prompts = ["a small red circle on the left on a blue background"] * args.samples
        pipe(prompts[:2], num_inference_steps=2, output_type="np")  # warm-up
        started = time.time()
        pipe(prompts, negative_prompt=[negative] * args.samples, num_inference_steps=args.sampling_steps,
             guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np")
        sampling = time.time() - started

    result = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "pipeline": TinyPipelineConfig().to_dict(),
        "step_seconds": step,
        "prepare_seconds": prepare,
        "geom_erasing_overhead": overhead,
        "sampling_seconds": sampling,
        "sampling": {"images": args.samples, "steps": args.sampling_steps, "cfg": True, "negative_prompt": True},
    }
    print(f"training step, batch {args.batch_size}, {args.threads} threads (median of {args.repeats} x {args.steps} steps):")
    for name in configs:
        extra = f"  overhead {100 * overhead[name]:+.1f}%" if name in overhead else ""
        print(f"  {name:17s} {step[name]:.3f} s/step{extra}   (preparation pass: {prepare[name]:.1f} s)")
    print("  target: Geom-Erasing overhead <= 3%")
    print(f"sampling: {args.samples} images x {args.sampling_steps} DDIM steps with CFG and the negative prompt: "
          f"{sampling:.1f} s ({sampling / args.samples:.2f} s/image)")
    if args.json:
        probe_cli.write_json(args.json, result)
    return 0


def full_size(args: argparse.Namespace) -> int:
    """Plain against Geom-Erasing at full size: wall-clock steps in alternating runs, each in its own
    process (its peak memory is its own), and the model work of one step of each, counted.

    On a machine shared with other jobs a neighbour's load moves a step by tens of percent, more than
    the few percent sought, so runs go plain, Geom-Erasing, Geom-Erasing, plain (a steady drift
    cancels), the wall-clock figures are the fastest step after each run's warm-up (the least
    disturbed) and the median, and the overhead is also given as the ratio of the FLOPs
    PyTorch counts in one step of each (forward, backward, checkpointed recompute): a figure no
    neighbour moves, which leaves out only work that is not arithmetic (data, optimizer, copies).
    """
    from benchmark.models.sd15 import build_sd15_pipeline
    from benchmark.perf.paper_data import small_icd_v1
    from benchmark.track import load_track
    from benchmark.training import TrainingConfig
    from implicit_concept.geom_erasing.training_target import GeomErasingConfig

    geoms = {"plain": GeomErasingConfig.plain(), "geom-erasing": GeomErasingConfig(concepts=("qrcode", "watermark", "text"))}
    options = load_track(FULL_SIZE_TRACK).finetune
    with tempfile.TemporaryDirectory(prefix="training-speed-full-") as tmp:
        root = Path(tmp)
        run_in_child(build_sd15_pipeline, root / "sd15", threads=args.threads)
        data = args.data or str(small_icd_v1(root / "data", train=max(4, args.batch_size)) / "icd-qrcode" / "train")
        flops = {name: run_in_child(step_flops, root / "sd15", geom, args.batch_size, threads=args.threads).value for name, geom in geoms.items()}
        runs: dict[str, list[dict]] = {name: [] for name in geoms}
        for repeat in range(args.repeats):
            for name, geom in list(geoms.items())[:: 1 if repeat % 2 == 0 else -1]:
                config = TrainingConfig(**{**options, "steps": args.steps, "batch_size": args.batch_size, "checkpoint_every": 10**6,
                                           "threads": args.threads, "seed": 0}, geom=geom)
                child = run_in_child(_timed_run, root / "sd15", data, root / f"{name}-{repeat}", config, threads=args.threads)
                runs[name].append({**child.value, "peak_rss_gib": round(child.peak_rss_bytes / 2**30, 2)})
    median = {name: statistics.median(statistics.median(r["step_seconds"][1:]) for r in rs) for name, rs in runs.items()}
    fastest = {name: min(min(r["step_seconds"][1:]) for r in rs) for name, rs in runs.items()}
    peak = {name: max(r["peak_rss_gib"] for r in rs) for name, rs in runs.items()}
    overhead = {"counted_flops": flops["geom-erasing"] / flops["plain"] - 1,
                "fastest_step": fastest["geom-erasing"] / fastest["plain"] - 1, "median_step": median["geom-erasing"] / median["plain"] - 1}
    result = {
        "full_size": True, "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
        "memory_options": {k: options[k] for k in ("mixed_precision", "gradient_checkpointing", "attention", "cache_latents")},
        "step_flops": flops, "fastest_step_seconds": fastest, "median_step_seconds": median, "geom_erasing_overhead": overhead,
        "peak_rss_gib": peak, "runs": runs,
    }
    print(f"SD v1.5 shape, 512 px, batch {args.batch_size}, {args.threads} threads, {result['memory_options']}; "
          f"{args.repeats} run(s) of {args.steps} steps per config (order ABBA), each in its own process, first step left out:")
    for name in geoms:
        print(f"  {name:13s} {flops[name] / 1e12:6.2f} TFLOP/step   fastest step {fastest[name]:6.1f} s   median {median[name]:6.1f} s"
              f"   peak memory {peak[name]:.1f} GiB")
    print(f"  Geom-Erasing overhead: {100 * overhead['counted_flops']:+.2f}% (counted FLOPs), {100 * overhead['fastest_step']:+.1f}% "
          f"(fastest steps), {100 * overhead['median_step']:+.1f}% (medians); target <= 3%")
    if args.json:
        probe_cli.write_json(args.json, result)
    return 0


def step_flops(base: Path, geom: GeomErasingConfig, batch_size: int) -> int:
    """The FLOPs of one training step's model work as :func:`benchmark.training.train` does it with the
    paper-dry options: text encoder (through the new tokens' rows when Geom-Erasing adds some), UNet
    with gradient checkpointing, weighted loss, backward. The Geom-Erasing caption is its negative
    prompt (the concept and every location token); captions are padded to 77 tokens either way."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.models.clip_tokenizer import token_ids
    from benchmark.models.pipelines import load_pipeline
    from benchmark.training.new_tokens import NewTokenRows
    from implicit_concept.geom_erasing.location_tokens import add_tokens

    pipe = load_pipeline(base)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    new_ids = add_tokens(pipe.tokenizer, text_encoder, geom.new_tokens())
    rows = NewTokenRows(text_encoder.get_input_embeddings(), new_ids) if new_ids else None
    unet.enable_gradient_checkpointing()
    unet.train()
    text_encoder.requires_grad_(False)
    ids = token_ids(pipe.tokenizer, [f"a photo {geom.negative_prompt()}".strip()] * batch_size)
    size = unet.config.sample_size
    latents, noise = torch.randn(2, batch_size, unet.config.in_channels, size, size)
    with FlopCounterMode(display=False) as counter:
        hidden = text_encoder(ids)[0]
        pred = unet(latents, torch.full((batch_size,), 500), hidden).sample
        loss = (((pred - noise) ** 2) * torch.ones(batch_size, 1, size, size)).mean()
        loss.backward()
    if rows is not None and rows.rows.grad is None:
        raise RuntimeError("Geom-Erasing's step did not reach the new tokens' rows")
    return counter.get_total_flops()


def _timed_run(base: Path, data: str, out: Path, config: TrainingConfig) -> dict:
    """One training run's step times from its ``run.json``; its gigabytes of checkpoint and pipeline go."""
    from benchmark.training import RUN_FILE, train
    from implicit_concept.json_records import read_json_object

    train(base, data, out, config, progress=False)
    record = read_json_object(out / RUN_FILE)
    shutil.rmtree(out)
    return {k: record[k] for k in ("step_seconds", "prepare_seconds", "final_loss")}


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
