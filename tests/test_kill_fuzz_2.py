"""Kill fuzz, round 2: a build's worker killed from outside (SIGKILL, the out-of-memory killer) while
it builds. A ``multiprocessing`` Pool replaces a worker that died but never hands its shards to
another, so the build waited for them forever (seen: ``--workers 2``, one worker SIGKILLed mid-shard,
the command still waiting minutes later). Now it ends with one line saying so, nothing left running,
and the rerun gives the reference bytes."""
import multiprocessing
import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest

from builders import distributor
from builders.dataset_card import CHECKSUMS
from builders.distributor import _init_pool_worker
from implicit_concept.worker_processes import WorkerLost, end_pool, pool_results, stopping_workers
from manifests import RECIPES_DIR
from tests.process_table import left_in_session
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
