"""A command stopped by the signals a user's session sends: a closed terminal (SIGHUP), a second
Ctrl-C while the first one's cleanup runs, SIGTERM then SIGINT. Each stops once, says one line,
exits 128 + the first signal, leaves only what a rerun resumes, and frees its folder; ``nohup``
keeps a command running past a hangup. A detector training holds its ``--out``.

Every child is started with SIGINT and SIGHUP at their defaults, as from a terminal: a shell's
background job (this machine's, CI's) inherits SIGINT ignored, and one under nohup SIGHUP."""
import fcntl
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from builders.dataset_card import CHECKSUMS
from implicit_concept.file_locks import locked
from manifests import RECIPES_DIR
from tests.process_table import alive_in_group, left_in_session

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
BUILD = [sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--workers", "2"]


def _as_from_a_terminal(hangup=signal.SIG_DFL):
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, hangup)


def _in_a_terminal():
    """The child's controlling terminal is the pty on its stdin (it leads a session of its own)."""
    _as_from_a_terminal()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _writing_a_shard(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.rglob(".*.tar.tmp-*")):
        time.sleep(0.005)
    assert proc.poll() is None, "the build ended before a shard was being written"


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 4096):
        into += chunk


def _freed_and_resumed(out: Path) -> None:
    """Nothing half-written is left, no process holds the folder, and the rerun gives the reference bytes."""
    assert not list(out.rglob(".*.tmp-*"))
    with locked(out, wait=False, inside=True):
        pass
    rerun = subprocess.run([*BUILD[:-1], "1", "--out", str(out), "--quiet"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()


def test_a_closed_terminal_stops_a_build_as_sigterm_does_with_129(tmp_path):
    """The terminal (a pty here) closes mid-shard, its progress bar still drawing: the kernel sends
    SIGHUP to the build and its workers. Before, the build died at once (status -1), its workers'
    partial shards left behind and, with ``pipe:`` sources, their commands running on."""
    out = tmp_path / "icd-debug"
    master, terminal = os.openpty()
    proc = subprocess.Popen([*BUILD, "--out", str(out)], cwd=REPO, env=ENV, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True, preexec_fn=_in_a_terminal)
    os.close(terminal)

    def drain():  # the terminal's reader, until it closes
        try:
            while os.read(master, 4096):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    try:
        _writing_a_shard(out, proc)
    finally:
        os.close(master)  # the terminal closes
    assert proc.wait(timeout=60) == 129
    assert left_in_session(proc.pid, 30) == []
    _freed_and_resumed(out)


def test_nohup_keeps_a_build_running_past_a_hangup(tmp_path):
    out = tmp_path / "icd-debug"
    proc = subprocess.Popen([*BUILD, "--out", str(out), "--quiet"], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=lambda: _as_from_a_terminal(hangup=signal.SIG_IGN))
    _writing_a_shard(out, proc)
    os.killpg(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT), (signal.SIGHUP, signal.SIGTERM)])
def test_a_second_stop_during_a_builds_cleanup_changes_nothing(tmp_path, first, second):
    """Ctrl-C pressed twice (to the whole group, as the terminal sends it), or SIGTERM then SIGINT:
    before, the second one cut the cleanup short or killed the exiting process (status -2 or -15,
    not the 130 or 143 its line said), and its word could replace the first one's. The second is
    sent once the first is seen taken (its progress bar closed): two stops pending together are
    taken in signal-number order, whichever came first (a loaded machine that had not run the
    build in a fixed 20 ms gap took SIGTERM-then-SIGINT as interrupted, 130)."""
    out = tmp_path / "icd-debug"
    proc = subprocess.Popen([*BUILD, "--out", str(out)], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=_as_from_a_terminal)
    said_so_far = bytearray()
    reader = threading.Thread(target=_read_all, args=(proc.stderr.fileno(), said_so_far), daemon=True)
    reader.start()
    _writing_a_shard(out, proc)
    os.killpg(proc.pid, first)
    deadline = time.time() + 60
    while b"shard/s]\n" not in said_so_far and proc.poll() is None and time.time() < deadline:
        time.sleep(0.001)
    os.killpg(proc.pid, second)  # the exiting process is in its group until it is waited for
    proc.wait(timeout=60)
    reader.join(timeout=60)
    err = said_so_far.decode()
    said = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}[first]
    assert proc.returncode == 128 + first, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert err.count("implicit-concept build:") == 1 and f"implicit-concept build: {said}; rerun the same command to resume" in err, err[-3000:]
    assert alive_in_group(proc.pid) == []
    _freed_and_resumed(out)


A_WORKERS_SECOND_SIGTERM = """
import os, signal, time
from implicit_concept import worker_processes

worker_processes.start_worker()

def end_groups():  # the pool's SIGTERM comes while the worker still cleans up after the group's
    os.write(1, b"cleanup\\n")
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(1000))  # bytecodes at which a handler would run

worker_processes.end_groups = end_groups
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(10)
"""


def test_a_workers_second_sigterm_during_its_cleanup_is_ignored():
    """A build's worker takes SIGTERM twice when the group is sent one (its own, then its pool's
    ``terminate``): before, the second one ran the handler again inside the first, half-way through an
    import, and the worker printed a traceback (seen once in CI). It cleans up once and ends quietly."""
    proc = subprocess.run([sys.executable, "-c", A_WORKERS_SECOND_SIGTERM], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-3000:]
    assert proc.stdout == "cleanup\n" and proc.stderr == "", proc.stderr[-3000:]


STOPPED_TWICE = """
import atexit, os, signal, sys, time
from pathlib import Path
from benchmark import cli

first, second, marks = signal.Signals[sys.argv[1]], signal.Signals[sys.argv[2]], Path(sys.argv[3])

def command(args):
    try:
        os.write(1, b"ready\\n")
        time.sleep(60)
    finally:  # the cleanup: a second stop comes while it runs
        os.kill(os.getpid(), second)
        time.sleep(0.2)
        (marks / "cleaned").touch()

def exiting():  # and another while the process exits
    os.kill(os.getpid(), second)
    time.sleep(0.2)
    (marks / "exited").touch()

atexit.register(exiting)
cli._verify = command
sys.exit(cli.main(["verify", "."]))
"""


@pytest.mark.parametrize("first, second", [(signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT),
                                           (signal.SIGINT, signal.SIGTERM), (signal.SIGHUP, signal.SIGHUP)])
def test_a_stop_during_cleanup_or_exit_lets_both_finish(tmp_path, first, second):
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_TWICE, first.name, second.name, str(tmp_path)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_terminal)
    assert proc.stdout.readline() == "ready\n"
    os.kill(proc.pid, first)
    _, err = proc.communicate(timeout=60)
    said = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}[first]
    assert proc.returncode == 128 + first and err.startswith(f"implicit-concept verify: {said}; rerun the same command to resume"), err
    assert len(err.splitlines()) == 1, err
    assert (tmp_path / "cleaned").exists() and (tmp_path / "exited").exists()


SLOW_TRAINING = """
import os, sys, time
from benchmark.cli import main
from implicit_concept.detector import training

def training_for_a_minute(data_yaml, scale, out_dir):
    os.write(1, b"training\\n")
    time.sleep(60)

training._train = training_for_a_minute
sys.exit(main(sys.argv[1:]))
"""


def test_a_detector_training_holds_its_out_and_a_hangup_frees_it(debug_dataset, tmp_path, capsys):
    """A second ``detector train`` into one ``--out``, and a scoring of the detector there, while the
    first trains: before, both went on, the second removing the first one's export and record and
    the scoring told the folder held no detector. Then the terminal closes on the first."""
    from benchmark.cli import main
    from implicit_concept.detector.inference import Detector
    from implicit_concept.detector.weights import DetectorError

    out = tmp_path / "det"
    args = ["detector", "train", str(debug_dataset / "icd-mixed"), "--out", str(out), "--scale", "debug", "--cache", str(tmp_path / "cache")]
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAINING, *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_terminal)
    try:
        assert first.stdout.readline() == "training\n"
        assert main(args) == 2
        assert capsys.readouterr().err == (f"implicit-concept detector train: error: {out}: in use by another process (pid {first.pid}); "
                                           f"wait for it to finish or choose another --out\n")
        with pytest.raises(DetectorError, match=f"^{out}: a detector training is writing it now \\(pid {first.pid} holds its lock"):
            Detector.load(out)
        os.kill(first.pid, signal.SIGHUP)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 129, err[-3000:]
    assert err.rstrip().endswith("implicit-concept detector train: hung up; rerun the same command to resume "
                                 "(nohup keeps a command running when its terminal closes)"), err[-3000:]
    with locked(out, wait=False, inside=True):
        pass
    assert not (out / "detector.json").exists()  # incomplete: a rerun trains again


HELD_RUN = """
import os, sys, time
from benchmark import stages
from benchmark.cli import main

def building_for_a_minute(*args, **kwargs):
    os.write(1, b"building\\n")
    time.sleep(60)

stages.dataset = building_for_a_minute
sys.exit(main(sys.argv[1:]))
"""


def test_a_hangup_stops_a_benchmark_run_and_frees_its_folder(tmp_path):
    args = ["benchmark", "--track", "debug", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
            "--cache", str(tmp_path / "cache"), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-c", HELD_RUN, *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_terminal)
    assert proc.stdout.readline() == "building\n"
    os.killpg(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err[-3000:]
    assert "Traceback" not in err and err.count("implicit-concept benchmark:") == 1, err[-3000:]
    with locked(tmp_path / "runs" / "debug", wait=False, inside=True):
        pass


IDLE_WORKER = """
import os, sys, time
import multiprocessing
from implicit_concept.worker_processes import interrupts, start_worker

def long_task(i):
    os.write(1, b"working\\n")
    time.sleep(120)

if __name__ == "__main__":
    try:
        with interrupts():
            with multiprocessing.get_context("fork").Pool(2, initializer=start_worker) as pool:  # one works, one waits for a task
                list(pool.imap_unordered(long_task, [0]))
    except KeyboardInterrupt:
        sys.exit(143)
"""


def test_sigterm_to_the_whole_group_ends_a_pool_with_a_worker_waiting_for_a_task(tmp_path):
    """``timeout``, ``kill -- -PGID`` or a scheduler send SIGTERM to every process: the idle worker
    died holding its pool's queue lock, and the build's ``Pool.terminate`` waited for it forever."""
    script = tmp_path / "idle.py"
    script.write_text(IDLE_WORKER)
    proc = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_as_from_a_terminal)
    try:
        assert proc.stdout.readline() == "working\n"
        time.sleep(0.5)  # the other worker is waiting in its queue's get
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        left_in_session(proc.pid, 0)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert left_in_session(proc.pid, 10) == []


STUCK_CLEANUP = """
import os, sys, time
from benchmark import cli
from implicit_concept import worker_processes

worker_processes.CUT_SHORT_S = 1.0

def command(args):
    try:
        os.write(1, b"ready\\n")
        time.sleep(60)
    finally:  # a cleanup that does not finish
        os.write(1, b"cleaning\\n")
        time.sleep(60)

cli._verify = command
sys.exit(cli.main(["verify", "."]))
"""


def test_a_second_stop_cuts_a_stuck_cleanup_short(tmp_path):
    """A cleanup that never ends (a pool waiting on a worker): the second Ctrl-C, ignored so that a
    cleanup finishes, would leave the user no way out but SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-c", STUCK_CLEANUP], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_terminal)
    try:
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.stdout.readline() == "cleaning\n"
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert err == "implicit-concept: terminated; its cleanup cut short by a second signal after 1 s; rerun the same command to resume\n"


def _worker_sends_itself_the_terminals_stops():
    from implicit_concept.worker_processes import start_worker

    start_worker()
    for sig in (signal.SIGHUP, signal.SIGINT):
        os.kill(os.getpid(), sig)  # delivered before kill returns: a worker that took it is gone here
    os._exit(0)


def test_a_pool_worker_outlives_the_hangup_its_whole_job_is_sent():
    """A shell whose terminal closed sends SIGHUP to each job's whole process group, workers too: a
    worker that took it died at once, and its pool broke under the command's own orderly stop."""
    import multiprocessing

    worker = multiprocessing.get_context("fork").Process(target=_worker_sends_itself_the_terminals_stops)
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_worker_being_started_holds_the_terminals_stops_until_it_ignores_them(sig):
    """A spawned worker imports for seconds before ``start_worker``: a hangup or Ctrl-C then killed
    it (a broken pool) or printed its traceback. Started in ``workers_starting``, it holds them pending."""
    from implicit_concept.worker_processes import workers_starting

    with workers_starting():
        child = subprocess.run([sys.executable, "-c", f"import os; os.kill(os.getpid(), {int(sig)}); print('alive')"],
                               capture_output=True, text=True, timeout=60, preexec_fn=_as_from_a_terminal)
    assert (child.returncode, child.stdout, child.stderr) == (0, "alive\n", "")


HUNG_UP_CLEANUP = """
import os, signal, sys
from implicit_concept.worker_processes import interrupts

try:
    with interrupts():
        os.write(1, b"ready\\n")
        signal.pause()
except KeyboardInterrupt:
    os.write(2, b"a progress bar closing\\n")
    sys.exit(7)
"""


def test_a_cleanup_writing_to_the_terminal_that_hung_up_does_not_fail():
    """The terminal gone, a progress bar's last draw in the cleanup failed with EIO: an OSError in
    place of the hangup (exit 1, and that error's own line failing too). Its output now goes nowhere."""
    master, terminal = os.openpty()
    proc = subprocess.Popen([sys.executable, "-c", HUNG_UP_CLEANUP], cwd=REPO, env=ENV, stdin=terminal, stdout=terminal,
                            stderr=terminal, start_new_session=True, preexec_fn=_in_a_terminal)
    os.close(terminal)
    try:
        assert os.read(master, 100).startswith(b"ready")
    finally:
        os.close(master)  # the terminal closes: SIGHUP to the session's leader
    assert proc.wait(timeout=60) == 7


LIBRARY_TOOK_THE_STOP = """
import os, signal, sys
from implicit_concept import worker_processes as wp

wp.CUT_SHORT_S = 600.0
try:
    with wp.interrupts():
        ours = {sig: signal.getsignal(sig) for sig in wp.STOP_SIGNALS}
        try:
            with wp.keeping_signal_handlers():  # a library (Ray) that installs its own, exiting with the signal's number
                for sig in wp.STOP_SIGNALS:
                    signal.signal(sig, lambda signum, frame: sys.exit(signum))
                os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            kept = all(signal.getsignal(sig) is ours[sig] for sig in wp.STOP_SIGNALS)
            os.kill(os.getpid(), signal.SIGINT)  # a second stop, in the cleanup
            os.write(1, f"cleaned up, handlers kept: {kept}\\n".encode())
            raise
except KeyboardInterrupt as e:
    sys.exit(128 + wp.stopped_by(e))
"""


def test_a_stop_a_librarys_handler_took_is_the_first_stop_and_its_handlers_are_put_back():
    """A library's own handler that took SIGTERM is the command's first stop: a Ctrl-C in the cleanup
    is ignored (it interrupted the cleanup, and the exit said 130), and its SIGHUP handler is gone with
    its others (a hangup later ended the command as that library would)."""
    proc = subprocess.run([sys.executable, "-c", LIBRARY_TOOK_THE_STOP], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=60, preexec_fn=_as_from_a_terminal)
    assert (proc.returncode, proc.stdout) == (143, "cleaned up, handlers kept: True\n"), proc.stderr[-3000:]


#: A finalizer that the Ctrl-C lands in, as the cyclic garbage collector runs a pool's ``__del__`` at
#: any allocation: the signal comes while the finalizer runs, so its exception is raised there.
CAUGHT_IN_A_FINALIZER = """
import os, signal, sys, time


class Pool:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10000))  # the handler runs here, inside the finalizer


def main(argv=None):
    Pool()
    for _ in range(1000):  # the command's work goes on, ten seconds of it
        time.sleep(0.01)
    print("ran on past the Ctrl-C", flush=True)
    return 0
"""


@pytest.mark.parametrize("where", ["probe", "command"])
def test_a_ctrl_c_landing_in_a_finalizer_still_stops_the_command(where):
    """Python prints an exception raised in a finalizer as "Exception ignored" and goes on: a
    Ctrl-C that landed in a pool's ``__del__`` left a traceback on stderr and a probe looping on
    (CI saw the floor pass's probe outlive its Ctrl-C by a minute). It is raised again outside the
    finalizer: one line, exit 130, as any Ctrl-C."""
    if where == "probe":
        run = CAUGHT_IN_A_FINALIZER + "from benchmark.perf import probe_cli\nsys.exit(probe_cli.run(main))\n"
    else:
        run = CAUGHT_IN_A_FINALIZER + """
from implicit_concept.worker_processes import interrupts, stopped_by
try:
    with interrupts():
        main()
except KeyboardInterrupt as e:
    print(f"stopped by {stopped_by(e).name}", file=sys.stderr)
    sys.exit(130)
"""
    done = subprocess.run([sys.executable, "-c", run], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert "ran on past the Ctrl-C" not in done.stdout and "Exception ignored" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.endswith(": interrupted\n" if where == "probe" else "stopped by SIGINT\n"), done.stderr
