"""A pool worker's own children (a DataLoader's workers, a command a method runs, a shell pipeline)
end with the worker, however the command stops: its parent killed (SIGKILL), stopped (SIGTERM: the
pool terminates its workers), or a worker that cannot end killed after the grace. Before, each of
these left the worker's children running, re-parented, for as long as they ran (the ``--jobs``
worker's child orphaned when the worker was killed)."""
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from implicit_concept import worker_processes
from implicit_concept.worker_processes import start_worker
from tests.process_table import left_in_session
from tests.test_pool_ends import GRACE_S, _start, cannot_end

JOBS = f"""
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
from implicit_concept import worker_processes
from implicit_concept.worker_processes import interrupts, stopping_workers, workers_starting
from tests.test_worker_children import start_job_worker, task

worker_processes.WORKER_GRACE_S = {GRACE_S}

if __name__ == "__main__":
    try:
        with interrupts():
            with stopping_workers(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=start_job_worker,
                                                      initargs=(sys.argv[2] == "stuck",))) as pool:
                with workers_starting():
                    running = pool.submit(task, sys.argv[1])
                running.result()
    except KeyboardInterrupt:
        sys.exit(143)
"""


def start_job_worker(stuck: bool) -> None:
    start_worker()
    if stuck:  # SIGTERM blocked: killed after the grace
        cannot_end()


def task(kind: str) -> None:
    if kind == "pipeline":  # a command whose shell starts commands of its own: the worker's grandchildren
        child = subprocess.Popen(["sh", "-c", "sleep 600 | sleep 600"])
    else:  # a library's helper process, started as a DataLoader starts its workers, with no watch of its own
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,))
        child.start()
    os.write(1, (str(child.pid) + "\n").encode())
    time.sleep(600)


@pytest.mark.parametrize("kind", ["pipeline", "process"])
@pytest.mark.parametrize("stop, state", [("SIGKILL", "normal"), ("SIGTERM", "normal"), ("SIGTERM", "stuck")])
def test_a_workers_children_end_with_it_however_the_command_stops(kind, stop, state):
    proc = _start(JOBS, kind, state)
    try:
        child = int(proc.stdout.readline())
        os.kill(proc.pid, getattr(signal, stop))
        proc.wait(timeout=60)  # not its output's end: a child left running holds the pipe
    finally:
        left = left_in_session(proc.pid, 15)  # the worker looks at its parent once a second
        proc.stdout.close()
        proc.stderr.close()
    assert (proc.returncode, left) == (-9 if stop == "SIGKILL" else 143, []), f"child {child} and others left running"


def test_the_processes_below_one_are_its_whole_tree_and_no_other():
    """What a worker ends: its children, theirs, and none of the processes beside it."""
    tree = subprocess.Popen(["sh", "-c", "sh -c 'sleep 600; :' & wait"])  # a child shell, and its sleep below it
    beside = subprocess.Popen(["sleep", "600"])
    found: list[int] = []
    try:
        for _ in range(1000):  # until both shells have started their children
            found = worker_processes._descendants(tree.pid)
            if len(found) == 2:
                break
            time.sleep(0.01)
        child = [pid for pid in found if _parent(pid) == tree.pid]
        assert len(child) == 1 and [_parent(pid) for pid in found if pid not in child] == child
        assert beside.pid not in found and os.getpid() not in found
    finally:
        for pid in [*found, tree.pid, beside.pid]:
            with contextlib.suppress(ProcessLookupError):  # ended with its parent already
                os.kill(pid, signal.SIGKILL)
        tree.wait()
        beside.wait()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


FORKER = """
import os, time
while True:  # a child every 2 ms
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "600"])
    time.sleep(0.002)
"""


def test_a_tree_that_forks_while_it_is_ended_leaves_nothing_running():
    """A process forked between the listing of the processes below one and their kill was missed and
    outlived them, re-parented (seen in a worker whose shell pipeline was still starting): they are
    stopped first, and listed again until no new one shows."""
    forker = subprocess.Popen([sys.executable, "-c", FORKER], start_new_session=True)  # re-parented, they keep its session
    try:
        for _ in range(1000):  # until it is forking
            if len(worker_processes._descendants(forker.pid)) >= 20:
                break
            time.sleep(0.01)
        worker_processes._kill_all(worker_processes._stopped_below(forker.pid, stop_it=True))
    finally:
        forker.kill()
        forker.wait()
    left = left_in_session(forker.pid, 5)  # killed ones leave once their new parent reaps them
    assert left == [], f"{len(left)} processes forked while the tree was ended left running"
