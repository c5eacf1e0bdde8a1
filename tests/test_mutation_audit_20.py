"""Tests that kill hand mutants no earlier round ran or made: round 19's unrun ones (results_page,
leaderboard, the hostile-handovers code, the worker's SIGTERM handler), and benchmark/command.py,
benchmark/process_exit.py, the resume checks and session numbers of benchmark/training/checkpoints.py,
and builders/verify.py's per-sample and release checks.

Each case is behaviour a user relies on that no earlier test pinned: a Ctrl-C while the command
starts runs no exit handler of a half-made import, exits 130 even with stderr gone, and a second one
then is ignored; run.json's session numbers count every step this session trained; a command that
left only a child running exits normally, keeping what a plug-in wrote to a file it never closed;
stdout a socket whose peer is gone is found closed; a process forked inside the command's stop
handling ends on SIGTERM and ignores Ctrl-C and a hangup; the results page shows the grid PNGs only
and the seeds; the newest checkpoints_kept checkpoints are kept; an optimizer state past the last
parameter, a run folder of another base or data, a finished record without its pipeline are each
caught; an earlier image of another height is drawn anew; verify names a KEY.json of another
key, split or seed index, compares releases with a record whose environment is no table, and adds
no "cannot be checked" line for shards with no sample.
"""
from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from PIL import Image

from benchmark.results_page import write_results_page
from benchmark.training.checkpoints import (Resumable, Session, TrainState, check_optimizer_state, latest_checkpoint, read_checkpoint,
                                           save_checkpoint, start_or_resume, write_finished_run)
from builders.verify import VerifyReport, _check_releases, _Problems, verify_dataset
from tests.test_results_page import fake_run
from tests.test_stop_signals import ENV, _as_from_a_terminal
from tests.test_verify import edit_json, write_tar


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


LEFT_A_PROCESS_AND_AN_OPEN_FILE = '''
import multiprocessing, sys, time
from benchmark import cli, process_exit

def lab_run():
    """A plug-in that left a child process running and its log file open, written, never closed."""
    global log
    log = open(sys.argv[1], "w")
    log.write("step 1 done\\n")
    multiprocessing.get_context("spawn").Process(target=time.sleep, args=(3600,), name="lab-prefetcher").start()
    print("results")
    return 0

cli.main = lab_run
process_exit.LEFT_RUNNING_GRACE_S = 0.5
cli.console_main()
'''


def test_a_command_that_left_only_a_process_running_exits_normally_keeping_what_was_written(tmp_path):
    """Only a thread needs the exit past the interpreter (``os._exit``): with a child left running,
    ended, the command exits as any other, so what a plug-in wrote to a file it never closed is flushed."""
    done = subprocess.run([sys.executable, "-c", LEFT_A_PROCESS_AND_AN_OPEN_FILE, str(tmp_path / "lab.log")], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "results\n"), done.stderr[-3000:]
    assert "process lab-prefetcher" in done.stderr
    assert (tmp_path / "lab.log").read_text() == "step 1 done\n"


def test_a_dataset_whose_shards_hold_no_sample_is_said_so_without_a_check_that_cannot_run(debug_dataset, tmp_path):
    """Shards emptied (a copy cut at its first member): verify says there are no samples, and the
    release check, with no sample's release to compare, adds no "cannot be checked" line."""
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    for shard in out.glob("*/*/*.tar"):
        write_tar(shard, [])
    problems = verify_dataset(out).problems
    assert any(": no samples: every source item was skipped" in p for p in problems), problems
    assert not any("cannot be checked" in p for p in problems), problems


def test_the_page_shows_the_grid_pngs_only_not_other_files_beside_them(tmp_path):
    """A note or a log a person left in a run's grids folder is not a sample grid: the page neither
    inlines it nor lists it as an image it could not show."""
    run = fake_run(tmp_path / "run")
    (run / "grids" / "icd-mixed" / "notes.txt").write_text("drawn on the lab's second GPU\n")
    (run / "grids" / "icd-mixed" / "sd.png.sha256").write_text("0" * 64 + "\n")
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    assert re.findall(r"<figcaption>(icd-[^<]*)</figcaption>", page) == ["icd-mixed / ge-full", "icd-mixed / sd"]
    assert "Not shown" not in page and "notes.txt" not in page


def test_the_pages_configuration_block_holds_the_seeds_the_run_drew_with(tmp_path):
    """Same seed, same bytes: the page mailed on its own says which seeds (and evaluation prompts) made it."""
    run = fake_run(tmp_path / "run")
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    block = html.unescape(re.search(r"<pre>(.*?)</pre>", page, re.S).group(1))
    assert sorted(json.loads(block)) == ["config", "detector", "environment", "seeds"]
    assert json.loads(block)["seeds"] == {"evaluation_prompts": "icd-tiny-eval"}


def test_stdout_a_socket_whose_reader_is_gone_is_found_closed_and_pointed_away(monkeypatch):
    """A socket (an ``ssh`` channel, a service's log socket) whose peer has gone polls as writable, no
    error: the failing flush says it, so the command stops quietly, its later writes going nowhere."""
    from benchmark.process_exit import stdout_closed

    ours, peer = socket.socketpair()
    peer.close()
    stdout = io.TextIOWrapper(io.FileIO(os.dup(ours.fileno()), "w"), write_through=False)
    stdout.write("| method | ICR |\n")
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert stdout_closed()
        assert os.path.samestat(os.fstat(stdout.fileno()), os.stat(os.devnull))
    finally:
        ours.close()


def _tiny_parts(seed: int = 0) -> Resumable:
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return Resumable(TrainState(seed), {"unet": model}, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))


def test_a_fine_tune_keeps_its_newest_checkpoints_as_many_as_asked(tmp_path):
    """checkpoints_kept = 2: the two newest are kept (the resume starts from the last), the older dropped
    for their disk space."""
    parts = _tiny_parts()
    for step in (1, 2, 3, 4):
        parts.state.step = step
        save_checkpoint(Accelerator(cpu=True), tmp_path, parts, kept=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000003", "step-0000004"]
    assert latest_checkpoint(tmp_path).name == "step-0000004"


def test_an_optimizer_state_for_a_parameter_one_past_the_last_is_refused_naming_the_file(tmp_path):
    """A checkpoint's optimizer state indexes a parameter this run does not have (another model's, one
    more trained part): refused naming the file, not an IndexError from the check itself."""
    parts = _tiny_parts()
    where = tmp_path / "optimizer.safetensors"
    state = {"state": {2: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}}, "param_groups": []}
    with pytest.raises(ValueError, match=rf"^{re.escape(str(where))}: state\[2\] is not that of one of this run's 2 trained parameters$"):
        check_optimizer_state(state, parts.optimizer, where)


@pytest.mark.parametrize("environment", ["python 3.11", ["torch"], {"packages": "torch 2.1"}])
def test_a_build_record_whose_environment_is_not_a_table_has_its_samples_compared_among_themselves(environment):
    """A recipe.json edited by hand (its environment a string or a list): the release check still runs,
    against the first sample's release, and names the other release's sample, not "cannot be checked"."""
    report = VerifyReport()
    problems = _Problems(report)
    _check_releases({"environment": environment}, {("1.0.0", 3): "a.tar:k0", ("0.9.0", 3): "b.tar:k5"}, problems)
    assert report.problems == ["b.tar:k5: KEY.json written by implicit-concept 0.9.0 (schema 3), a.tar:k0 by 1.0.0: samples of two "
                               "releases in one dataset; rebuild it into another folder"]


def test_a_run_whose_record_says_finished_but_whose_pipeline_is_gone_is_resumed_not_taken_as_done(tmp_path):
    """run.json says finished, but the trained pipeline was removed (or a copy left it out): the run is
    resumed, so the benchmark gets a pipeline, not a finished run with nothing to sample."""
    record = {"config": {"steps": 2}, "base": "b" * 64}
    assert start_or_resume(tmp_path, record) == "new"
    (tmp_path / "run.json").write_text(json.dumps({**record, "finished": True}))
    assert start_or_resume(tmp_path, record) == "resume"
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    assert start_or_resume(tmp_path, record) == "finished"


def test_a_sample_whose_key_json_names_another_key_is_named(debug_dataset, tmp_path):
    """A KEY.json copied in from the next sample (its own record in the writer's canonical form): the
    record is another sample's, said as such, not taken as this member's."""
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    shard = out / "icd-qrcode" / "train" / "00000.tar"
    edit_json(shard, lambda record: record.update(key=record["key"] + "x"))
    problems = verify_dataset(out).problems
    assert any(re.fullmatch(rf"{re.escape(str(shard))}:(\S+): json key '\1x' differs from member name", p) for p in problems), problems


FORKED_IN_AN_INTERRUPTS_BLOCK = """
import os, signal, sys, time
from implicit_concept.worker_processes import interrupts

with interrupts():
    pid = os.fork()  # a pool's worker before its start_worker runs: the command's handler inherited
    if pid == 0:
        os.kill(os.getpid(), signal.Signals[sys.argv[1]])
        time.sleep(0.5)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("signame, status", [("SIGTERM", -15), ("SIGINT", 0), ("SIGHUP", 0)])
def test_a_process_forked_in_the_commands_stop_handling_ends_on_sigterm_and_ignores_ctrl_c(tmp_path, signame, status):
    """A worker forked while the command takes stops, not yet at start_worker, does what start_worker will
    have it do: SIGTERM (its pool ending it) ends it as the default would; Ctrl-C and a hangup, which
    the parent handles for the group, are ignored."""
    proc = subprocess.run([sys.executable, "-c", FORKED_IN_AN_INTERRUPTS_BLOCK, signame], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert (proc.stdout, proc.stderr) == (f"{status}\n", ""), proc.stderr[-3000:]


@pytest.mark.parametrize("field", ["base", "data"])
def test_a_run_folder_of_another_base_or_data_with_the_same_config_is_refused(tmp_path, field):
    """Same training config, another base model or dataset: its checkpoints are another run's, so the
    folder is refused naming what differs, not resumed into weights of neither."""
    record = {"config": {"steps": 2}, "base": "b" * 64, "data": "d" * 64}
    start_or_resume(tmp_path, record)
    with pytest.raises(ValueError, match=rf"holds a run with another config, base or data \(run.json differs in .*{field}"):
        start_or_resume(tmp_path, {**record, field: "0" * 64})


def test_a_sample_in_the_shard_of_another_split_is_named(debug_dataset, tmp_path):
    """A test sample's record in a train shard: its split is said, so a test image is not trained on unsaid."""
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    shard = out / "icd-qrcode" / "train" / "00000.tar"
    edit_json(shard, lambda record: record.update(split="test"))
    problems = verify_dataset(out).problems
    assert any(p.startswith(f"{shard}:") and p.endswith("json says subset 'icd-qrcode', split 'test'; the shard is in icd-qrcode/train")
               for p in problems), problems


def test_an_earlier_image_replaced_by_one_of_another_height_is_drawn_anew(tmp_path):
    """An image of the asked width but another height where a drawn one was is not the model's: not kept."""
    from benchmark.generation import _kept

    Image.new("RGB", (64, 32)).save(tmp_path / "0.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "1.png")
    assert (_kept(tmp_path / "0.png", 64), _kept(tmp_path / "1.png", 64)) == (False, True)


def test_a_sample_whose_seed_names_another_index_is_named(debug_dataset, tmp_path):
    """A KEY.json whose seed is the next sample's (its index off by one) does not draw this sample again: said."""
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    shard = out / "icd-qrcode" / "train" / "00000.tar"
    edit_json(shard, lambda record: record["seed"].__setitem__(-1, record["seed"][-1] + 1))
    problems = verify_dataset(out).problems
    assert any(p.startswith(f"{shard}:") and "json seed [" in p and "is not the sample's" in p for p in problems), problems


def test_a_checkpoint_without_this_process_rng_states_resumes_with_the_seeded_ones(tmp_path, caplog):
    """A checkpoint written by fewer processes than resume it holds no RNG states for the extra ones:
    each keeps its seeded generators and says so, where a missing file would stop the resume. One
    that has them gets the checkpoint's back."""
    import random

    parts = _tiny_parts()
    parts.state.step = 1
    random.seed(5)
    saved = random.getstate()
    folder = save_checkpoint(Accelerator(cpu=True), tmp_path, parts, kept=2)
    random.seed(6)
    read_checkpoint(Accelerator(cpu=True), folder, _tiny_parts())
    assert random.getstate() == saved
    for path in folder.glob("rng_0.*"):
        path.unlink()
    random.seed(6)
    seeded = random.getstate()
    with caplog.at_level("WARNING", logger="benchmark.training.checkpoints"):
        read_checkpoint(Accelerator(cpu=True), folder, _tiny_parts())
    assert random.getstate() == seeded
    assert f"{folder}: no RNG states for process 0 (written by fewer processes); kept the seeded ones" in caplog.messages
