"""Kill fuzz of the debug benchmark: the same command killed at a seeded random moment of a stage
(a fine-tune past its first checkpoint, generation, scoring, the report, the detector), by the ways a
command is stopped (SIGKILL to its process group or to the main process alone, SIGTERM, Ctrl-C),
twice in a row, and again during the resume, then rerun to its end, gives the uninterrupted run's
files: every image, weight, checkpoint, score, record and report, byte for byte but for the fields
that hold wall times, and leaves no process of its session behind.

Every run, the uninterrupted one too, is made in the same folder (each moved aside when done), so
the paths the records hold are the same and compared as bytes."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.process_table import left_in_session

pytestmark = pytest.mark.slow

METHODS = ("base", "sd", "esd", "ge-full")
#: A file whose first appearance marks a stage (under the work folder); the kill lands a seeded
#: random delay after it, so the stage is reached on a loaded machine as on an idle one.
STAGES = {
    "detector": "cache/detectors/*/dataset/labels/*/*",
    "fine-tune": "runs/debug/models/icd-qrcode/*/checkpoints/step-*",
    "generation": "runs/debug/images/icd-qrcode/sd/*.png",
    "scoring": "runs/debug/images/icd-qrcode/esd/7_0.png",
    "report": "runs/debug/results.json",
}
STOPS = {
    "SIGKILL to the group": lambda pid: os.killpg(pid, signal.SIGKILL),
    "SIGKILL to the main process": lambda pid: os.kill(pid, signal.SIGKILL),
    "SIGTERM": lambda pid: os.kill(pid, signal.SIGTERM),
    "Ctrl-C": lambda pid: os.killpg(pid, signal.SIGINT),
}
#: Fields documented as wall times (``timings``, the detector's ``timing_s``, a fine-tune's seconds,
#: a seal's file times), a fine-tune's numbers of its last session alone (``*_this_session``: a
#: resume from its last checkpoint trains nothing), and the lines that print the times.
TIMED_KEYS = re.compile(r"timings|timing_s|seconds|mtime_ns|^train_s$|_this_session$")
TIMED_LINES = (b"wall clock", b"sum over")


def _command(work: Path) -> list[str]:
    return [sys.executable, "-m", "benchmark.cli", "benchmark", "--track", "debug", "--runs", str(work / "runs"),
            "--data", str(work.parent / "data"), "--cache", str(work / "cache"), "--quiet",
            *[a for m in METHODS for a in ("--method", m)]]


def _start(work: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    with open(work.parent / "fuzz.log", "ab") as log:
        return subprocess.Popen(_command(work), env=env, start_new_session=True, stdout=log, stderr=log)


def _ended(proc: subprocess.Popen) -> int:
    """The command's exit status, once it and every process of its session have ended."""
    rc = proc.wait(timeout=900)
    assert not left_in_session(proc.pid, 30), f"processes of the stopped command outlived it (exit {rc})"
    return rc


#: The latest a kill lands after its stage's mark, in seconds; a fine-tune is stopped at once past its
#: first checkpoint (step 2 of 4), so that its resume has steps left to train from it.
LATEST_S = {"fine-tune": 0.0}


def _stop(work: Path, stage: str, stop: str, rng: random.Random) -> tuple[str, list[Path]]:
    """Start the command, stop it in ``stage``; what it did, and the stage's marks when it was stopped."""
    proc = _start(work)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not list(work.glob(STAGES[stage])):
        time.sleep(0.02)
    time.sleep(rng.uniform(0, LATEST_S.get(stage, 1.5)))
    marks = list(work.glob(STAGES[stage]))
    if proc.poll() is None:
        STOPS[stop](proc.pid)
    rc = _ended(proc)
    assert rc in (0, -signal.SIGKILL, 130, 143), f"{stop} at {stage}: exit {rc}: {(work.parent / 'fuzz.log').read_bytes()[-3000:]!r}"
    return f"{stop} at {stage}: exit {rc}", marks


def _examples_seen(run_file: Path) -> int:
    return json.loads(run_file.read_text())["examples_seen_this_session"]


def _without_times(value):
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not TIMED_KEYS.search(k)}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def _content(path: Path) -> bytes:
    """What must be the same bytes: a lock file's pid and the wall times left out."""
    data = path.read_bytes()
    if path.name.endswith(".lock") or path.name == "results.html":  # a pid; the page inlines results.md and the timings
        return b""
    if path.suffix == ".json":
        return json.dumps(_without_times(json.loads(data)), sort_keys=True).encode()
    if path.suffix in (".md", ".csv"):
        lines = data.split(b"\n")
        if path.name == "results.csv":  # ultralytics' epoch log: its second column is the time
            lines = [b",".join(line.split(b",")[:1] + line.split(b",")[2:]) for line in lines]
        return b"\n".join(line for line in lines if not any(t in line for t in TIMED_LINES))
    return data


#: Libraries' own files under ``--cache``, none a result: matplotlib's font cache, and ultralytics'
#: settings, whose ``uuid`` hashes the machine's MAC address, a random one in each process where
#: there is none (CI runs the suite in a network namespace with only loopback).
NOT_RESULTS = ("matplotlib", "Ultralytics")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): _content(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not set(NOT_RESULTS) & set(p.parts)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--out", str(root / "data" / "icd-debug"),
                    "--workers", "1"], env=env, check=True, capture_output=True)
    work = root / "work"
    work.mkdir()
    assert _ended(_start(work)) == 0
    work.rename(root / "uninterrupted")
    return root, _files(root / "uninterrupted")


def _trials():
    """Three of the fuzz's cases, each a full debug benchmark (a few minutes): a fine-tune stopped past
    its first checkpoint, two kills in a row (group, then main process alone), and a kill during the
    resume. The fuzz of all six stages by all four stops resumed identically too (kill-fuzz's merge)."""
    return [[("fine-tune", "SIGTERM")],
            [("generation", "SIGKILL to the group"), ("scoring", "SIGKILL to the main process")],
            [("detector", "Ctrl-C"), ("report", "SIGKILL to the main process")]]


@pytest.mark.parametrize("kills", _trials(), ids=lambda kills: " then ".join(f"{s}@{k}" for s, k in kills))
def test_a_benchmark_killed_anywhere_resumes_to_the_uninterrupted_files(uninterrupted, kills):
    root, expected = uninterrupted
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    rng = random.Random(repr(kills))
    stopped = [_stop(work, stage, stop, rng) for stage, stop in kills]
    done = [what for what, _ in stopped]
    assert _ended(_start(work)) == 0, done
    for (stage, _), (_, marks) in zip(kills, stopped):
        if stage == "fine-tune":  # resumed from its checkpoint, not trained again from the start nor finished already
            run_files = {mark.parents[1].relative_to(work) / "run.json" for mark in marks}
            seen = [(_examples_seen(work / f), _examples_seen(root / "uninterrupted" / f)) for f in sorted(run_files)]
            assert seen and all(0 < resumed < whole for resumed, whole in seen), (done, seen)
    resumed = _files(work)
    assert not [p for p in resumed if ".tmp-" in p], f"a killed writer's temporary is left: {done}"
    assert sorted(resumed) == sorted(expected), (done, sorted(set(resumed) ^ set(expected)))
    assert [p for p in expected if resumed[p] != expected[p]] == [], done
