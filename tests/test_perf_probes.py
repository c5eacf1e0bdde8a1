"""The perf probes' parts that need no GPU: measuring in a child process, the GPU probe's plan,
budget and report, and its refusal to run without CUDA; the scoring-speed probe run as written."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

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

    from tests.process_table import left_in_group
    from tests.test_fs_faults import ENV

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
    assert left_in_group(proc.pid, 10) == []  # the child looks at its parent once a second


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


PROBES = ["build_speed", "gpu_paper_probe", "hostile_inputs", "interval_coverage", "paper_dry_run", "scoring_speed", "training_speed"]

CALL_MAINS = """
import contextlib, io, json, sys
from importlib import import_module

calls = json.loads(sys.argv[1])
results = []
for probe, argv in calls:
    main = import_module("benchmark.perf." + probe).main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    results.append([code, err.getvalue(), out.getvalue()])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "ultralytics") if m in sys.modules)
print(json.dumps({"results": results, "heavy": heavy}))
"""


def _call_mains(calls: list[tuple[str, list[str]]]) -> dict:
    """Each probe's ``main(argv)`` in one fresh interpreter: exit codes, stderr, stdout, and which heavy
    libraries were imported by the end."""
    import subprocess
    import sys

    from tests.test_fs_faults import ENV

    done = subprocess.run([sys.executable, "-c", CALL_MAINS, json.dumps(calls)], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_probe_answers_help_before_importing_torch():
    """``--help`` took 3 to 9 s: torch, diffusers and ultralytics were imported with the probe's module."""
    found = _call_mains([(probe, ["--help"]) for probe in PROBES])
    for probe, (code, err, out) in zip(PROBES, found["results"]):
        assert code == 0 and f"python -m benchmark.perf.{probe}" in out and err == "", (probe, code, err)
    assert found["heavy"] == []


def test_every_probe_refuses_a_bad_argument_on_one_line_before_any_work(tmp_path):
    """A negative count, a missing folder, an output that cannot be written (a file stands where its
    folder would be made: an hour's figures lost at the end) or a folder given for a file: one line
    naming the argument and the problem, exit 2, before torch is imported. Before, a count of -3 ran
    (or failed deep inside with a traceback), a missing folder was a traceback after the imports, and
    an unwritable ``--json`` was found after measuring."""
    a_file = tmp_path / "a file"
    a_file.write_text("")
    missing = str(tmp_path / "missing")
    under_a_file = str(a_file / "probe.json")
    cases = [
        ("build_speed", ["--images", "-3"], "--images", "-3"),
        ("build_speed", ["--sizes", "64", "0"], "--sizes", "0"),
        ("scoring_speed", [missing], "images", missing),
        ("scoring_speed", ["--detector", missing], "--detector", missing),
        ("scoring_speed", ["--limit", "0"], "--limit", "0"),
        ("scoring_speed", ["--conf", "nan"], "--conf", "nan"),
        ("training_speed", ["--data", missing], "--data", missing),
        ("training_speed", ["--steps", "-1"], "--steps", "-1"),
        ("training_speed", ["--json", under_a_file], "--json", str(a_file)),
        ("training_speed", ["--json", str(tmp_path)], "--json", "a folder"),
        ("interval_coverage", ["--trials", "0"], "--trials", "0"),
        ("interval_coverage", ["--n", "-200"], "--n", "-200"),
        ("hostile_inputs", ["--keep", str(a_file)], "--keep", "a file, where a folder is to be written"),
        ("hostile_inputs", ["--keep", str(tmp_path)], "--keep", "not empty"),  # the last run's FIFO: FileExistsError
        ("paper_dry_run", ["--out", str(a_file)], "--out", str(a_file)),
        ("paper_dry_run", ["--source", missing], "--source", missing),
        ("paper_dry_run", ["--images", "-4"], "--images", "-4"),
        ("gpu_paper_probe", ["--budget", "-5"], "--budget", "-5"),
        ("gpu_paper_probe", ["--json", under_a_file], "--json", str(a_file)),
    ]
    found = _call_mains([(probe, argv) for probe, argv, _, _ in cases])
    for (probe, argv, argument, problem), (code, err, out) in zip(cases, found["results"]):
        assert code == 2 and out == "", (probe, argv, code, err)
        assert len(err.splitlines()) == 1 and argument in err and problem in err, (probe, argv, err)
    assert found["heavy"] == []
    assert a_file.read_text() == ""


def test_the_dry_run_refuses_an_unknown_track_on_one_line(capsys):
    from benchmark.perf import paper_dry_run

    with pytest.raises(SystemExit) as exited:
        paper_dry_run.main(["--track", "no-such-track", "--out", "unused"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--track: no-such-track: no such track file" in err, err


def test_build_speed_reads_the_arguments_it_is_given(capsys):
    """``main(argv)`` ignored ``argv`` (it read ``sys.argv``); a run too short for the CPU clock's
    10 ms ticks divided by zero."""
    from benchmark.perf import build_speed

    assert build_speed.main(["--images", "3", "--source-side", "32", "--sizes", "16", "--shard-size", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 source JPEGs at 32 px") and "   16       2 " in out, out


FLOOR_PASSES = """
import sys
from pathlib import Path
from benchmark.perf import probe_cli
from benchmark.perf.build_speed import floor_pass, make_source_folder

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
make_source_folder(folder, 100, 128)
print("measuring", flush=True)

def main(argv):
    while True:
        floor_pass(folder, out, 16, 1, 2)

sys.exit(probe_cli.run(main))
"""


@pytest.mark.parametrize("probe", ["interval_coverage", "build_speed's floor pass"])
def test_a_probe_stopped_by_ctrl_c_says_so_on_one_line_and_exits_130(probe, tmp_path):
    """Ctrl-C printed a KeyboardInterrupt traceback, from the probe and from each worker of the
    floor pass's pool; now one line and exit status 130, as ``implicit-concept``."""
    import subprocess
    import sys
    import time

    from tests.test_fs_faults import ENV

    if probe == "interval_coverage":
        command, started = ["-m", "benchmark.perf.interval_coverage", "--trials", "100000"], "One seed"
    else:
        command, started = ["-c", FLOOR_PASSES, str(tmp_path / "src"), str(tmp_path / "floor")], "measuring"
    proc = subprocess.Popen([sys.executable, *command], env={**ENV, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    assert started in line, proc.communicate(timeout=60)[1]
    time.sleep(1)  # measuring: the floor pass's workers are running
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.endswith(": interrupted\n"), err


def test_a_hostile_build_stopped_ends_its_child_and_leaves_no_timer(tmp_path):
    """The build's child outlived a Ctrl-C, and the 600 s timer meant to kill a hung build kept the
    stopped probe's interpreter from exiting for ten minutes."""
    import threading
    import time

    from benchmark.perf import hostile_inputs

    raw = _a_long_build()
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job's SIGINT is ignored
    interrupt = threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT))
    interrupt.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            hostile_inputs.build_in_child(raw, tmp_path / "out")
    finally:
        interrupt.cancel()
        signal.signal(signal.SIGINT, before)
    interrupt.join()
    deadline = time.monotonic() + 10  # a cancelled timer's thread ends at once; one left running waits 600 s
    while time.monotonic() < deadline and any(isinstance(t, threading.Timer) for t in threading.enumerate()):
        time.sleep(0.1)
    assert [t for t in threading.enumerate() if isinstance(t, threading.Timer)] == []
    assert _building_in(tmp_path) == []


def test_a_hostile_build_stopped_while_its_kill_timer_starts_ends_its_child(tmp_path, monkeypatch):
    """A Ctrl-C landing while the kill timer's thread started (before the wait's try) left the build
    child running, and the timer, not yet a daemon, could hold the probe's exit for ten minutes."""
    import threading

    from benchmark.perf import hostile_inputs

    started: list[threading.Timer] = []

    class StoppedWhileStarting(threading.Timer):
        def start(self) -> None:
            started.append(self)
            raise KeyboardInterrupt

    monkeypatch.setattr(hostile_inputs.threading, "Timer", StoppedWhileStarting)
    raw = _a_long_build()
    with pytest.raises(KeyboardInterrupt):
        hostile_inputs.build_in_child(raw, tmp_path / "out")
    assert [t.daemon for t in started] == [True]
    assert _building_in(tmp_path) == []


def _a_long_build() -> dict:
    """A hostile-input probe's recipe whose build runs far longer than a test waits."""
    from benchmark.perf import hostile_inputs

    raw = hostile_inputs.recipe("stopped", {"kind": "procedural", "train": 5000, "test": 0})
    raw["source"].pop("test_fraction")
    return raw


def _building_in(folder: Path) -> list[Path]:
    """The processes whose command line names ``folder`` (a probe's build child)."""
    return [p for p in Path("/proc").glob("[0-9]*") if str(folder).encode() in _cmdline(p)]


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_probe_given_inputs_the_library_refuses_says_which_on_one_line(tmp_path, capsys):
    """A folder with no images, or one that holds no detector: a traceback ending in the library's
    ValueError; now its message on one line, exit 2, as ``implicit-concept score`` gives it (the
    images are read before the detector loads, so an empty folder is refused in a second)."""
    from PIL import Image

    from benchmark.perf import probe_cli, scoring_speed

    empty, images, not_a_detector = tmp_path / "empty", tmp_path / "images", tmp_path / "not a detector"
    for folder in (empty, images, not_a_detector):
        folder.mkdir()
    Image.new("RGB", (64, 64)).save(images / "a.png")
    for argv, problem in (([str(empty)], f"{empty}: no image files"),
                          ([str(images), "--detector", str(not_a_detector)], f"{not_a_detector}: no detector.safetensors")):
        assert probe_cli.run(scoring_speed.main, argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and ": error: " + problem in err, err


def test_a_probes_json_goes_into_a_folder_it_makes(tmp_path, monkeypatch, capsys):
    """``--json reports/probe.json`` with no ``reports`` yet: the write at the end failed, after the
    whole measurement. The GPU and the measuring are faked; main's own ending is what runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 2**30})())
    monkeypatch.setattr(gpu_paper_probe, "_measure", lambda *a: {"training": [{"step_seconds_median": 0.1}]})
    out = tmp_path / "reports" / "probe.json"
    assert gpu_paper_probe.main(["--json", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)


def test_a_probe_piped_into_head_stops_quietly():
    """``python -m benchmark.perf.interval_coverage | head -1`` ended in a BrokenPipeError traceback;
    now it stops as ``implicit-concept`` does, as a program killed by SIGPIPE (141), saying nothing."""
    import subprocess
    import sys

    from tests.test_fs_faults import ENV

    proc = subprocess.Popen([sys.executable, "-m", "benchmark.perf.interval_coverage", "--trials", "2"], env={**ENV, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"One seed")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_the_paper_probes_procedural_folder_is_reused_only_for_the_run_it_was_made_for(tmp_path, monkeypatch):
    """A dry run rerun in the same work folder with another ``--images`` measured the last run's
    images and reported them as its own; a run killed while writing them left a folder of some of
    them that the next run took as finished."""
    from benchmark.perf import paper_data

    folder = paper_data.procedural_folder(tmp_path / "source", 2, seed=0)
    made = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sum(name.endswith(".jpg") for name in made) == 3  # two train images and one test image
    assert paper_data.procedural_folder(tmp_path / "source", 2, seed=0) == folder
    for train, seed in ((3, 0), (2, 1)):
        with pytest.raises(ValueError, match=rf"source: holds the procedural images of another run \(2 train images with seed 0\), not {train} .* seed {seed}"):
            paper_data.procedural_folder(tmp_path / "source", train, seed=seed)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == made  # refused, nothing touched

    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="mine: holds no procedural images of this version's making"):
        paper_data.procedural_folder(tmp_path / "mine", 2)

    class Killed(Exception):
        pass

    calls = []

    def dies_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return original(self, *args, **kwargs)

    original = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", dies_at_the_second)
    with pytest.raises(Killed):
        paper_data.procedural_folder(tmp_path / "again", 2, seed=0)
    monkeypatch.undo()
    assert not (tmp_path / "again").exists()
    again = paper_data.procedural_folder(tmp_path / "again", 2, seed=0)
    assert {p.name: p.read_bytes() for p in again.iterdir()} == made


def test_a_number_argument_takes_its_bounds_and_refuses_what_is_not_finite():
    """``from low to high`` includes both ends (a ``--conf`` of 0 or 1 is a threshold); ``inf`` is no
    budget or count a probe can measure with, and ``nan`` compares as nothing."""
    import argparse

    from benchmark.perf.probe_cli import number

    assert (number(0, 1)("0"), number(0, 1)("1"), number(2)("2.5")) == (0.0, 1.0, 2.5)
    for parse, text in ((number(0), "inf"), (number(0), "nan"), (number(0, 1), "1.01"), (number(0, 1), "-0.1"), (number(0), "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match="^expected a number >= 0, got inf$"):
        number(0)("inf")
    with pytest.raises(argparse.ArgumentTypeError, match="^expected a number from 0 to 1, got 2$"):
        number(0, 1)("2")


def test_an_output_below_a_file_is_named_as_such(tmp_path):
    """``--json a-file/probe.json``: the file is named as not a folder, not as a permission problem
    (as root, or for a file with an x bit, it was let through, to fail after the measuring)."""
    import argparse

    from benchmark.perf.probe_cli import output

    a_file = tmp_path / "a file"
    a_file.write_text("")
    a_file.chmod(0o755)
    with pytest.raises(argparse.ArgumentTypeError, match=f"cannot be made below {a_file}, which is not a folder$"):
        output("file")(str(a_file / "probe.json"))


def test_a_probe_whose_reader_left_before_its_buffered_output_stops_quietly(monkeypatch):
    """A probe's last lines wait in stdout's buffer until it ends: a reader gone by then (a pipe
    closed early) failed at the interpreter's own flush ("Exception ignored ... BrokenPipeError",
    exit 120) unless the flush is made where the run ends."""
    import sys

    from benchmark.perf import probe_cli

    read, write = os.pipe()
    os.close(read)  # the reader has gone
    with open(write, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert probe_cli.run(lambda argv: print("a figure")) == 141

