"""The perf probes' parts that need no GPU: measuring in a child process, the GPU probe's plan,
budget and report, and its refusal to run without CUDA; the scoring-speed probe run as written."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from benchmark.perf import gpu_paper_probe
from benchmark.perf.child_process import ChildError, ChildResult, run_in_child


def _touched(megabytes: int) -> bytearray:
    """``megabytes`` of memory, every page written, so all of it is resident."""
    block = bytearray(megabytes * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])
    return block


def _hold(megabytes: int) -> int:
    return len(_touched(megabytes))


def _fail() -> None:
    raise ValueError("bad input 42")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _sleep() -> None:
    import time

    time.sleep(60)


def test_a_child_returns_its_value_and_its_own_peak_memory_not_its_parents():
    """While this process holds 2 GB, a child holding 10 MB and one holding 1 GB each report their own
    peak (imports take about 1 GB), not the parent's that their fork briefly shared."""
    held = _touched(2000)
    small = run_in_child(_hold, 10)
    large = run_in_child(_hold, 1000)
    assert large.value == 1000 * 2**20
    assert small.peak_rss_bytes < 1800 * 2**20 < len(held)
    assert 1000 * 2**20 < large.peak_rss_bytes - small.peak_rss_bytes + 100 * 2**20
    assert large.peak_cuda_allocated_bytes is None or torch.cuda.is_available()


@pytest.mark.parametrize("fn, message", [(_fail, "ValueError: bad input 42"), (_die, "died \\(exit code -9")])
def test_a_child_that_fails_or_dies_raises_saying_which(fn, message):
    with pytest.raises(ChildError, match=message):
        run_in_child(fn)


def test_a_child_past_its_timeout_is_killed():
    with pytest.raises(ChildError, match="still running after 2 s, killed"):
        run_in_child(_sleep, timeout=2)


PROBE = """
import os, sys, time
from benchmark.perf.child_process import run_in_child

def measure(started):
    open(started, "w").close()
    time.sleep(120)

if __name__ == "__main__":
    run_in_child(measure, sys.argv[1])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_probe_stopped_leaves_no_child_measuring(tmp_path, sig):
    """A probe's child (a fine-tune holding the GPU, a paper dry run's writing one) outlived a
    SIGTERM to the probe (a lease's timeout), for the whole measurement; on Ctrl-C the probe waited
    for it. Now the child ends with its parent, and a Ctrl-C stops it at once."""
    import subprocess
    import sys
    import time

    from tests.test_fs_faults import ENV, _alive_in_group

    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    started = tmp_path / "started"
    # As from a terminal: a shell's background job (CI's, here once) inherits SIGINT ignored, and so
    # would the probe, which (unlike the CLI) installs no handler of its own.
    proc = subprocess.Popen([sys.executable, str(script), str(started)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not started.exists():  # the child is measuring
        time.sleep(0.05)
    (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10  # the child looks at its parent once a second
    while time.monotonic() < deadline and _alive_in_group(proc.pid):
        time.sleep(0.1)
    left = _alive_in_group(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_the_gpu_probe_runs_batch_1_and_sampling_first():
    assert gpu_paper_probe.plan() == [("train", 1, "plain"), ("train", 1, "geom-erasing"), ("sample", None, None),
                                      ("train", 4, "plain"), ("train", 4, "geom-erasing"),
                                      ("train", 8, "plain"), ("train", 8, "geom-erasing")]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_gpu_probe_reports_each_measurement_and_skips_what_the_budget_leaves_out():
    """Fakes stand in for the GPU: 100 s per measurement and a 450 s budget leave the last two
    skipped; a batch that does not fit is an error, not the end of the probe."""
    clock = _Clock()
    gib = 2**30

    def train_fake(batch, method, left):
        clock.now += 100
        if batch == 4 and method == "plain":
            raise ChildError("training_run failed in its child process: OutOfMemoryError: CUDA out of memory")
        step = 0.1 * batch * (1.02 if method == "geom-erasing" else 1.0)
        return ChildResult({"step_seconds_median": step, "prepare_seconds": 1.0}, 90.0, 5 * gib, 15 * gib, 16 * gib)

    def sample_fake(left):
        clock.now += 100
        return ChildResult({"images": 8, "images_per_second": 2.5}, 30.0, 4 * gib, 3 * gib, 4 * gib)

    report = gpu_paper_probe.probe(train_fake, sample_fake, budget=450, clock=clock)
    training = report["training"]
    assert [(e["batch_size"], e["method"]) for e in training] == [(b, m) for b in (1, 4, 8) for m in ("plain", "geom-erasing")]
    assert training[0] == {"batch_size": 1, "method": "plain", "step_seconds_median": 0.1, "prepare_seconds": 1.0, "seconds": 90.0,
                           "peak_allocated_gib": 15.0, "peak_reserved_gib": 16.0, "peak_host_rss_gib": 5.0, "images_per_second": 10.0}
    assert "CUDA out of memory" in training[2]["error"]
    assert "step_seconds_median" in training[3]
    assert [e.get("skipped") for e in training[4:]] == ["time budget spent"] * 2
    assert report["geom_erasing_overhead"] == {"1": 0.02}
    assert report["sampling"]["images_per_second"] == 2.5
    assert report["seconds"] == 500 and report["budget_seconds"] == 450


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without CUDA")
def test_the_gpu_probe_stops_at_once_without_cuda(capsys):
    assert gpu_paper_probe.main([]) == 2
    report = json.loads(capsys.readouterr().out)
    assert "no CUDA device" in report["error"]


def test_a_probe_training_run_reads_its_step_times_and_removes_its_gigabytes(tmp_path):
    """The function each GPU measurement runs, on the micro pipeline and CPU."""
    from benchmark.models.pipelines import build_tiny_pipeline
    from benchmark.training import TrainingConfig

    from .test_training import FAST, MICRO, _write_shards

    base = tmp_path / "base"
    build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=0).save_pretrained(base)
    config = TrainingConfig(**FAST, geom=gpu_paper_probe.geom_for("geom-erasing"))
    result = gpu_paper_probe.training_run(base, str(_write_shards(tmp_path / "shards")), tmp_path / "run", config)
    assert set(result) == {"step_seconds_median", "prepare_seconds", "final_loss", "captions_truncated"}
    assert result["step_seconds_median"] > 0 and not (tmp_path / "run").exists()


def test_build_stage_profile_times_the_real_path(tmp_path):
    """Each stage is timed where the build calls it: with the clean twin and mask off, no PNG is
    encoded and the JPEG encodes fall to one per sample; the stages are the sample's whole CPU time."""
    from benchmark.perf.build_speed import make_source_folder, stage_profile

    make_source_folder(tmp_path / "src", 12, 96)
    full = stage_profile(tmp_path / "src", tmp_path / "full", 64, 6)
    image_only = stage_profile(tmp_path / "src", tmp_path / "image", 64, 6, write_clean=False, write_mask=False)
    for stage in ("read, decode, resize", "render, composite", "visible boxes", "encode JPEG", "tar"):
        assert full[stage] > 0 and image_only[stage] > 0, stage
    assert full["encode PNG"] > 0 and "encode PNG" not in image_only
    assert full["other"] >= 0 and image_only["other"] >= 0


def test_the_scoring_speed_probe_runs_as_the_readme_writes_it(tmp_path, monkeypatch, capsys):
    """``python -m benchmark.perf.scoring_speed`` with no arguments: the published evaluator on a
    small image set it builds itself (no data/icd-tiny here), both paths finding the same concepts."""
    from benchmark.perf import scoring_speed

    args = scoring_speed.parse_args([])
    assert args.images is None and args.detector is None
    monkeypatch.chdir(tmp_path)
    assert scoring_speed.main(["--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "icd-debug/icd-mixed/test: 4 images of 64x64" in out and "detector-tiny" in out, out
    assert "same concepts found in 4/4 images" in out, out


@pytest.mark.parametrize("probe", ["build_speed", "gpu_paper_probe", "hostile_inputs", "interval_coverage",
                                   "paper_dry_run", "scoring_speed", "training_speed"])
def test_every_probe_says_what_it_measures_in_whole_sentences(probe, monkeypatch, capsys):
    """``--help`` opens with the module's whole first paragraph, not a line of it cut mid-sentence."""
    import importlib
    import sys

    module = importlib.import_module(f"benchmark.perf.{probe}")
    monkeypatch.setattr(sys, "argv", [f"{probe}.py", "--help"])
    with pytest.raises(SystemExit) as exited:
        module.main()
    assert exited.value.code == 0
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())
    first_paragraph = " ".join(module.__doc__.split("\n\n")[0].split())
    assert description.startswith(first_paragraph) and description.endswith((".", "?")), description
