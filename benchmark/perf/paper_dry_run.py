"""The paper track's dry run: SD v1.5's real architecture with random weights, end to end on a CPU.

    python -m benchmark.perf.paper_dry_run [--source /data/images] [--out runs/paper-dry]

What a lab's first ``--track paper --pretrained`` run hits, without SD's weights or a GPU: a small
icd-v1 built at 512 px, latents from the real AutoencoderKL class, the 860M-parameter UNet and the
CLIP text encoder with Geom-Erasing's location tokens added, fine-tuned plainly and with Geom-Erasing
through the methods' own ``finetunes`` and the benchmark's cached fine-tune stage, checkpoints of
gigabytes, a resume that must end with the uninterrupted run's exact weights, and one 512 px sample
from the Geom-Erasing method's generator with its negative prompt.

It proves the plumbing, not the numbers: the weights are random, two steps teach nothing, and no
detector or score runs (the debug track covers those). Every heavy stage runs in its own process, so
each one's peak memory is measured alone; the gigabytes of checkpoints and pipelines are removed as
soon as they are checked (``--keep`` keeps them). The summary goes to ``OUT/dry_run.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benchmark.perf import probe_cli
from benchmark.perf.child_process import ChildResult, run_in_child
from implicit_concept.content_hashes import sha256_file
from implicit_concept.files import atomic_write_json
from implicit_concept.json_records import read_json_object

if TYPE_CHECKING:
    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.methods.interface import FineTune, MethodContext
    from benchmark.track import Track
    from benchmark.training import TrainingConfig

#: The procedural stand-in for a lab's images: this many train images, one test image, at 512 px.
DEFAULT_IMAGES = 4
WEIGHT_FILES = {"unet": "unet/diffusion_pytorch_model.safetensors", "text_encoder": "text_encoder/model.safetensors"}


def dry_run(track: Track, work: Path, source: str | None = None, images: int = DEFAULT_IMAGES, threads: int | None = None,
            keep: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run the dry run of ``track`` in ``work``; return (and write to ``work/dry_run.json``) what it
    measured and checked."""
    from benchmark import stages
    from benchmark.benchmark_run import BenchmarkRun
    from benchmark.methods import get_method
    from benchmark.models.pretrained_check import check_base_sampler, check_pretrained
    from benchmark.models.sd15 import build_sd15_pipeline
    from benchmark.perf.paper_data import procedural_folder
    from benchmark.track_check import check_track
    from benchmark.training import CHECKPOINTS_DIR, RUN_FILE, train
    from benchmark.training.checkpoints import latest_checkpoint
    from implicit_concept.shard_reader import iter_samples

    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"track": track.name, "note": track.note, "stages": {}, "checks": {}}
    started = time.perf_counter()

    # 1. A small icd-v1, built as the paper track builds it with --source: from your folder, or from
    # procedural scenes written as one (name.jpg + name.txt, like a folder of LAION images).
    # The base is checked as a `--pretrained` one (it is built at step 2, and checked there as one).
    base = work / "sd15"
    source = source or str(procedural_folder(work / "source", images, track.seed))
    check_track(track, source=source, pretrained=base)
    run = BenchmarkRun(track=track, name="dry-run", runs_root=work / "runs", data_root=work / "data", cache=work / "cache",
                       source=source, workers=1, progress=progress)
    subset_name, _ = track.groups()[0]
    subset = stages.dataset(run) / subset_name
    report["stages"]["dataset"] = {"seconds": round(time.perf_counter() - started, 1), "source": source,
                                   "train_images": sum(1 for _ in iter_samples(subset / "train"))}

    # 2. The base: SD v1.5's architecture, random weights, saved as a diffusers folder and loaded by path.
    _stage(report, "base", run_in_child(build_sd15_pipeline, base, track.seed, threads=threads))
    check_pretrained(base)  # what `--pretrained` is checked for at a run's start
    if track.needs_pretrained:
        check_base_sampler(base, track.sampler())

    # 3. Every fine-tune the track's methods declare (sd: plain, ge-full: Geom-Erasing), through the benchmark's stage.
    ctx = _context(run, base, subset)
    tuned: dict[str, Path] = {}
    for name in track.methods:
        for ft in get_method(name).finetunes(ctx):
            child = run_in_child(_finetune, run, base, subset, ft, threads=threads)
            out = Path(child.value)
            record = read_json_object(out.parent / RUN_FILE)
            _stage(report, f"finetune {name}", child, steps=record["steps"], step_seconds_median=record["step_seconds_median"],
                   prepare_seconds=record["prepare_seconds"], final_loss=record["final_loss"], negative_prompt=record["negative_prompt"],
                   checkpoint_gib=_gib(latest_checkpoint(out.parent)), pipeline_gib=_gib(out))
            trained, expected = _trained_parts(base, out, stages.finetune_config(track, ft))
            report["stages"][f"finetune {name}"]["trained"] = trained
            report["checks"][f"{name}: trained exactly what its config trains"] = trained == expected
            _note_disk(report, work)
            tuned[name] = out
            if not ft.geom or not ft.geom.active:  # nothing later reads the plain fine-tune
                _drop(out.parent / CHECKPOINTS_DIR, out, keep=keep)

    # 4. One sample from the Geom-Erasing method's generator, with its negative prompt, at the track's size.
    name, ft = next((n, ft) for n in track.methods for ft in get_method(n).finetunes(ctx) if ft.geom and ft.geom.active)
    png = work / "sample.png"
    child = run_in_child(_sample, run, base, subset, name, png, threads=threads)
    _stage(report, "sample", child, **child.value)
    report["checks"]["sample: the track's size, not blank (no NaN), with the location tokens as negative prompt"] = (
        child.value["size"] == [track.generation["image_size"]] * 2 and child.value["pixel_std"] > 0 and "<l" in child.value["negative_prompt"])

    # 5. A run stopped after step 1 (the step-1 checkpoint alone in a new folder) resumes to the same
    # weights as the uninterrupted Geom-Erasing run. The uninterrupted pipeline is hashed and removed
    # first, so the disk never holds more than the base and one fine-tune (CI's disk ran out with more).
    uninterrupted = tuned[name]
    resumed_dir = work / "resumed"
    first = sorted((uninterrupted.parent / CHECKPOINTS_DIR).glob("step-*"))[0]
    (resumed_dir / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
    if keep:
        shutil.copytree(first, resumed_dir / CHECKPOINTS_DIR / first.name)
    else:
        shutil.move(first, resumed_dir / CHECKPOINTS_DIR / first.name)
    expected = _hashes(uninterrupted)
    _drop(uninterrupted.parent / CHECKPOINTS_DIR, uninterrupted, keep=keep)
    child = run_in_child(train, base, subset / "train", resumed_dir, stages.finetune_config(track, ft), progress=False, threads=threads)
    _stage(report, "resume", child, from_checkpoint=first.name)
    report["checks"]["resume: same weights as the uninterrupted run"] = _hashes(Path(child.value)) == expected
    _note_disk(report, work)
    _drop(resumed_dir, base, keep=keep)

    report["seconds"] = round(time.perf_counter() - started, 1)
    report["peak_rss_gib"] = max(s["peak_rss_gib"] for s in report["stages"].values() if "peak_rss_gib" in s)
    report["ok"] = all(report["checks"].values())
    atomic_write_json(work / "dry_run.json", report)
    return report


def _context(run: BenchmarkRun, base: Path, subset: Path) -> MethodContext:
    """What the protocol hands a method, for the dry run's one training subset (no detector)."""
    from benchmark import stages
    from benchmark.methods.interface import MethodContext

    track = run.track
    return MethodContext(
        concepts=tuple(track.concepts), work_dir=run.root / "methods" / subset.name, seed=track.seed,
        finetune=lambda ft: stages.finetune(run, base, subset, ft, None, may_train=False),
        load_pipeline=stages.load_pipeline, train_shards=subset / "train",
        settings={"esd": track.esd, "fmn": track.fmn, "geom_erasing": track.geom_erasing}, base=base,
    )


def _finetune(run: BenchmarkRun, base: Path, subset: Path, ft: FineTune) -> str:
    from benchmark import stages

    return str(stages.finetune(run, base, subset, ft, None))


def _sample(run: BenchmarkRun, base: Path, subset: Path, method: str, png: Path) -> dict[str, Any]:
    """Build ``method``'s generator as the protocol does and sample the first test caption once."""
    import numpy as np

    from benchmark.generation import diffusers_generate_fn
    from benchmark.methods import get_method
    from benchmark.prompts import shard_prompts

    generator = get_method(method).build(_context(run, base, subset))
    generator.pipeline.set_progress_bar_config(disable=True)
    settings = run.track.generation_settings()
    prompt = shard_prompts(subset / "test", 1)[0]
    started = time.perf_counter()
    image = diffusers_generate_fn(generator.pipeline, settings)([prompt.prompt], [generator.negative_prompt], [prompt.evaluation_seed])[0]
    seconds = time.perf_counter() - started
    image.save(png)
    return {"size": list(image.size), "pixel_std": round(float(np.asarray(image, dtype=np.float32).std()), 2), "prompt": prompt.prompt,
            "negative_prompt": generator.negative_prompt, "sampling_steps": settings.steps, "sampling_seconds": round(seconds, 1)}


def _stage(report: dict[str, Any], name: str, child: ChildResult, **extra: Any) -> None:
    report["stages"][name] = {"seconds": round(child.seconds, 1), "peak_rss_gib": round(child.peak_rss_bytes / 2**30, 2), **extra}
    if child.peak_cuda_reserved_bytes is not None:
        report["stages"][name]["peak_cuda_reserved_gib"] = round(child.peak_cuda_reserved_bytes / 2**30, 2)


def _hashes(pipeline: Path) -> dict[str, str]:
    return {part: sha256_file(pipeline / path) for part, path in WEIGHT_FILES.items()}


def _trained_parts(base: Path, tuned: Path, config: TrainingConfig) -> tuple[dict[str, bool | None], dict[str, bool | None]]:
    """Which parts moved from the base (the UNet, the text encoder's original rows, the new tokens'
    rows from where :func:`add_tokens` starts them), and which the config says should have."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    from implicit_concept.geom_erasing.location_tokens import add_tokens

    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", local_files_only=True)
    old = slice(0, text_encoder.get_input_embeddings().num_embeddings)
    new_ids = add_tokens(tokenizer, text_encoder, config.geom.new_tokens(), seed=config.seed)
    before = text_encoder.get_input_embeddings().weight.detach()
    after = CLIPTextModel.from_pretrained(tuned / "text_encoder", local_files_only=True).get_input_embeddings().weight.detach()
    trained = {
        "unet": sha256_file(base / WEIGHT_FILES["unet"]) != sha256_file(tuned / WEIGHT_FILES["unet"]),
        "text_encoder_rows": not torch.equal(before[old], after[old]),
        "new_token_rows": not torch.equal(before[new_ids], after[new_ids]) if new_ids else None,
    }
    expected = {"unet": config.trains_unet, "text_encoder_rows": config.train_text == "text_encoder",
                "new_token_rows": config.train_text != "none" if new_ids else None}
    return trained, expected


def _note_disk(report: dict[str, Any], work: Path) -> None:
    """Keep the most ``work`` has held at the points it holds most (before a stage's folders are removed)."""
    report["peak_disk_gib"] = max(report.get("peak_disk_gib", 0.0), _gib(work))


def _gib(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30, 2)


def _drop(*folders: Path, keep: bool) -> None:
    """Remove checked gigabytes (a dry run writes about 40 GB in all) unless asked to keep them."""
    if not keep:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = probe_cli.parser("benchmark.perf.paper_dry_run", __doc__.split("\n")[0])
    p.add_argument("--track", default="paper-dry", help="a track name or TOML (default: %(default)s)")
    p.add_argument("--source", type=probe_cli.existing("source"), help="your images (a folder of name.jpg + name.txt, or tars) instead of procedural scenes")
    p.add_argument("--images", type=probe_cli.count(1), default=DEFAULT_IMAGES, help="procedural train images per subset (default: %(default)s)")
    p.add_argument("--out", type=probe_cli.output("folder"), default="runs/paper-dry", help="work folder; dry_run.json and sample.png stay there (default: %(default)s)")
    p.add_argument("--threads", type=probe_cli.count(1), help="torch threads in each stage (default: torch's)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints and pipelines (about 40 GB)")
    args = p.parse_args(argv)
    from benchmark.track import load_track

    try:
        track = load_track(args.track)
    except (ValueError, OSError) as e:
        p.error(f"--track: {e}")
    report = dry_run(track, Path(args.out), source=args.source, images=args.images, threads=args.threads,
                     keep=args.keep, progress=True)
    print(json.dumps(report, indent=2))
    print(f"{'OK' if report['ok'] else 'FAILED'}: {report['seconds'] / 60:.1f} min, peak {report['peak_rss_gib']} GiB in one stage. "
          "This proves the plumbing, not the numbers.")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
