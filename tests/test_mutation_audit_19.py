"""Tests that kill hand mutants of code no earlier round mutated, or mutated in part, that the suite
let pass: benchmark/sample_grid.py, the rest of benchmark/results_page.py and benchmark/leaderboard.py,
the hostile-handovers merge (check_noise_schedule, the tokenizer check, score-images' dangling entries,
generation._kept) and worker_processes' SIGTERM handler.

Each case is behaviour a user relies on that no earlier test pinned: a sample grid of full-size
images shows them at their size, under a title line, each box labelled with its concept and its
confidence to two decimals; a scheduler config with trained_betas is taken whatever its
beta_schedule says, a first beta of 0 is a schedule, an IndexError or a NaN schedule is said as the
config's problem; a line after a list and a lone star are shown as written, grids are in name order,
a dangling icr.png is named; one run's board claims no comparison, a failed row is not noted blank,
a base's own scheduler is a difference, a broken results.json beside a summary.json is named; a
tokenizer that is a file is "not a folder"; a FIFO where an image was is drawn anew, not waited on;
a worker's SIGTERM while it starts a command is held, and on SIGTERM a worker lets go of a queue
lock it holds (a Queue's too) and never of one another worker holds.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import benchmark.sample_grid as sample_grid
from benchmark.leaderboard import leaderboard
from benchmark.models.pipelines import check_noise_schedule
from benchmark.results_page import markdown_html, write_results_page
from benchmark.sample_grid import method_grid
from tests.test_results_page import _edit, fake_run


def _images(tmp_path, size: int, count: int = 1) -> list:
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (size, size), (90 + 40 * i, 90, 90)).save(paths[-1])
    return paths


def test_a_sample_grid_of_images_past_128_px_shows_them_at_their_own_size(tmp_path):
    """Only a small image is enlarged: a 512 px sample (SD v1.5's) is drawn as it is, not shrunk to nothing."""
    sheet = Image.open(method_grid(_images(tmp_path, 200), [{"detections": []}], tmp_path / "grid.png", title="sd", columns=1))
    assert sheet.size == (200 + 2 * 4, 14 + 200 + 2 * 4)
    assert sheet.convert("RGB").getpixel((4 + 100, 14 + 4 + 100)) == (90, 90, 90)


def test_a_sample_grid_has_its_title_in_black_on_a_white_line_above_the_tiles(tmp_path):
    """The title says whose samples these are (subset / method): a grid mailed on its own is read by it."""
    sheet = Image.open(method_grid(_images(tmp_path, 16, 2), [{"detections": []}] * 2, tmp_path / "grid.png",
                                   title="icd-mixed / ge-full", columns=2)).convert("RGB")
    line = [sheet.getpixel((x, y)) for y in range(14) for x in range(sheet.width)]
    assert sheet.getpixel((sheet.width - 1, 0)) == (255, 255, 255) and line.count((255, 255, 255)) > len(line) // 2
    assert any(max(p) < 100 for p in line), "the title's text drawn"


def test_each_box_of_a_sample_grid_is_labelled_with_its_concept_and_its_confidence_to_two_decimals(tmp_path, monkeypatch):
    drawn = []

    def annotate(image, boxes, scale):
        drawn.append((list(boxes), scale))
        return image.convert("RGB").resize((image.width * scale, image.height * scale))

    monkeypatch.setattr(sample_grid, "annotate", annotate)
    record = {"detections": [{"concept": "qrcode", "confidence": 0.9, "box": [0, 0, 8, 8]},
                             {"concept": "text", "confidence": 0.456, "box": [8, 8, 16, 16]}]}
    method_grid(_images(tmp_path, 16), [record], tmp_path / "grid.png", title="np")
    assert drawn == [([("qrcode 0.90", [0, 0, 8, 8]), ("text 0.46", [8, 8, 16, 16])], 8)]


@pytest.mark.parametrize("fields", [
    {"trained_betas": [0.01] * 1000, "beta_schedule": "sigmoid"},
    {"beta_schedule": "linear", "beta_start": 0.0, "beta_end": 0.02},
    {"trained_betas": [0.0] * 999 + [0.02]},
])
def test_a_noise_schedule_with_trained_betas_or_a_first_beta_of_0_is_taken(tmp_path, fields):
    """Every scheduler builds trained_betas as given and reads no beta_schedule then: a config that
    carries both is a schedule, not an unknown one. A beta of 0 adds no noise at its step; only a
    schedule of nothing but zeros is none."""
    check_noise_schedule({"num_train_timesteps": 1000, **fields}, tmp_path / "scheduler_config.json")


def test_a_line_right_after_a_list_is_kept_and_single_stars_are_text():
    """The page shows all the Markdown says: a paragraph straight after a bullet list is not swallowed,
    and a lone ``*`` (a product, a wildcard) is a star, where only ``**...**`` is bold."""
    assert markdown_html("- a\n- b\nafter the list\n") == "<ul><li>a</li><li>b</li></ul>\n<p>after the list</p>"
    assert markdown_html("FID * ICR, **bold**") == "<p>FID * ICR, <strong>bold</strong></p>"
    assert markdown_html("a *b* c") == "<p>a *b* c</p>"


def test_the_pages_grids_are_in_name_order_whatever_order_the_folder_lists_them(tmp_path):
    """Same run folder, same page: the grids follow subset then method name, not the file system's order."""
    run = fake_run(tmp_path / "run")
    for name in ("zz", "aa", "mm"):
        shutil.copy(run / "grids" / "icd-mixed" / "sd.png", run / "grids" / "icd-mixed" / f"{name}.png")
    shutil.copytree(run / "grids" / "icd-mixed", run / "grids" / "icd-alpha")
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    captions = re.findall(r"<figcaption>(icd-[^<]*)</figcaption>", page)
    assert captions == [f"{s} / {m}" for s in ("icd-alpha", "icd-mixed") for m in ("aa", "ge-full", "mm", "sd", "zz")]


def test_an_icr_plot_left_a_dangling_link_is_named_on_the_page_not_dropped_unsaid(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "icr.png").unlink()
    os.symlink("gone.png", run / "icr.png")
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    assert "Not shown: icr.png (not a regular file)." in page


def test_an_empty_trained_betas_rescaled_to_zero_snr_is_refused_naming_the_file(tmp_path):
    """diffusers fails on it with an IndexError: said as the config's problem, in one line."""
    config = tmp_path / "scheduler_config.json"
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: no noise schedule can be built from its beta fields \\(IndexError"):
        check_noise_schedule({"num_train_timesteps": 1000, "trained_betas": [], "rescale_betas_zero_snr": True}, config)


def test_a_schedule_rescaled_to_zero_snr_from_all_zero_betas_is_said_to_be_nan_not_zero(tmp_path):
    """Rescaling divides by the spread of the noise levels, none here: every beta is NaN, and the error
    says so (step 0 is nan) rather than that every beta is 0."""
    config = tmp_path / "scheduler_config.json"
    with pytest.raises(ValueError, match=r"beta at training step 0 is nan \(beta_schedule 'linear', beta_start 0\.0, beta_end 0\.0\)"):
        check_noise_schedule({"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0, "beta_end": 0.0,
                              "rescale_betas_zero_snr": True}, config)


def test_a_leaderboard_of_one_run_says_nothing_of_comparisons_it_did_not_make(tmp_path):
    """"Not compared: not recorded in <run>" is about two runs or more; one run's board is compared with
    nothing, whatever its results.json records."""
    def older(results):
        detector = {k: v for k, v in results["detector"].items() if k not in ("conf", "clean_reference_sha256")}
        return {**{k: v for k, v in results.items() if k != "base"}, "detector": detector}

    run = _edit(fake_run(tmp_path / "run", prompts_sha="1" * 64), older)
    assert not [n for n in leaderboard([run]).notes if "not compared" in n]
    other = fake_run(tmp_path / "other", prompts_sha="1" * 64)
    assert [n.split(":")[0] for n in leaderboard([run, other]).notes if "not compared" in n] == [
        "base model (weights sha256) not compared", "evaluator conf not compared", "evaluator clean-image reference (sha256) not compared"]


@pytest.mark.parametrize("make, said", [(lambda p: p.write_text("{}"), "not a folder"), (lambda p: os.symlink("gone", p), "not a folder"),
                                        (lambda p: None, "missing")])
def test_a_tokenizer_that_is_a_file_or_a_dangling_link_is_said_not_a_folder_not_missing(tmp_path, make, said):
    """A listing shows it there: "missing" would send the lab looking for what they can see."""
    from benchmark.models.config_sizes import check_prompt_length

    tokenizer = tmp_path / "tokenizer"
    make(tokenizer)
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(tokenizer))}: {said} \\(the pipeline's tokenizer"):
        check_prompt_length(tokenizer, 77, tmp_path / "text_encoder" / "config.json")


def test_a_failed_row_is_not_noted_for_blank_images(tmp_path):
    """The blank-images note is about a scored row's ICR; a row that failed has none to read with it."""
    from tests.test_results_page import _row

    run = _edit(fake_run(tmp_path / "run"), lambda r: _row(_row(r, "ge-full", "qrcode", status="failed", blank_images=3),
                                                           "ge-full", "text", blank_images=2))
    assert [n for n in leaderboard([run]).notes if "images blank" in n] == [
        f"{run} / ge-full on text: 2 of 10 images blank (one flat colour), which the detector finds nothing in: read its ICR with its quality"]


def test_a_workers_sigterm_while_it_starts_a_command_is_held_for_after_not_taken_at_once():
    """Taken inside starting_group, the command being started would outlive the worker, never registered."""
    code = ("import os, signal; from implicit_concept import worker_processes as w\n"
            "w._worker = os.getpid()\n"  # as start_worker records it: the handler's own process
            "w._starting.append(True)\n"
            "w._terminated(signal.SIGTERM, None)\n"
            "print(w._held == [signal.SIGTERM], signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "True True\n"), done.stderr


def test_a_worker_stopped_while_waiting_for_the_queue_lock_leaves_the_holders_lock_taken():
    """Only a lock the worker holds is let go: released while another worker holds it, two workers
    would read the queue at once (a task lost or read twice)."""
    code = """
import multiprocessing, signal, time
from multiprocessing.queues import SimpleQueue
from implicit_concept import worker_processes as w

ctx = multiprocessing.get_context("fork")
q = SimpleQueue(ctx=ctx)
held = ctx.Event()

def hold():
    q._rlock.acquire()
    held.set()
    time.sleep(60)

holder = ctx.Process(target=hold, daemon=True)
holder.start()
held.wait(30)

def stop(signum, frame):
    waiting = frame
    while waiting is not None and waiting.f_code is not SimpleQueue.get.__code__:
        waiting = waiting.f_back
    if waiting is None:  # not yet inside get, waiting for the lock: a loaded machine
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    w._let_go_of_the_queue(frame)
    raise KeyboardInterrupt

signal.signal(signal.SIGALRM, stop)
signal.setitimer(signal.ITIMER_REAL, 0.5)
try:
    q.get()
except KeyboardInterrupt:
    pass
print(q._rlock.acquire(False))
holder.kill()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


def test_an_executor_worker_stopped_while_it_holds_its_queues_lock_lets_it_go():
    """A ProcessPoolExecutor's worker waits in a multiprocessing Queue's get, holding its read lock:
    ended holding it, the parent's shutdown waited for it forever."""
    code = """
import multiprocessing, os, signal, sys
from implicit_concept import worker_processes as w

q = multiprocessing.get_context("fork").Queue()

def stop(signum, frame):
    if not q._rlock._semlock._is_mine():  # not yet inside get holding the lock: a loaded machine
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        return
    w._let_go_of_the_queue(frame)
    print(q._rlock.acquire(False), flush=True)
    os._exit(0)

signal.signal(signal.SIGALRM, stop)
signal.setitimer(signal.ITIMER_REAL, 0.5)
q.get()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr


def test_a_run_sampled_with_its_bases_own_scheduler_is_a_difference_on_the_board(tmp_path):
    run = _edit(fake_run(tmp_path / "run"), lambda r: {**r, "base": {**r["base"], "sampler": "EulerDiscreteScheduler"}})
    board = leaderboard([run, fake_run(tmp_path / "other")])
    assert board.differences == [f"{run} sampled off the track's protocol, with its base's own scheduler (EulerDiscreteScheduler)"]


def test_a_broken_results_json_link_beside_a_summary_json_is_named_not_passed_over(tmp_path):
    """Which of the two files is the folder's record is not for the board to guess: a results.json
    that is there but cannot be read is said, where reading the summary.json would rank the other."""
    from tests.test_results_page import fake_summary

    folder = fake_summary(tmp_path / "scored")
    os.symlink("gone.json", folder / "results.json")
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(folder / 'results.json'))}: a broken symbolic link \\(to gone.json\\)"):
        leaderboard([folder])


def test_a_fifo_where_a_drawn_image_was_is_drawn_anew_not_waited_on(tmp_path):
    """A rerun checks what stands under each image's name: a FIFO there is no image to keep, and
    opening it to read its header would wait for a writer forever."""
    import threading

    from benchmark.generation import _kept

    fifo = tmp_path / "0_0.png"
    os.mkfifo(fifo)
    kept = []
    worker = threading.Thread(target=lambda: kept.append(_kept(fifo, 64)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # let the reader go before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the rerun waited on a FIFO named as an image")
    assert kept == [False]


def test_a_per_subset_track_of_one_concept_scored_whole_gets_no_one_model_note(tmp_path):
    """With one concept, one model scored on it is the protocol's one model for its one subset."""
    from tests.test_results_page import _edit_summary, fake_summary

    folder = fake_summary(tmp_path / "one-concept")
    _edit_summary(folder, protocol="per-subset", subset=None, track_concepts=["qrcode"])
    assert not [n for n in leaderboard([folder]).notes if "is one model scored on every concept" in n]
    _edit_summary(folder, track_concepts=["qrcode", "text"])
    assert [n for n in leaderboard([folder]).notes if "is one model scored on every concept" in n]
