"""Stop signals that land inside a stop's own handling: a second signal at any line the handler
and its callees run (forced there by a trace function, not hoped for), a stop while the
command is still importing.

Each line-by-line test forks one child per line: the child's command takes the first signal, and
its trace function sends the second one at the n-th line run after it, the handler's own lines and
the cleanup's alike."""
import json
import os
import signal
import subprocess
import sys

import pytest

from implicit_concept.worker_processes import STOP_SIGNALS
from tests.test_stop_signals import ENV, REPO, _as_from_a_terminal

#: What the forking process runs after a scenario's code, for each pair of signals its arguments name
#: (``SIGTERM-SIGINT``): one child per line, each given HUNG_S before it counts as hung. The scenario
#: defines ``stopped(tracer)`` (start tracing, send ``first``, wait), ``taken()`` (whether the first
#: stop has been recorded) and ``SKIPPED`` (functions whose lines are not counted: loops over /proc);
#: fd 5 is the scenario's own note to the test.
LINE_BY_LINE = """
import gc
from tests.process_table import ended_or_killed
HUNG_S = 15.0
PLAIN = {"enum.py", "signal.py", "contextlib.py"}  # modules the handling runs that hold no lock and do no I/O: skipped, for time


def stopped_twice(at):
    seen = 0

    def tracer(frame, event, arg):
        nonlocal seen
        if event == "line" and os.path.basename(frame.f_code.co_filename) not in PLAIN and frame.f_code.co_name not in SKIPPED:
            seen += 1
            os.write(4, b".")
            if seen == at:  # whether the first stop had been taken yet decides which one may win
                os.write(3, b"taken" if taken() else b"open")
                os.kill(os.getpid(), second)
        return tracer

    stopped(tracer)


def run(at):
    pipes = [os.pipe() for _ in range(4)]  # stderr, when the second signal was sent, a dot a line, the note
    pid = os.fork()
    if pid == 0:
        for fd, (_, w) in zip((2, 3, 4, 5), pipes):
            os.dup2(w, fd)
        stopped_twice(at)
        os._exit(99)
    for _, w in pipes:
        os.close(w)
    hung, status = ended_or_killed(pid, HUNG_S)
    err, when, seen, note = (os.read(r, 1 << 20).decode() for r, _ in pipes)
    for r, _ in pipes:
        os.close(r)
    return {"at": at, "hung": hung, "status": status, "stderr": err, "when": when,
            "seen": len(seen), "after": after(note)}


gc.freeze()  # the imports' objects: the collector's pass at each forked exit copied all their pages
found = {}
for pair in sys.argv[1:]:
    first, second = (signal.Signals[name] for name in pair.split("-"))
    lines = run(0)["seen"]
    results = []
    for at in range(1, lines + 1):
        results.append(run(at))
        if results[-1]["hung"]:
            break
    found[pair] = {"lines": lines, "results": results}
print(json.dumps(found))
"""

#: A command (``verify``, its work replaced) stopped twice.
A_COMMAND = """
import json, os, signal, sys, time
from benchmark import cli
from implicit_concept import worker_processes
from implicit_concept.detector import yolo_env  # what main imports, once here, not in each child

SKIPPED = set()


def stopped(tracer):
    def command(args):
        sys.settrace(tracer)
        os.kill(os.getpid(), first)
        time.sleep(30)

    cli._verify = command
    sys.argv = ["implicit-concept", "verify", "."]
    cli.console_main()


def taken():
    return worker_processes._stop_signal is not None


def after(note):
    return None
"""


def _said(sig: signal.Signals) -> str:
    return (f"implicit-concept verify: {STOP_SIGNALS[sig]}; rerun the same command to resume"
            + (" (nohup keeps a command running when its terminal closes)" if sig == signal.SIGHUP else "") + "\n")


PAIRS = [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGINT), (signal.SIGHUP, signal.SIGTERM)]


@pytest.fixture(scope="module")
def a_command_stopped_twice():
    """Every pair of ``PAIRS`` forced at every line, from one child that imports the command once (a
    child per pair spent most of its time importing): ``{"SIGTERM-SIGINT": found}`` (read-only)."""
    proc = subprocess.run([sys.executable, "-c", A_COMMAND + LINE_BY_LINE, *(f"{a.name}-{b.name}" for a, b in PAIRS)], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=600 * len(PAIRS), preexec_fn=_as_from_a_terminal)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("first, second", PAIRS)
def test_a_second_stop_at_any_line_of_the_first_ones_handling_is_ignored(a_command_stopped_twice, first, second):
    """A second stop at each line the first one's handler, cleanup and exit run. Before, one landing
    inside ``threading.Event.set`` (the handler recording its stop, the Event's lock held) ran the
    handler again there, which waited for that lock for ever: the command hung, deaf to every
    signal but SIGKILL. Now each exits 128 + the stop taken, saying so on one line; the second one
    is the stop taken only where it came before the handler had recorded the first."""
    found = a_command_stopped_twice[f"{first.name}-{second.name}"]
    assert not found["results"][-1]["hung"], found["results"][-1]
    assert found["lines"] > 20 and len(found["results"]) == found["lines"]
    assert sum(r["when"] == "taken" for r in found["results"]) > 20
    for r in found["results"]:
        taken = first if r["when"] == "taken" or r["status"] == 128 + first else second
        assert (r["status"], r["stderr"]) == (128 + taken, _said(taken)), r


#: A build worker holding a ``pipe:`` source's command (a sleep in a group of its own), stopped twice.
A_WORKER = """
import json, os, signal, subprocess, sys, time
from implicit_concept import worker_processes

SKIPPED = {"_children", "_below"}  # a read of every /proc entry: no lock, and no handler of its own


def stopped(tracer):
    worker_processes.start_worker()
    command = subprocess.Popen(["sleep", "60"], start_new_session=True)
    worker_processes.own_group(command.pid)
    os.write(5, str(command.pid).encode())
    sys.settrace(tracer)
    os.kill(os.getpid(), first)
    time.sleep(30)


def taken():
    return signal.getsignal(first) is not worker_processes._terminated


def after(note):  # whether the worker's command is left running (a zombie is ended)
    try:
        with open(f"/proc/{note}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
"""


def test_a_workers_second_sigterm_at_any_line_of_its_handler_is_ignored():
    """The group's SIGTERM then the pool's ``terminate`` (515ff05's case), the second one forced at
    each line the worker's handler runs: each time the worker ends as SIGTERM ends it, silent, its
    ``pipe:`` command ended with it."""
    proc = subprocess.run([sys.executable, "-c", A_WORKER + LINE_BY_LINE, "SIGTERM-SIGTERM"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)["SIGTERM-SIGTERM"]
    assert not found["results"][-1]["hung"], found["results"][-1]
    assert found["lines"] > 10 and len(found["results"]) == found["lines"]
    for r in found["results"]:
        assert (r["status"], r["stderr"], r["after"]) == (-signal.SIGTERM, "", False), r


CTRL_C_IN_AN_IMPORT = """
import os, runpy, signal, sys

entry, module = sys.argv[1:3]


class CtrlC:  # pressed while `module` is being imported
    def find_spec(self, name, path=None, target=None):
        if name == module:
            sys.meta_path.remove(self)
            os.write(1, b"ctrl-c\\n")
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlC())
sys.argv = [entry, "verify", "."]
runpy.run_module(entry, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("entry", ["benchmark.cli", "benchmark"])
@pytest.mark.parametrize("module", ["benchmark.process_exit", "implicit_concept.detector.yolo_env"])
def test_a_ctrl_c_while_the_command_imports_says_one_line_and_exits_130(tmp_path, entry, module):
    """Ctrl-C in the command's first half second, while ``benchmark.cli`` imports (``process_exit``)
    or ``main`` reads its command line (``yolo_env``), before the command's own handling: before,
    Python's ``KeyboardInterrupt`` traceback and a status of -2; now one line and 130, as later."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_IN_AN_IMPORT, entry, module], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120, preexec_fn=_as_from_a_terminal)
    assert proc.stdout == "ctrl-c\n", proc.stdout[-3000:]
    assert (proc.returncode, proc.stderr) == (130, "implicit-concept: interrupted while starting; rerun the same command\n"), proc.stderr[-3000:]


def test_the_entry_point_imports_the_command_only_when_run():
    """``benchmark.command`` is what ``implicit-concept`` starts: it imports nothing of the command
    (its catching a Ctrl-C in those imports depends on it), and ``--help`` still answers at once."""
    probe = "import sys, benchmark.command; print(sorted(m for m in sys.modules if m.startswith(('benchmark.', 'implicit_concept'))))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.stdout == "['benchmark.command']\n", proc.stderr[-3000:]
    helped = subprocess.run([sys.executable, "-m", "benchmark", "--help"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: implicit-concept"), helped.stderr[-3000:]


A_WORKERS_FORK = """
import os, signal, subprocess, sys, time
from implicit_concept import worker_processes

worker_processes.start_worker()
command = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a pipe: source's command
worker_processes.own_group(command.pid)
ready, told = os.pipe()
child = os.fork()  # what the worker forks and ends (a DataLoader's worker, a pool of its own)
if child == 0:
    os.write(told, b"ready")  # a signal in the fork's first instants is dropped by Python's after-fork
    time.sleep(60)
    os._exit(0)
os.read(ready, 5)
os.kill(child, signal.SIGTERM)
_, status = os.waitpid(child, 0)
alive = command.poll() is None
command.kill()
print(os.waitstatus_to_exitcode(status), "running" if alive else "killed")
"""


def test_a_process_a_worker_forked_ends_on_sigterm_leaving_the_workers_commands_running():
    """A process forked by a build worker inherits the worker's SIGTERM handler and a copy of the
    ``pipe:`` commands it registered: before, its SIGTERM (the worker ending its own pool) killed
    the worker's running command, whose read then failed. It ends as SIGTERM's default would."""
    proc = subprocess.run([sys.executable, "-c", A_WORKERS_FORK], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == f"{-signal.SIGTERM} running\n", proc.stderr[-3000:]


A_PROBE_STOPPED_TWICE = """
import os, signal, sys, time
from benchmark.perf import probe_cli


class Stderr:  # Ctrl-C pressed again while the probe says it was interrupted
    def write(self, text):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))  # bytecodes at which a handler would run
        os.write(2, text.encode())
        return len(text)

    def flush(self):
        pass


def main(argv):
    sys.stderr = Stderr()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)


sys.exit(probe_cli.run(main))
"""


def test_a_probes_second_ctrl_c_while_it_says_interrupted_is_ignored(tmp_path):
    """A perf probe's Ctrl-C pressed twice: before, the second one, landing in the line saying the
    first, escaped as a ``KeyboardInterrupt`` and the probe died by SIGINT (-2); now the one line and 130."""
    proc = subprocess.run([sys.executable, "-c", A_PROBE_STOPPED_TWICE], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=120, preexec_fn=_as_from_a_terminal)
    assert (proc.returncode, proc.stderr) == (130, "-c: interrupted\n"), proc.stderr[-3000:]


LEFT_RUNNING_STOPPED_TWICE = """
import multiprocessing, os, signal, sys, threading, time
from benchmark import cli, process_exit

said = process_exit.last_words


def last_words(line):  # Ctrl-C pressed again as the command says what it did not wait for
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(1000))  # bytecodes at which a handler would run
    said(line)


def command(args):
    multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), name="left").start()  # a plug-in's
    ctrl_c = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # in the exit's 10 s wait for it
    ctrl_c.daemon = True
    ctrl_c.start()
    return 0


process_exit.last_words = last_words
cli._verify = command
sys.argv = ["implicit-concept", "verify", "."]
cli.console_main()
"""


def test_a_second_ctrl_c_after_the_one_that_ended_the_wait_for_leftovers_is_ignored(tmp_path):
    """A finished command waits for a process a plug-in left running, and Ctrl-C ends the wait; before,
    a second Ctrl-C while it then said so escaped as a traceback (status -2); now the exit goes on."""
    proc = subprocess.run([sys.executable, "-c", LEFT_RUNNING_STOPPED_TWICE], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=120, preexec_fn=_as_from_a_terminal)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith("implicit-concept: 1 left running by code the command called") and len(proc.stderr.splitlines()) == 1, proc.stderr
