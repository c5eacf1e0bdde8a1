"""Tests that kill hand mutants of code no earlier round mutated, or mutated in part, that the suite
let pass: benchmark/sample_grid.py, the rest of benchmark/results_page.py and benchmark/leaderboard.py,
the hostile-handovers merge (check_noise_schedule, the tokenizer check, score-images' dangling entries,
generation._kept) and worker_processes' SIGTERM handler.

Each case is behaviour a user relies on that no earlier test pinned: a sample grid of full-size
images shows them at their size, under a title line, each box labelled with its concept and its
confidence to two decimals; a scheduler config with trained_betas is taken whatever its
beta_schedule says, as diffusers builds it.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from PIL import Image

import benchmark.sample_grid as sample_grid
from benchmark.models.pipelines import check_noise_schedule
from benchmark.results_page import markdown_html, write_results_page
from benchmark.sample_grid import method_grid
from tests.test_results_page import fake_run


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
