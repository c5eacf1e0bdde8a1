"""Tests that kill hand mutants of location tokens, loss weights, report intervals, detector
calibration, the shard writer and interrupts_not_lost that the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: a box wholly off the image or
of zero width names no location bin; a caption without a concept term carries its bins after one
space; a suffix exactly the context's length is kept; a held added token with capitals is held (it
was not: the fix is in tokens_not_held); new token rows start at the embedding's own scale; loss
weights on a non-square image and a box over an edge; Geom-Erasing's defaults are the README's; the
numbers an interval rests on; calibration's refusals and its whole number of allowed images; a
shard's keys are flat and its bytes synced before its rename; a stop sent again after a finalizer
swallowed it raises once, in its own block; and any other exception in a finalizer is still reported.
"""
from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from benchmark.models.clip_tokenizer import build_clip_tokenizer
from implicit_concept.geom_erasing.location_tokens import (
    add_tokens,
    bins_for_box,
    count_tokens,
    geometric_caption,
    location_tokens,
    tokens_not_held,
)
from implicit_concept.geom_erasing.loss_weights import latent_cells, region_mask


def _text_encoder() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))


@pytest.mark.parametrize("box", [(70, 0, 80, 10), (0, 64, 10, 90), (64, 64, 65, 65)])
def test_a_box_wholly_off_the_image_names_no_bin(box):
    """A box past the right or bottom edge is clipped to nothing: no location token claims it sits in the last column or row."""
    assert bins_for_box(box, 64, 64, 4) == []


@pytest.mark.parametrize("box", [(16, 0, 16, 10), (0, 16, 10, 16)])
def test_a_box_of_zero_width_or_height_names_no_bin(box):
    assert bins_for_box(box, 64, 64, 4) == []


def test_a_caption_without_a_concept_term_gets_its_bins_after_one_space(tokenizer):
    """Geom-Erasing without the concept's name in the caption (``concept_name`` off) passes an empty
    term: the caption written is the caption, one space, the location tokens."""
    cap = geometric_caption("a red circle", [("", [(0, 0), (1, 0)])], tokenizer)
    assert (cap.text, cap.suffix) == ("a red circle <l0,0> <l1,0>", "<l0,0> <l1,0>")


def test_a_suffix_exactly_the_context_long_is_kept_and_the_caption_dropped(tokenizer):
    terms = [("qr code", [(0, 0), (1, 0)])]
    length = count_tokens(tokenizer, "qr code <l0,0> <l1,0>")
    cap = geometric_caption("a red circle", terms, tokenizer, max_length=length)
    assert (cap.text, cap.dropped_words) == ("qr code <l0,0> <l1,0>", ("a", "red", "circle"))
    with pytest.raises(ValueError, match="alone exceed"):
        geometric_caption("a red circle", terms, tokenizer, max_length=length - 1)


def test_a_held_added_token_with_capitals_is_held(tmp_path):
    tok = build_clip_tokenizer(tmp_path / "vocab")
    add_tokens(tok, _text_encoder(), ["<Cat-Toy>"])
    assert tokens_not_held(tok, "a photo of <Cat-Toy>") == []
    assert tokens_not_held(tok, "a photo of <Dog-Toy>") == ["<Dog-Toy>"]


def test_new_token_rows_start_at_the_embeddings_own_scale(tmp_path):
    """A new row is the mean row plus noise times the per-dimension spread: an encoder whose rows
    are ten times larger gets new rows ten times larger (noise of a fixed size would be lost in a
    wide embedding, or swamp a narrow one)."""
    def started(scale, name):
        encoder = _text_encoder()
        with torch.no_grad():
            encoder.get_input_embeddings().weight.mul_(scale)
        ids = add_tokens(build_clip_tokenizer(tmp_path / name), encoder, location_tokens(2), seed=5)
        return encoder.get_input_embeddings().weight[ids].detach()

    assert torch.allclose(started(10.0, "wide"), 10.0 * started(1.0, "narrow"), rtol=1e-4, atol=1e-5)


def test_loss_weights_on_a_wide_image_take_rows_from_its_height():
    """128 x 64 pixels on a 16 x 8 latent grid: the bottom half of the image is the bottom four rows."""
    mask = region_mask([(0, 32, 16, 64)], 128, 64, 16, 8)
    expected = torch.zeros(8, 16, dtype=torch.bool)
    expected[4:8, 0:2] = True
    assert mask.equal(expected)


def test_a_box_over_the_left_or_top_edge_is_down_weighted_where_it_is_in_the_image():
    mask = region_mask([(-8, -8, 16, 16)], 64, 64, 8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:2, 0:2] = True
    assert mask.equal(expected)
    assert latent_cells((-8, -8, 16, 16), 64, 64, 8, 8) == (0, 0, 2, 2)


def test_latent_cells_of_a_box_over_the_right_edge_end_at_the_grid():
    assert latent_cells((48, 0, 80, 16), 64, 64, 16, 16) == (12, 0, 16, 4)


def test_a_box_starting_inside_a_latent_cell_down_weights_that_cell():
    """A cell is inside when its footprint overlaps the box at all, its first cell too: a concept is never left partly outside."""
    assert latent_cells((5, 5, 9, 9), 64, 64, 16, 16) == (1, 1, 3, 3)


@pytest.mark.parametrize("box", [(5, 0, 5, 16), (70, 0, 80, 16), (0, -16, 16, 0)])
def test_a_box_of_no_area_in_the_image_down_weights_nothing(box):
    """Zero width, or wholly off one edge: no cell is inside, the loss is a plain MSE."""
    assert not region_mask([box], 64, 64, 16, 16).any()


def test_bootstrap_mean_of_nothing_says_so():
    from implicit_concept.stats import bootstrap_mean

    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_mean([])


def test_identical_seeds_of_continuous_values_are_exactly_one_seed():
    """The prompts are drawn first, as bootstrap_mean draws them: three seeds that agree prompt by
    prompt give one seed's interval (0/1 values would hide a different draw in ties)."""
    import numpy as np

    from implicit_concept.stats import bootstrap_mean, hierarchical_bootstrap

    values = np.random.default_rng(3).normal(size=149)  # not a divisor of the 1500 seed draws: a shifted stream shows
    same = hierarchical_bootstrap([values] * 3, resamples=500, seed=2)
    one = bootstrap_mean(values, resamples=500, seed=2)
    assert (same.value, same.low, same.high) == pytest.approx((one.value, one.low, one.high), abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 200])
def test_clopper_pearson_at_one_hit_or_one_miss_matches_its_closed_form(n):
    """At 1 of n the lower bound solves 1 - (1 - p)^n = 2.5%, not 0; at n - 1 of n the upper bound mirrors it."""
    from implicit_concept.stats import clopper_pearson

    low, _ = clopper_pearson(1, n)
    _, high = clopper_pearson(n - 1, n)
    assert low == pytest.approx(1 - 0.975 ** (1 / n), rel=1e-9) and low > 0
    if n > 1:
        assert high == pytest.approx(0.975 ** (1 / n), rel=1e-9) and high < 1
    assert clopper_pearson(0, n)[1] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)


def test_the_crossed_interval_holds_both_the_bootstraps_and_the_students_t_interval():
    """Two seeds that agree on prompts whose values are skewed (two very low): the bootstrap reaches
    further down than a symmetric t interval and the t interval further up; the interval holds both."""
    import math

    import numpy as np

    from implicit_concept.stats import crossed_mean, hierarchical_bootstrap, student_t_quantile

    values = np.array([1.0] * 98 + [-100.0] * 2)
    boot = hierarchical_bootstrap([values, values], resamples=1000, seed=0)
    half = student_t_quantile(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    crossed = crossed_mean([values, values], resamples=1000, seed=0)
    assert boot.low < crossed.value - half and boot.high < crossed.value + half  # the case is what it says
    assert crossed.low == boot.low and crossed.high == pytest.approx(crossed.value + half, rel=1e-3)


@pytest.mark.parametrize("counts", [(0, 1, 12), (200, 199, 188)])
def test_a_share_over_seeds_stays_within_0_and_1(counts):
    from implicit_concept.stats import crossed_share

    share = crossed_share([[True] * k + [False] * (200 - k) for k in counts])
    assert 0.0 <= share.low < share.value < share.high <= 1.0
    assert share.low == 0.0 or share.high == 1.0  # the t interval reached past the bound it is clipped to


def test_fewer_than_100_resamples_are_refused_and_100_taken():
    from implicit_concept.stats import bootstrap_mean

    with pytest.raises(ValueError, match="resamples = 99, want >= 100"):
        bootstrap_mean([1.0, 2.0], resamples=99)
    assert bootstrap_mean([1.0, 2.0], resamples=100).value == 1.5


def test_an_intervals_record_keeps_its_bounds_as_precisely_as_its_value():
    """results.json's ``ci`` is what tables and other labs read: rounded as the value is (5 decimals), no coarser."""
    from implicit_concept.stats import Interval

    interval = Interval(0.1234567, 0.0123456, 0.9876543, 0.95)
    record = interval.to_json()
    assert abs(record["value"] - interval.value) <= 5e-6
    assert all(abs(got - want) <= 5e-6 for got, want in zip(record["ci"], (interval.low, interval.high)))


def test_interrupts_not_lost_puts_the_unraisable_hook_back():
    import sys

    from implicit_concept.worker_processes import interrupts_not_lost

    before = sys.unraisablehook
    with interrupts_not_lost():
        assert sys.unraisablehook is not before
    assert sys.unraisablehook is before


def test_an_exception_other_than_a_stop_in_a_finalizer_is_still_reported():
    """Only a stop is taken from the finalizer; any other exception there goes to the hook before
    (Python's "Exception ignored" report), not silently nowhere."""
    import sys

    from implicit_concept.worker_processes import interrupts_not_lost

    seen = []

    class Broken:
        def __del__(self):
            raise ValueError("closing failed")

    before = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with interrupts_not_lost():
            Broken()
    finally:
        sys.unraisablehook = before
    assert [(type(u.exc_value), str(u.exc_value)) for u in seen] == [(ValueError, "closing failed")]


#: A Ctrl-C lands in a finalizer and is sent again; the command's cleanup then gets a second Ctrl-C.
SECOND_STOP_IN_THE_CLEANUP = """
import os, signal, sys, time
from implicit_concept.worker_processes import interrupts, stopped_by


class Pool:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(10000))  # the handler runs here, inside the finalizer


try:
    with interrupts():
        try:
            Pool()
            for _ in range(1000):
                time.sleep(0.01)
            print("ran on past the Ctrl-C", flush=True)
        finally:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(20):
                time.sleep(0.01)
            print("cleanup finished", flush=True)
except KeyboardInterrupt as e:
    print(f"stopped by {stopped_by(e).name}", file=sys.stderr)
    sys.exit(130)
"""


def test_a_second_stop_after_a_resent_one_lets_the_cleanup_finish():
    """The stop sent again after a finalizer swallowed it raises once; a later Ctrl-C during the
    cleanup is a second stop as any other (the cleanup goes on), not the resent one raised again."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", SECOND_STOP_IN_THE_CLEANUP], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stdout, done.stderr) == (130, "cleanup finished\n", "stopped by SIGINT\n")


def test_calibration_without_reference_sets_says_so():
    from implicit_concept.detector.calibration import calibrate_thresholds

    with pytest.raises(ValueError, match="no reference image sets"):
        calibrate_thresholds({}, max_fp=0.02)


@pytest.mark.parametrize("max_fp", [0.29, 0.57])
def test_calibration_allows_the_whole_number_of_images_a_share_grants_despite_float_rounding(max_fp):
    """0.29 of 100 images is 29 (in floating point 28.999999999999996): 29 are flagged, not 28."""
    import numpy as np

    from implicit_concept.concepts import CONCEPT_NAMES
    from implicit_concept.detector.calibration import calibrate_thresholds

    confidences = [round(0.995 - i / 200, 4) for i in range(100)]  # 0.995 down to 0.5, all distinct
    thresholds = calibrate_thresholds({"validation_clean": dict.fromkeys(CONCEPT_NAMES, confidences)}, max_fp=max_fp)
    flagged = int(np.sum(np.asarray(confidences) >= thresholds["watermark"]))
    assert flagged == round(max_fp * 100)


#: A stop swallowed by a finalizer in one block, its resending landing after the block; then a
#: command whose cleanup gets a second Ctrl-C.
A_LATER_BLOCK = """
import os, signal, sys, threading
from implicit_concept.worker_processes import Interrupted, interrupts, interrupts_not_lost


class Pool:
    def __del__(self):
        raise KeyboardInterrupt


resent = threading.Event()
signal.signal(signal.SIGINT, lambda signum, frame: resent.set())
with interrupts_not_lost():
    Pool()
assert resent.wait(60), "the stop was not sent again"
try:
    with interrupts():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(60)
        finally:
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(0.2)
            print("cleanup finished", flush=True)
except Interrupted:
    sys.exit(130)
"""


def test_a_stop_a_finished_block_sent_again_does_not_follow_the_process_into_its_next_block():
    """What one block remembered as swallowed ends with it: in a later command's cleanup a second
    Ctrl-C is a second stop (the cleanup finishes), not a swallowed one raised again."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", A_LATER_BLOCK], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stdout) == (130, "cleanup finished\n"), done.stderr


def test_geom_erasings_default_choices_are_the_ones_the_readme_states():
    """No track sets ``alpha`` or ``grid``, so the defaults are what every published run used: the
    README's stated values and the code's agree (a changed default would silently change the benchmark)."""
    import re
    from pathlib import Path

    from implicit_concept.geom_erasing.training_target import GeomErasingConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"`\[geom_erasing\] grid = (\d+)`, `alpha = ([0-9.]+)`", readme)
    assert stated, "README no longer states Geom-Erasing's default grid and alpha"
    assert (GeomErasingConfig().grid, GeomErasingConfig().alpha) == (int(stated[1]), float(stated[2]))


def test_a_key_with_a_slash_is_refused_and_the_shard_keeps_only_flat_members(tmp_path):
    """A key ``a/b`` would be a member in a folder, which img2dataset's layout and the reader do not hold."""
    import tarfile

    from implicit_concept.shard_writer import TarShardWriter

    with TarShardWriter(tmp_path / "00000.tar") as writer:
        with pytest.raises(ValueError, match="must not contain"):
            writer.write("a/b", {"txt": b"x"})
        writer.write("ab", {"txt": b"x"})
        writer.close()
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert tar.getnames() == ["ab.txt"]


def test_a_shards_bytes_reach_the_disk_before_it_takes_its_name(tmp_path, monkeypatch):
    """Crash-safe: the temporary is synced, then renamed, so a power cut never leaves a named shard
    whose blocks were still in the page cache."""
    import os

    from implicit_concept import shard_writer

    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(shard_writer.os, "fsync", lambda fd: calls.append(("fsync", os.fstat(fd).st_ino)) or fsync(fd))
    monkeypatch.setattr(shard_writer.os, "replace", lambda a, b: calls.append(("replace", os.stat(a).st_ino)) or replace(a, b))
    writer = shard_writer.TarShardWriter(tmp_path / "00000.tar")
    writer.write("k", {"txt": b"x"})
    writer.close()
    inode = (tmp_path / "00000.tar").stat().st_ino
    assert calls == [("fsync", inode), ("replace", inode)]
