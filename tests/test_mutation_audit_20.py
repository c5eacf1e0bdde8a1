"""Tests that kill hand mutants no earlier round ran or made: round 19's unrun ones (results_page,
leaderboard, the hostile-handovers code, the worker's SIGTERM handler), and benchmark/command.py,
benchmark/process_exit.py, the resume checks and session numbers of benchmark/training/checkpoints.py,
and builders/verify.py's per-sample and release checks.

Each case is behaviour a user relies on that no earlier test pinned: a Ctrl-C while the command
starts runs no exit handler of a half-made import, exits 130 even with stderr gone, and a second one
then is ignored; run.json's session numbers count every step this session trained.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from benchmark.training.checkpoints import Session, TrainState, write_finished_run
from tests.test_stop_signals import ENV, _as_from_a_terminal


CTRL_C_WHILE_STARTING = """
import atexit, os, signal, sys

atexit.register(os.write, 2, b"an exit handler of a half-made import ran\\n")


class CtrlC:  # pressed while benchmark.cli imports benchmark.process_exit
    def find_spec(self, name, path=None, target=None):
        if name == "benchmark.process_exit":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlC())
sys.argv = ["implicit-concept", "verify", "."]
from benchmark.command import console_main
console_main()
"""


def _stderr_with_no_reader():
    """The child's stderr is a pipe whose reader is gone (a ``| head`` that ended): a write there fails."""
    _as_from_a_terminal()
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(read_end)
    os.close(write_end)


def test_a_ctrl_c_while_starting_runs_no_exit_handler_of_what_was_half_imported(tmp_path):
    """What a cut import left half made is not run: its exit handlers included (os._exit, not a
    SystemExit the interpreter unwinds through them); the user sees the one line and 130."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_STARTING], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=120, preexec_fn=_as_from_a_terminal)
    assert (proc.returncode, proc.stderr) == (130, "implicit-concept: interrupted while starting; rerun the same command\n"), proc.stderr[-3000:]


def test_a_ctrl_c_while_starting_with_stderr_gone_still_exits_130(tmp_path):
    """The one line cannot be written to a reader that is gone: the exit status still says it was Ctrl-C."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_WHILE_STARTING], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                          timeout=120, preexec_fn=_stderr_with_no_reader)
    assert proc.returncode == 130


def test_a_second_ctrl_c_after_the_interrupted_while_starting_line_is_ignored(tmp_path):
    """Ctrl-C pressed twice while the command starts: the second lands after the first's line, before
    the exit, and is ignored, not a KeyboardInterrupt traceback under that line."""
    second = ("import os, signal\nfrom benchmark.command import interrupted_while_starting\n"
              "code = interrupted_while_starting()\nos.kill(os.getpid(), signal.SIGINT)\nos._exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", second], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
                          preexec_fn=_as_from_a_terminal)
    assert (proc.returncode, proc.stderr) == (130, "implicit-concept: interrupted while starting; rerun the same command\n"), proc.stderr[-3000:]


def test_run_json_counts_every_example_and_truncated_caption_this_session_trained_and_its_seconds_per_step(tmp_path):
    """run.json's session numbers are what a user reads a resumed run by: the examples and truncated
    captions are summed over every step this session trained (not the last batch's), and the seconds
    per step are over this session's steps only (a resume at step 3 of 5 trained 2)."""
    session = Session(first_step=3, prepare_seconds=1.5)
    session.count([SimpleNamespace(truncated=True), SimpleNamespace(truncated=False), SimpleNamespace(truncated=True)])
    session.count([SimpleNamespace(truncated=False), SimpleNamespace(truncated=True)])
    session.seconds, session.step_seconds = 4.0, [1.0, 3.0]
    state = TrainState(seed=0)
    state.step, state.loss = 5, 0.25
    config = SimpleNamespace(seed=7, geom=SimpleNamespace(negative_prompt=lambda: ""))
    write_finished_run(tmp_path, {"config": {"steps": 5}}, config, state, session)
    run = json.loads((tmp_path / "run.json").read_text())
    assert (run["examples_seen_this_session"], run["captions_truncated_this_session"]) == (5, 3)
    assert (run["steps"], run["seconds_per_step"], run["step_seconds_median"], run["final_loss"]) == (5, 2.0, 2.0, 0.25)
