"""Tests that kill hand mutants of the last round's code the suite let pass: ending a process's
tree (a child forking while it is ended, a worker killed while it forks, a child left running that
forks or that SIGTERM ends at once, the resource tracker spared), a ``pipe:`` command's guard (its
stdin, a command that ignores SIGTERM, curl missing, a fork refused), a gzipped stream's tar closed
early, a pipeline folder's JSON check, the suite's guard of the recursion limit, print options and
logging switches, and kept_rngs itself."""
import io
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from implicit_concept import worker_processes
from tests.process_table import left_in_group, left_in_session, running_children

REPO = Path(__file__).resolve().parents[1]

FORKS_BELOW = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1]]).wait()
"""

FORKER = """
import os, time
while True:  # a child every 2 ms
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "600"])
    time.sleep(0.002)
"""


def test_a_child_that_forks_while_its_parents_tree_is_ended_leaves_nothing_running():
    """The process ended is not stopped (a worker's SIGTERM, a child left running): the child below
    it forks on until it is stopped, and what it forked meanwhile is found only by listing again."""
    parent = subprocess.Popen([sys.executable, "-c", FORKS_BELOW, FORKER], start_new_session=True)
    try:
        for _ in range(1000):  # until its child is forking
            if len(worker_processes._descendants(parent.pid)) >= 20:
                break
            time.sleep(0.01)
        found = worker_processes._stopped_below(parent.pid)
        running = _not_stopped(found)
        worker_processes._kill_all(found)
    finally:
        parent.kill()
        parent.wait()
    left = left_in_session(parent.pid, 5)
    assert running == [] and left == [], f"{len(running)} listed were not stopped, {len(left)} left running"


def _not_stopped(pids: list[int]) -> list[int]:
    """Those of ``pids`` not stopped (SIGSTOP) once the signals sent have been taken (a bounded wait)."""
    running = pids
    for _ in range(500):
        running = [pid for pid in running if _state(pid) not in ("T", "Z", None)]
        if not running:
            break
        time.sleep(0.01)
    return running


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:  # ended and reaped
        return None


def _fork_forever() -> None:
    os.setsid()  # what it forks keeps its session once re-parented: found by it
    exec(FORKER)


def test_a_worker_killed_after_the_grace_while_it_forks_leaves_nothing_running():
    """A stuck worker is killed with its tree: it is stopped before its tree is listed, or what it
    forks between the listing and its kill outlives it, re-parented."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_fork_forever)
    process.start()
    try:
        for _ in range(3000):  # until it is forking (a spawned process imports first)
            if len(worker_processes._descendants(process.pid)) >= 20:
                break
            time.sleep(0.01)
        worker_processes._kill(process)
    finally:
        process.kill()
        process.join()
    left = left_in_session(process.pid, 5)
    assert left == [], f"{len(left)} processes it forked while it was killed left running"


def _run_a_decoder(pid_file: str) -> None:
    os.setsid()  # its decoder keeps its session once re-parented: found by it
    Path(pid_file).write_text(str(subprocess.Popen(["sleep", "600"]).pid))
    time.sleep(600)


def test_a_child_left_running_that_sigterm_ends_at_once_is_ended_with_its_own_child(tmp_path):
    """A child a plug-in left running is asked to end only once the processes below it are listed
    and stopped: one that SIGTERM ends at once would leave its decoder re-parented, unlisted."""
    import multiprocessing

    from implicit_concept.worker_processes import end_with_its_tree

    process = multiprocessing.get_context("spawn").Process(target=_run_a_decoder, args=(str(tmp_path / "decoder"),))
    process.start()
    try:
        for _ in range(3000):  # until its decoder runs (a spawned process imports first)
            if (tmp_path / "decoder").exists() and (tmp_path / "decoder").read_text():
                break
            time.sleep(0.01)
        end_with_its_tree(process)
    finally:
        process.kill()
        process.join()
    assert process.exitcode == -signal.SIGTERM
    assert left_in_session(process.pid, 5) == [], "its decoder was left running, re-parented"


def test_a_child_left_running_that_forks_while_it_is_ended_leaves_nothing_running():
    """A child a plug-in left running (a prefetcher starting decoders) was not stopped while the
    processes below it were listed: what it forked after the listing outlived it, re-parented (2 of
    3 runs left one or two running). It is stopped first, then asked to end once they are killed."""
    import multiprocessing

    from implicit_concept.worker_processes import end_with_its_tree

    process = multiprocessing.get_context("spawn").Process(target=_fork_forever)
    process.start()
    try:
        for _ in range(3000):  # until it is forking (a spawned process imports first)
            if len(worker_processes._descendants(process.pid)) >= 20:
                break
            time.sleep(0.01)
        end_with_its_tree(process)
    finally:
        process.kill()
        process.join()
    assert process.exitcode == -signal.SIGTERM, "it was not asked to end"
    left = left_in_session(process.pid, 5)
    assert left == [], f"{len(left)} processes it forked while it was ended left running"


SPARES_THE_TRACKER = """
import subprocess
from multiprocessing import resource_tracker
from implicit_concept.worker_processes import end_descendants

resource_tracker.ensure_running()
child = subprocess.Popen(["sleep", "600"])
end_descendants()
with open(f"/proc/{resource_tracker._resource_tracker._pid}/stat") as f:
    print(child.wait(), f.read().rsplit(")", 1)[1].split()[0])
"""


def test_ending_the_processes_below_one_spares_its_resource_tracker_running():
    """multiprocessing's resource tracker removes what a killed pool left in /dev/shm once its
    process ends: killed or stopped with the rest, it could not."""
    done = subprocess.run([sys.executable, "-c", SPARES_THE_TRACKER], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, tracker_state = done.stdout.split()
    assert int(status) == -signal.SIGKILL, "the child ran on"
    assert tracker_state in ("S", "R"), f"the tracker was killed or stopped (state {tracker_state})"


def _open_stream_reading(command: str) -> bytes:
    from implicit_concept.streams import open_stream

    stream = open_stream(f"pipe:{command}")
    try:
        return stream.read()
    finally:
        stream.close()


def test_a_pipe_commands_stdin_is_empty_not_its_guards_pipe():
    """A command that reads stdin (``cat``, an ``ssh`` forwarding it) meets its end at once, as it did
    before the guard: reading the guard's pipe it would wait for this process to exit."""
    assert _open_stream_reading("readlink /proc/self/fd/0") == b"/dev/null\n"


def test_a_pipe_command_that_ignores_sigterm_ends_when_its_reader_is_killed_outright():
    from tests.test_streaming import OPENS_A_STREAM

    proc = subprocess.Popen([sys.executable, "-c", OPENS_A_STREAM, "pipe:trap '' TERM; sleep 600"], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        group = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert left_in_group(group, 15) == []


def test_a_missing_curl_is_named_when_an_http_stream_opens(tmp_path, monkeypatch):
    from implicit_concept.streams import StreamFailed, open_stream

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StreamFailed, match=r"^https://example.invalid/0.tar: cannot run curl: No such file or directory$"):
        open_stream("https://example.invalid/0.tar")


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_gzipped_pipe_shard_read_in_part_ends_its_command_and_closes_its_pipe(tmp_path):
    """As a plain tar's: a reader closed after one sample leaves no command running, no pipe open."""
    from implicit_concept.shard_reader import iter_tar_members

    shard = tmp_path / "s.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        for key in range(8):  # far more than a pipe holds: the command still writes when the reader stops
            data = os.urandom(256 << 10)
            info = tarfile.TarInfo(f"{key:03d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    before = (running_children(os.getpid()), _open_descriptors())
    members = iter_tar_members(f"pipe:cat {shard}")
    assert next(members)[0] == "000"
    members.close()
    assert (running_children(os.getpid()), _open_descriptors()) == before


def test_a_folder_named_like_a_json_file_in_a_pipeline_folder_is_passed_over(tmp_path):
    from benchmark.models.pipelines import check_json_files

    (tmp_path / "unet" / "notes.json").mkdir(parents=True)
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    check_json_files(tmp_path)


LEAKY = '''
import logging, sys, numpy as np

LIBRARY = logging.getLogger("a.library")  # made at import, as a library's is
START_LIMIT = sys.getrecursionlimit()
START_PRECISION = np.get_printoptions()["precision"]

def test_recursion_limit():
    sys.setrecursionlimit(START_LIMIT + 1000)

def test_numpy_print_options():
    np.set_printoptions(precision=START_PRECISION + 1)

def test_logging_disabled():
    logging.disable(logging.CRITICAL)

def test_logger_propagation():
    LIBRARY.propagate = False

def test_logger_switched_off():
    LIBRARY.disabled = True

def test_after_all_of_them():
    assert sys.getrecursionlimit() == START_LIMIT and np.get_printoptions()["precision"] == START_PRECISION
    assert logging.root.manager.disable == logging.NOTSET and LIBRARY.propagate and not LIBRARY.disabled
'''


def test_the_suites_guard_fails_and_puts_back_the_recursion_limit_print_options_and_logging_switches(tmp_path):
    """The guard's settings besides test_suite_hygiene's: each left changed fails its test, named,
    and the next test runs under them as they were."""
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_leaky.py")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    for name, what in (("test_recursion_limit", "recursion limit: "), ("test_numpy_print_options", "numpy print options: "),
                       ("test_logging_disabled", f"logger disable: 0 -> {logging.CRITICAL}"),
                       ("test_logger_propagation", "logger a.library: (0, True, False, False) -> (0, False, False, False)"),
                       ("test_logger_switched_off", "logger a.library: (0, True, False, False) -> (0, True, True, False)")):
        line = next((l for l in out.splitlines() if f"test_leaky.py::{name} " in l and "left" in l), "")
        assert what in line, (name, out[-3000:])
    assert "5 errors" in out and "6 passed" in out, out[-3000:]


def test_kept_rngs_puts_back_pythons_numpys_and_torchs_generators():
    """What a seeding library (ultralytics' trainer) does inside the block leaves the caller's next
    draw from each generator as it would have been."""
    import random

    import numpy as np
    import torch

    from implicit_concept.random_states import kept_rngs

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    with kept_rngs():
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        random.random(), np.random.random(), torch.rand(())
    kept = (random.random(), float(np.random.random()), float(torch.rand(())))
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert kept == (random.random(), float(np.random.random()), float(torch.rand(())))


def test_a_pipe_command_that_cannot_start_is_named_and_leaves_no_descriptor_open(monkeypatch):
    """A fork refused (EAGAIN: the process limit reached) left the guard's pipe open, one a stream."""
    import errno

    from implicit_concept import streams

    def refused(*args, **kwargs):
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    before = _open_descriptors()
    monkeypatch.setattr(streams.subprocess, "Popen", refused)
    with pytest.raises(streams.StreamFailed, match=rf"^pipe:true: cannot run the command: {os.strerror(errno.EAGAIN)}$"):
        streams.open_stream("pipe:true")
    assert _open_descriptors() == before
