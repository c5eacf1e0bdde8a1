"""Kill fuzz, round 2: a build's worker killed from outside (SIGKILL, the out-of-memory killer) while
it builds. A ``multiprocessing`` Pool replaces a worker that died but never hands its shards to
another, so the build waited for them forever (seen: ``--workers 2``, one worker SIGKILLed mid-shard,
the command still waiting minutes later). Now it ends with one line saying so, nothing left running,
and the rerun gives the reference bytes."""
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from builders import distributor
from builders.dataset_card import CHECKSUMS
from builders.distributor import _init_pool_worker
from implicit_concept.worker_processes import WorkerLost, end_pool, pool_results, stopping_workers
from manifests import RECIPES_DIR
from tests.process_table import left_in_session, running_children
from tests.test_kill_fuzz import STOPS, _ended, _files
from tests.test_stop_signals import ENV, REPO

#: The source shard whose group the worker that builds it dies on (icd-debug has three groups).
DIES_ON = ("train", 1)

DYING_BUILD = """
import sys
from benchmark import cli
from builders import distributor
from tests.test_kill_fuzz_2 import dying_worker

distributor._init_pool_worker = dying_worker
sys.exit(cli.main(sys.argv[1:]))
"""


def dying_worker(*args) -> None:
    """A build's worker (forked or spawned: importable) that is SIGKILLed when it starts the group :data:`DIES_ON`."""
    _init_pool_worker(*args)
    build = distributor._worker.build

    def build_or_die(units, out):
        if (units[0].split, units[0].shard_id) == DIES_ON:
            os.kill(os.getpid(), signal.SIGKILL)
        return build(units, out)

    distributor._worker.build = build_or_die


def test_a_build_whose_worker_is_killed_ends_with_one_line_and_resumes_to_the_reference_bytes(tmp_path):
    out = tmp_path / "out"
    build = ["build", "icd-debug", "--workers", "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", DYING_BUILD, *build], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=180)  # before the fix: waited for the dead worker's shards forever
    finally:
        left = left_in_session(proc.pid, 10)
    assert proc.returncode == 2, err[-3000:]
    assert err.startswith("implicit-concept build: error: a worker process (pid ") and err.count("\n") == 1, err[-3000:]
    assert err.endswith(f"ended by signal {signal.SIGKILL.value} before its task was done (killed, out of memory?); "
                        "the shards finished are kept: rerun the same command to resume\n"), err
    assert left == []
    rerun = subprocess.run([sys.executable, "-m", "benchmark.cli", *build], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()
    assert not list(out.rglob(".*.tmp-*"))


def _dies_on_one(task: int) -> int:
    if task == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return task


@pytest.mark.timeout(60)  # before the fix: waited for the dead worker's task forever
def test_pool_results_of_a_pool_whose_worker_died_with_its_task_raise_worker_lost():
    pool = multiprocessing.get_context("spawn").Pool(2)
    try:
        with pytest.raises(WorkerLost, match=rf"^a worker process \(pid \d+\) ended by signal {signal.SIGKILL.value} before its task was done"):
            list(pool_results(pool, _dies_on_one, range(4)))
    finally:
        end_pool(pool)


def test_pool_results_are_every_task_s_when_no_worker_dies():
    pool = multiprocessing.get_context("spawn").Pool(2)
    try:
        assert sorted(pool_results(pool, _dies_on_one, [0, 2, 3, 5])) == [0, 2, 3, 5]
    finally:
        end_pool(pool)


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_executor_whose_worker_died_with_its_task_raises_worker_lost_in_one_line(jobs):
    """As ``--jobs 2``'s fine-tunes and methods run: a worker killed from outside was a traceback
    ending in BrokenProcessPool's own words, exit 1."""
    with pytest.raises(WorkerLost, match=r"^a worker process ended before its task was done \(killed, out of memory\?\); "
                                         r"rerun the same command to resume$"):
        with stopping_workers(ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))) as pool:
            list(pool.map(_dies_on_one, range(4)))


# The fuzz of what round 1 left alone, each stop at a seeded moment of its stage, then the same
# command to its end: the files of a run that never stopped. Pipelines: slow.

#: Round 1's stops, and one pool worker killed on its own.
ALL_STOPS = {**STOPS, "SIGKILL to one worker": lambda pid: os.kill(_workers_of(pid)[0], signal.SIGKILL)}


def _workers_of(pid: int) -> list[int]:
    """``pid``'s pool workers: its children but the resource tracker."""
    return [child for child in running_children(pid) if b"resource_tracker" not in _cmdline(child)]


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def _stopped(command: list[str], log: Path, ready, stop: str, seed: str) -> int:
    """Start ``command``, wait for ``ready()``, a seeded moment more, then ``stop`` it; its exit status,
    once nothing of its session runs."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=REPO, env={**ENV, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not ready(proc):
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 0.5))
    if proc.poll() is None:
        ALL_STOPS[stop](proc.pid)
    rc = _ended(proc)
    assert rc in (0, 2, 128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGKILL), f"{stop}: exit {rc}: {log.read_bytes()[-3000:]!r}"
    return rc


def _run(command: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        assert subprocess.run(command, cwd=REPO, env={**ENV, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=out, timeout=900).returncode == 0, \
            log.read_bytes()[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGKILL to the group", "SIGKILL to one worker", "SIGTERM", "Ctrl-C"])
def test_a_two_worker_build_stopped_while_it_writes_resumes_to_the_reference_bytes(tmp_path, stop):
    out = tmp_path / "icd-debug"
    command = [sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--workers", "2", "--quiet", "--out", str(out)]
    writing = lambda proc: len(_workers_of(proc.pid)) == 2 and any(p.is_file() for p in out.glob("icd-*/*/*"))  # noqa: E731
    _stopped(command, tmp_path / "log", writing, stop, stop)
    _run(command, tmp_path / "log")
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def _detector_command(data: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "benchmark.cli", "detector", "train", str(data / "icd-mixed"), "--out", str(work / "out"),
            "--scale", "debug", "--cache", str(work / "cache")]


@pytest.fixture(scope="module")
def trained_detector(debug_dataset, tmp_path_factory):
    """The uninterrupted training's files, trained once for every stop; each test trains again in the
    same ``work`` folder, so the paths the records hold are the same and compared as bytes."""
    root = tmp_path_factory.mktemp("detector")
    _run(_detector_command(debug_dataset, root / "work"), root / "log")
    (root / "work").rename(root / "uninterrupted")
    return root, _files(root / "uninterrupted")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGKILL to the group", "SIGTERM"])
def test_detector_training_stopped_mid_epochs_trains_again_to_the_same_files(debug_dataset, trained_detector, tmp_path, stop):
    """Detector training has no checkpoint: the rerun trains from epoch 1, to the same weights,
    records and plots, trusting nothing the stopped one left (the session's icd-debug, which it only reads)."""
    root, uninterrupted = trained_detector
    work = root / "work"
    shutil.rmtree(work, ignore_errors=True)
    command = _detector_command(debug_dataset, work)
    _stopped(command, tmp_path / "log", lambda proc: (work / "out" / "train").is_dir(), stop, stop)
    _run(command, tmp_path / "log")
    assert _files(work) == uninterrupted


PRETRAIN = "import sys; from benchmark.track import load_track; from benchmark.models.base_model import pretrain_base; " \
           "pretrain_base(load_track('debug').base_model_config(), sys.argv[1], progress=False)"


@pytest.mark.slow
def test_base_training_killed_past_its_first_checkpoint_resumes_to_the_same_weights(tmp_path):
    """The debug track's base (not published: the benchmark trains it) killed once its step-5
    checkpoint is written resumes from it to the uninterrupted training's files."""
    command = [sys.executable, "-c", PRETRAIN, str(tmp_path / "bases")]
    _run(command, tmp_path / "log")
    (tmp_path / "bases").rename(tmp_path / "uninterrupted")
    _stopped(command, tmp_path / "log", lambda proc: any((tmp_path / "bases").glob("*/diffusion/checkpoints/step-0000005")),
             "SIGKILL to the group", "base")
    resumed_from = sorted(p.name for p in (tmp_path / "bases").glob("*/diffusion/checkpoints/step-*"))
    _run(command, tmp_path / "log")
    assert resumed_from and _files(tmp_path / "bases") == _files(tmp_path / "uninterrupted"), resumed_from
