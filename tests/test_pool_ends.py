"""No wait on a worker process is unbounded: a worker that cannot end by itself (SIGTERM blocked, as a
library may leave it, and a thread that never ends) is killed :data:`WORKER_GRACE_S` after it was
told to end, at a pool's normal end and at a stop alike; the command ends with its usual line and
status, and a rerun gives the reference bytes. Before, the parent waited for such a worker forever
(seen: a resumed 2-worker build at its end, the perf probe's floor pass at a Ctrl-C)."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from builders.dataset_card import CHECKSUMS
from builders.distributor import _init_pool_worker
from implicit_concept import worker_processes
from manifests import RECIPES_DIR
from tests.child_output import read_line
from tests.process_table import _stat, left_in_session
from tests.test_stop_signals import ENV, REPO, _as_from_a_terminal

GRACE_S = 1.0  # the children's WORKER_GRACE_S: the tests wait seconds, not the user's default

STUCK_BUILD = f"""
import sys
from benchmark import cli
from builders import distributor
from implicit_concept import worker_processes
from tests.test_pool_ends import stuck_builder

worker_processes.WORKER_GRACE_S = {GRACE_S}
distributor._init_pool_worker = stuck_builder
sys.exit(cli.main(sys.argv[1:]))
"""


def stuck_builder(*args) -> None:
    """A build's worker (forked or spawned: importable) that cannot end."""
    _init_pool_worker(*args)
    cannot_end()


def cannot_end(released: str | None = None) -> None:
    """SIGTERM blocked, and a thread left waiting (an hour, or until the file ``released`` exists)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # in every thread it starts from now on
    threading.Thread(target=_wait_for, args=(released, time.monotonic() + 3600)).start()  # a process exits once its threads have


def _wait_for(path: str | None, until: float) -> None:
    while not (path and os.path.exists(path)) and time.monotonic() < until:
        time.sleep(0.05)


BUILD = ["build", "icd-debug", "--workers", "2", "--quiet"]


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_terminal)


def _the_reference_bytes_after_a_rerun(out: Path) -> None:
    rerun = subprocess.run([sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--workers", "1", "--out", str(out), "--quiet"],
                           cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()
    assert not list(out.rglob(".*.tmp-*"))


def test_a_build_whose_workers_cannot_end_ends_with_its_work_done(tmp_path):
    out = tmp_path / "out"
    proc = _start(STUCK_BUILD, *BUILD, "--out", str(out))
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        left = left_in_session(proc.pid, 10)  # a worker left running ends a second after its parent: not counted here
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert left == []
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()


@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_a_build_stopped_with_workers_that_cannot_end_ends_within_the_grace(tmp_path, sig, to_group):
    out = tmp_path / "out"
    proc = _start(STUCK_BUILD, *BUILD, "--out", str(out))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(out.rglob("*.tar")):
            time.sleep(0.01)
        assert proc.poll() is None, "the build ended before it was stopped"
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        left = left_in_session(proc.pid, 10)  # a worker left running ends a second after its parent: not counted here
    word = worker_processes.STOP_SIGNALS[sig]
    assert proc.returncode == 128 + sig, err[-3000:]
    assert err.endswith(f"implicit-concept build: {word}; rerun the same command to resume\n") and "Traceback" not in err, err[-3000:]
    assert left == [] and took < 30, took
    _the_reference_bytes_after_a_rerun(out)


EXECUTOR = f"""
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from implicit_concept import worker_processes
from implicit_concept.worker_processes import interrupts, start_worker, stopping_workers
from tests.test_pool_ends import cannot_end

worker_processes.WORKER_GRACE_S = {GRACE_S}

def stuck_worker():
    start_worker()
    cannot_end()

def task(seconds):
    os.write(1, b"working\\n")
    if seconds < 0:  # raises once every other task runs (on a loaded machine one worker took both, one after the other)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.01)
        raise ValueError("a task's error")
    open(sys.argv[1], "w").close()
    time.sleep(seconds)
    return seconds

if __name__ == "__main__":
    try:
        with interrupts():
            with stopping_workers(ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), initializer=stuck_worker)) as pool:
                try:
                    os.write(1, ("done " + str(sum(pool.map(task, [float(s) for s in sys.argv[2:]]))) + "\\n").encode())
                except ValueError:
                    os.write(1, b"error\\n")  # next: the wait for the running task, the only place it sleeps
                    raise
    except KeyboardInterrupt:
        sys.exit(143)
"""


@pytest.mark.parametrize("stopped", [False, True])
def test_an_executor_whose_workers_cannot_end_ends_within_the_grace(stopped, tmp_path):
    proc = _start(EXECUTOR, str(tmp_path / "started"), *(["60", "60"] if stopped else ["0", "0"]))
    try:
        assert read_line(proc) == "working\n"
        if stopped:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        left = left_in_session(proc.pid, 10)  # a worker left running ends a second after its parent: not counted here
    assert (proc.returncode, "Traceback" in err, left) == ((143, False, []) if stopped else (0, False, [])), err[-3000:]
    assert stopped or out.endswith("done 0.0\n"), out


def test_a_stop_while_an_executor_waits_for_its_running_tasks_after_an_error_ends_them(tmp_path):
    """A task raised: the tasks running finish before the error is reported; a Ctrl-C in that wait
    once propagated without ending them, and the interpreter's exit waited for them."""
    proc = _start(EXECUTOR, str(tmp_path / "started"), "-1", "60")
    try:
        assert [proc.stdout.readline() for _ in range(3)] == ["working\n", "working\n", "error\n"]
        deadline = time.monotonic() + 60
        while (_stat(proc.pid) or ["S"])[0] != "S" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (_stat(proc.pid) or ["ended"])[0] == "S", "the parent never waited for its running task"
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        left = left_in_session(proc.pid, 10)
    assert (proc.returncode, left) == (143, []), err[-3000:]


def _returns_and_cannot_end(released: str) -> tuple[int, int]:
    """A child that cannot end until the file ``released`` exists."""
    cannot_end(released)
    return 7, os.getpid()


def test_a_child_that_cannot_end_after_its_result_is_killed(monkeypatch, tmp_path):
    """The child could end by itself only once released, 300 s on (far past the grace, even for a
    spawned child's imports on a loaded machine, which once took 31 s): run_in_child returned before
    that, its child killed. (A bound of 30 s on the whole call failed under load.)"""
    from benchmark.perf.child_process import run_in_child

    monkeypatch.setattr(worker_processes, "WORKER_GRACE_S", GRACE_S)
    released, waited_out = tmp_path / "released", threading.Event()
    release = threading.Timer(300, lambda: (released.touch(), waited_out.set()))
    release.start()
    try:
        value, pid = run_in_child(_returns_and_cannot_end, str(released)).value
    finally:
        release.cancel()
        release.join()
        released.touch()
    assert not waited_out.is_set(), "run_in_child waited for its child to end by itself"
    assert value == 7 and not Path(f"/proc/{pid}").exists()
