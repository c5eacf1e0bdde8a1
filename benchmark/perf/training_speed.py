"""What a Geom-Erasing training step costs over a plain one, and how fast the tiny pipeline trains and samples.

    python -m benchmark.perf.training_speed --data data/icd-tiny/icd-qrcode/train

All fine-tunes run the same loop on the same data with the same seed, so their batches, timesteps
and noise are identical. "geom-erasing" differs from "plain" by its captions (concept and location
tokens), its loss weights and its trainable new-token embeddings; "ge-frozen-tokens" has the captions
and weights but keeps the new embeddings fixed, which separates the per-sample work from the cost of
back-propagating through the text encoder to the new embeddings. Runs alternate so a neighbour's
load hits all alike, and the median step time of each is compared (target: at most 3% overhead).
The one-off preparation pass (latents, captions, weight maps) is reported apart. Untrained weights
are used: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline, save_portable_pipeline
from benchmark.training import RUN_FILE, TrainingConfig, train
from implicit_concept.geom_erasing.training_target import GeomErasingConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/icd-tiny/icd-qrcode/train", help="ICD shards with boxes (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="training steps per timed run (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per config, alternated (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--samples", type=int, default=16, help="images per sampling call (default: %(default)s)")
    p.add_argument("--sampling-steps", type=int, default=25)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
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
                runs[name].append(json.loads((out / RUN_FILE).read_text()))
        step = {name: statistics.median(r["step_seconds_median"] for r in rs) for name, rs in runs.items()}
        prepare = {name: statistics.median(r["prepare_seconds"] for r in rs) for name, rs in runs.items()}
        overhead = {name: step[name] / step["plain"] - 1 for name in configs if name != "plain"}

        pipe = load_pipeline(root / "geom-erasing-0" / "pipeline")
        pipe.set_progress_bar_config(disable=True)
        negative = json.loads((root / "geom-erasing-0" / RUN_FILE).read_text())["negative_prompt"]
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
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
