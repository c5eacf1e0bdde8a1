"""What a lab sees: a self-contained results.html per run, and a leaderboard that says when runs compare."""
import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmark.cli import main
from benchmark.leaderboard import leaderboard
from benchmark.report import cell, plot_icr
from benchmark.results_file import check_results, ratio_problem
from benchmark.results_page import markdown_html, write_results_page
from benchmark.sample_grid import method_grid
from implicit_concept.content_hashes import sha256_file
from implicit_concept.stats import CROSSED_AT_LEAST_BINOMIAL, EXACT_BINOMIAL

BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


def _ratio(value: float) -> dict:
    return {"value": value, "ci": [max(0.0, value - 0.1), min(1.0, value + 0.1)], "count": int(value * 10), "n": 10}


def fake_run(root: Path, track_sha: str = "t" * 8, evaluator: str = "e" * 8, icr: float = 0.4, prompts_sha: str | None = None,
             prompts: str = "icd-tiny-eval", **detector) -> Path:
    """A run folder as the benchmark leaves it: results.json, icr.png and one grid per method."""
    rows = [
        {"concept": c, "method": m, "subset": "icd-mixed", "status": "ok", "icr": _ratio(icr if m == "sd" else icr / 4),
         "fp_rate": _ratio(0.0), "quality": {"scene_fid": 50.0}, "quality_kinds": ["scene-FID"],
         **({"prompts_sha256": prompts_sha} if prompts_sha else {})}
        for c in ("qrcode", "text") for m in ("sd", "ge-full")
    ]
    results = {
        "name": root.name, "track": "tiny", "note": "a <fake> run", "rows": rows,
        "fp_rate": {"qrcode": _ratio(0.0), "text": _ratio(0.0)}, "timings": {"dataset": 1.0},
        "config": {"track_sha256": track_sha, "track": {"num_prompts": 10}}, "seeds": {"evaluation_prompts": prompts},
        "detector": {"path": "d", "sha256": evaluator, "conf": None, "thresholds": {"qrcode": 0.3, "text": 0.4},
                     "clean_reference_sha256": "c" * 64, **detector},
        "environment": {"python": "3"}, "base": {"from": "track", "weights_sha256": "b" * 64},
    }
    root.mkdir(parents=True)
    (root / "results.json").write_text(json.dumps(results))
    plot_icr(results, root / "icr.png")
    image = root / "sample.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    record = {"detections": [{"concept": "qrcode", "confidence": 0.9, "box": [4, 4, 30, 30]}]}
    for m in ("sd", "ge-full"):
        method_grid([image, image], [record, record], root / "grids" / "icd-mixed" / f"{m}.png", title=m)
    return root


def test_markdown_tables_become_html_tables_with_text_escaped():
    page = markdown_html("# T\n\n| a | b |\n|---|---|\n| <x> | **no** |\n\n- `c`\n\n## S\n")
    assert "<h1>T</h1>" in page and "<h2>S</h2>" in page and "<th>a</th>" in page and "<td>&lt;x&gt;</td>" in page
    assert "<strong>no</strong>" in page and "<li><code>c</code></li>" in page and "|---|" not in page


def test_the_page_inlines_every_image_and_fetches_nothing(tmp_path):
    run = fake_run(tmp_path / "run")
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    inlined = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(inlined) == 3  # the ICR plot and two grids, each a whole PNG
    for data in inlined:
        Image.open(io.BytesIO(base64.b64decode(data))).load()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "a &lt;fake&gt; run" in page and "ge-full" in page
    assert "&quot;environment&quot;: {\n    &quot;python&quot;: &quot;3&quot;" in page, "the environment it ran in"


@pytest.mark.skipif(BROWSER is None and not os.environ.get("CI"), reason="no headless Chromium here (CI installs it)")
def test_the_page_renders_in_a_real_browser_with_every_image_loaded_and_no_console_message(tmp_path):
    run = fake_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    harness = run / "harness.html"
    harness.write_text(
        '<!DOCTYPE html><html><body><iframe id="f" src="results.html"></iframe><script>'
        'document.getElementById("f").onload = () => { const imgs = [...document.getElementById("f").contentDocument.images];'
        'document.body.dataset.images = imgs.length; document.body.dataset.loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length; };'
        "</script></body></html>"
    )
    flags = [BROWSER, "--no-sandbox", "--allow-file-access-from-files", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    done = subprocess.run(flags + ["--dump-dom", harness.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images="3" data-loaded="3"' in done.stdout, done.stdout[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    shot = tmp_path / "results-page.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,1600", (run / "results.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert Image.open(shot).size == (1280, 1600)
    print(f"screenshot: {shot}")


def test_the_leaderboard_ranks_comparable_runs_and_says_when_runs_do_not_compare(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a", icr=0.4), fake_run(tmp_path / "b", icr=0.2)
    board = leaderboard([a, b])
    assert board.differences == []
    made_from = board.markdown.split("## Made from")[1]
    for run in (a, b):
        assert f"`{run / 'results.json'}`: {sha256_file(run / 'results.json')}" in made_from
    lines = [line for line in board.markdown.splitlines() if line.startswith(f"| {cell(tmp_path)}")]
    assert [float(line.rsplit("|", 2)[1]) for line in lines] == sorted(float(line.rsplit("|", 2)[1]) for line in lines)
    other = fake_run(tmp_path / "c", evaluator="f" * 8)
    board = leaderboard([a, other])
    assert len(board.differences) == 1 and board.differences[0].startswith("evaluator differs")
    assert "not comparable" in board.markdown
    assert main(["leaderboard", str(a), str(other), "--out", f"{tmp_path / 'lb'}/"]) == 0  # a folder typed as one
    assert "not comparable" in (tmp_path / "lb" / "leaderboard.html").read_text()
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == f"{tmp_path / 'lb' / 'leaderboard.md'}, {tmp_path / 'lb' / 'leaderboard.html'}"
    assert printed.startswith((tmp_path / "lb" / "leaderboard.md").read_text())  # the table on stdout, then where it is


@pytest.mark.parametrize("name", ["leaderboard.md", "leaderboard.html"])
@pytest.mark.parametrize("kind", ["another-tools", "link-to-a-file-elsewhere"])
def test_leaderboard_out_pages_it_did_not_write_are_refused_and_kept(tmp_path, capsys, name, kind):
    """A lab's folder named as the leaderboard's --out had its own leaderboard.md (its hand-kept
    board) or .html replaced, or a link of that name replaced by a file; the board's own pages, in a
    folder it wrote before, are replaced on a rerun."""
    run = fake_run(tmp_path / "a")
    out = tmp_path / "lab"
    out.mkdir()
    (out / "notes.md").write_text("the lab's notes\n")
    elsewhere = tmp_path / "elsewhere.md"
    elsewhere.write_text("the lab's board\n")
    if kind == "link-to-a-file-elsewhere":
        (out / name).symlink_to(elsewhere)
    else:
        (out / name).write_text("the lab's board\n")
    before = {p.name: (p.is_symlink(), p.read_bytes()) for p in out.iterdir()}
    assert main(["leaderboard", str(run), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"implicit-concept leaderboard: error: --out {out}: holds {name} ("
                                               f"{'a symbolic link' if kind != 'another-tools' else 'in a folder this command never wrote to'}"
                                               "), which the leaderboard would replace; move it away or choose another --out")
    assert {p.name: (p.is_symlink(), p.read_bytes()) for p in out.iterdir()} == before
    assert elsewhere.read_text() == "the lab's board\n"
    assert main(["leaderboard", str(run), "--out", str(tmp_path / "board")]) == 0
    (tmp_path / "board" / name).write_text("an earlier board\n")
    assert main(["leaderboard", str(run), "--out", str(tmp_path / "board")]) == 0
    assert "an earlier board" not in (tmp_path / "board" / name).read_text()


def _row(r, method="sd", concept="qrcode", **fields):
    """``r`` with the fields of one row replaced."""
    rows = [{**row, **fields} if (row["method"], row["concept"]) == (method, concept) else row for row in r["rows"]]
    return {**r, "rows": rows}


@pytest.mark.parametrize("edit, problem", [
    (lambda r: [r], "holds a JSON list, not an object"),
    (lambda r: {k: v for k, v in r.items() if k != "name"}, "name: missing, not a string"),
    (lambda r: {**r, "rows": {"sd": 1}}, "rows: a dict, not a list"),
    (lambda r: {**r, "config": ["track"]}, "config: a list, not an object"),
    (lambda r: {**r, "rows": [*r["rows"], "sd"]}, r"rows\[4\]: not an object with a method and a concept"),
    (lambda r: _row(r, icr={"value": "40%", "ci": [0, 1]}), r"rows\[0\].icr: not a ratio .* \(sd, qrcode\)"),
    (lambda r: _row(r, icr={"value": 0.4, "ci": [0.3]}), r"rows\[0\].icr: not a ratio"),
    (lambda r: _row(r, icr={"value": 0.9, "ci": [0.95, 0.1]}), r"rows\[0\].icr: not a ratio .* low <= high"),
    (lambda r: _row(r, icr={"value": float("nan"), "ci": [0, 1]}), r"NaN is not JSON"),
    (lambda r: {**r, "fp_rate": {**r["fp_rate"], "qrcode": 0.01}}, r"fp_rate.qrcode: not a ratio"),
    # a share's parts that disagree: a value typed over the measured one, its interval and counts left behind
    (lambda r: _row(r, icr={**_ratio(0.4), "value": 0.05}), r"rows\[0\].icr: value 0.05 lies outside its interval \[0.3\d*, 0.5\] \(sd, qrcode\)"),
    (lambda r: _row(r, icr={**_ratio(0.4), "value": 0.35, "interval": EXACT_BINOMIAL}),
     r"rows\[0\].icr: value 0.35 is not its count 4 of n 10 \(0.40000\)"),
    (lambda r: _row(r, icr={**_ratio(0.4), "count": 12}), r"rows\[0\].icr: count 12 of n 10: not whole numbers with 0 <= count <= n"),
    (lambda r: _row(r, icr={**_ratio(0.4), "n": 0}), r"rows\[0\].icr: count 4 of n 0: not whole numbers"),
    (lambda r: _row(r, icr={**_ratio(0.4), "count": 4.0}), r"rows\[0\].icr: count 4.0 of n 10: not whole numbers"),
    (lambda r: {**r, "fp_rate": {**r["fp_rate"], "qrcode": {**_ratio(0.0), "value": 0.2}}}, r"fp_rate.qrcode: value 0.2 lies outside"),
    (lambda r: _row(r, seeds={"0": {"icr": {**_ratio(0.4), "value": 0.9}}}), r"rows\[0\].seeds.0.icr: value 0.9 lies outside"),
    (lambda r: _row(r, seeds={"0": 0.4}), r"rows\[0\].seeds.0: a float \(0.4\), not an object with an icr ratio"),
    (lambda r: {**r, "named_base": {"qrcode": {}}}, r"named_base.qrcode.prompt: missing, not a string"),
    (lambda r: {**r, "named_base": {"qrcode": "x"}}, r"named_base.qrcode: a str, not an object"),
    (lambda r: {**r, "targets": {"checks": [{"concept": "qrcode"}]}}, r"targets.checks\[0\]: no target, measured, met"),
    (lambda r: {**r, "targets": {"checks": "all met"}}, r"targets.checks: a str, not a list"),
    (lambda r: _row(r, quality=["fid"]), r"rows\[0\].quality: a list, not an object"),
    (lambda r: _row(r, quality={"scene_fid": "low"}), r"rows\[0\].quality.scene_fid: a str .*, not a number"),
    (lambda r: _row(r, seeds=[1, 2]), r"rows\[0\].seeds: a list, not an object"),
    (lambda r: _row(r, timings={"score": "fast"}), r"rows\[0\].timings.score: a str .*, not a number of seconds"),
    (lambda r: {**r, "timings": {"generate": "slow"}}, r"timings.generate: a str .*, not a number of seconds"),
    # NaN and Infinity are what json.dumps writes by default and json.loads reads back: not JSON, refused as read
    (lambda r: {**r, "timings": {"generate": float("inf")}}, r"Infinity is not JSON"),
    (lambda r: _row(r, quality={"scene_fid": float("nan")}), r"NaN is not JSON"),
    (lambda r: {**r, "detector": {**r["detector"], "thresholds": {"qrcode": "high"}}}, r"detector.thresholds.qrcode: a str .*, not a number"),
    # null in an optional object: left out is fine, null is refused (the readers would take it as the object)
    *[(lambda r, k=k: {**r, k: None}, rf"{k}: null, not an object") for k in ("config", "detector", "targets", "timings", "seeds", "named_base")],
    *[(lambda r, k=k: _row(r, **{k: None}), rf"rows\[0\].{k}: null, not an object") for k in ("quality", "quality_detail", "timings", "seeds")],
    (lambda r: {**r, "config": {**r.get("config", {}), "track": None}}, r"config.track: null, not an object"),
    # row fields the report and the results page read beside the scores
    (lambda r: _row(r, subset=["icd-qrcode"]), r"rows\[0\].subset: a list, not a string"),
    (lambda r: _row(r, jobs=[2]), r"rows\[0\].jobs: a list, not a whole number"),
    (lambda r: _row(r, method_spec={"m": 1}), r"rows\[0\].method_spec: a dict, not a string"),
    (lambda r: _row(r, model=[]), r"rows\[0\].model: a list, not an object"),
    (lambda r: _row(r, model={"edited_in_memory": -1}), r"rows\[0\].model.edited_in_memory: not a list of strings"),
    (lambda r: _row(r, model={"scheduler": 7}), r"rows\[0\].model.scheduler: not a string"),
    # one row per method and concept: of two, each reader would silently show the last
    (lambda r: {**r, "rows": [*r["rows"], {**r["rows"][0], "icr": _ratio(0.0)}]},
     r"rows\[4\]: a second row for sd, qrcode \(the first is rows\[0\]\)"),
    # the evaluator's fields the leaderboard compares and the report states
    (lambda r: {**r, "detector": {**r["detector"], "published": "no"}}, r"detector.published: a str, not true or false"),
    (lambda r: {**r, "detector": {**r["detector"], "conf": float("nan")}}, r"NaN is not JSON"),
    (lambda r: {**r, "detector": {**r["detector"], "conf": "0.25"}}, r"detector.conf: a str .*, not a confidence"),
    (lambda r: {**r, "detector": {**r["detector"], "conf": 25}}, r"detector.conf: a int \(25\), not a confidence in \[0, 1\]"),
    (lambda r: {**r, "detector": {**r["detector"], "sha256": 54}}, r"detector.sha256: a int, not a string"),
    (lambda r: {**r, "detector": {**r["detector"], "clean_reference_sha256": ["c"]}}, r"detector.clean_reference_sha256: a list, not a string"),
])
def test_a_results_json_of_another_shape_is_refused_naming_the_file_and_field_by_every_reader(tmp_path, capsys, edit, problem):
    """A run folder handed over by another lab: the report and the leaderboard name what is wrong."""
    good = fake_run(tmp_path / "good")
    bad = fake_run(tmp_path / "bad")
    path = bad / "results.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=f"results.json: {problem}"):
        leaderboard([good, bad])
    capsys.readouterr()
    assert main(["report", str(bad)]) == 2
    assert main(["leaderboard", str(good), str(bad), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert err.count(f"{path}: ") == 2 and "Traceback" not in err
    assert not (tmp_path / "lb").exists()


@pytest.mark.parametrize("ratio, problem", [
    # written to 5 decimals: 1/3 is 0.33333, within ROUNDING of its count over n
    ({"value": 0.33333, "ci": [0.1, 0.7], "count": 1, "n": 3, "interval": EXACT_BINOMIAL}, None),
    ({"value": 0.3334, "ci": [0.1, 0.7], "count": 1, "n": 3, "interval": EXACT_BINOMIAL}, "value 0.3334 is not its count 1 of n 3 (0.33333)"),
    # a lower ICR typed over the measured one, its interval left as it was
    ({"value": 0.3, "ci": [0.1, 0.7], "count": 1, "n": 3, "interval": EXACT_BINOMIAL}, "value 0.3 is not its count 1 of n 3 (0.33333)"),
    # over seeds, the value is the seeds' mean, not the pooled count over n
    ({"value": 0.35, "ci": [0.2, 0.5], "count": 4, "n": 10, "interval": CROSSED_AT_LEAST_BINOMIAL}, None),
    ({"value": 0.4, "ci": [0.3, 0.5]}, None),  # an older results.json: no counts
    ({"value": 0.4, "ci": [0.3, 0.5], "count": 4}, "count 4 of n None: not whole numbers with 0 <= count <= n and n >= 1"),
    ({"value": 0.4, "ci": [0.3, 0.5], "n": 10}, "count None of n 10: not whole numbers"),
    ({"value": 0.1, "ci": [0.0, 0.5], "count": True, "n": 10}, "count True of n 10: not whole numbers"),
    ({"value": 0.0, "ci": [0.0, 0.5], "count": -1, "n": 10}, "count -1 of n 10: not whole numbers"),
    ({"value": 0.0, "ci": [0.0, 0.5], "count": 0, "n": 0}, "count 0 of n 0: not whole numbers"),  # a share of no images
])
def test_a_shares_parts_agree_as_far_as_its_interval_kind_says(ratio, problem):
    """A share's count and n come together or not at all, whole and in order; only an exact
    binomial share's value is its count over n, to the 5 decimals it is written with."""
    said = ratio_problem(ratio)
    assert said == problem if problem is None else said.startswith(problem)


def test_a_named_bases_share_must_lie_within_its_interval(tmp_path):
    results = json.loads((fake_run(tmp_path / "run") / "results.json").read_text())
    named = {"prompt": "a qr code", "icr": {**_ratio(0.4), "value": 0.9}, "n_prompts": 10}
    with pytest.raises(ValueError, match=r"results.json: named_base.qrcode.icr: value 0.9 lies outside its interval"):
        check_results({**results, "named_base": {"qrcode": named}}, tmp_path / "results.json")


@pytest.mark.parametrize("make, said", [
    (lambda path: os.symlink(path.name, path), "Too many levels of symbolic links"),
    (lambda path: os.symlink("gone.json", path), r"a broken symbolic link \(to gone.json\)"),
    (lambda path: path.mkdir(), "Is a directory"),
])
def test_a_results_json_that_is_no_file_to_read_is_named_as_what_it_is_by_every_reader(tmp_path, capsys, make, said):
    """A run folder unpacked from another lab's archive: its results.json is there, as a link that loops
    or leads nowhere or as a folder, and is named so, not said to be missing."""
    good = fake_run(tmp_path / "good")
    bad = fake_run(tmp_path / "bad")
    path = bad / "results.json"
    path.unlink()
    make(path)
    with pytest.raises((ValueError, FileNotFoundError), match=f"{re.escape(str(path))}: .*{said}"):
        leaderboard([good, bad])
    capsys.readouterr()
    assert main(["leaderboard", str(good), str(bad), "--out", str(tmp_path / "lb")]) == 2
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "holds neither" not in err and "Traceback" not in err and err.count(f"{path}: ") == 2
    assert not (tmp_path / "lb").exists()


def test_a_run_given_twice_to_the_leaderboard_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    """The same folder by two spellings or through a link: ranked twice beside itself, or one dropped."""
    monkeypatch.chdir(tmp_path)
    run, other = fake_run(tmp_path / "run"), fake_run(tmp_path / "other")
    os.symlink(run, tmp_path / "link")
    for twice in (["run", str(run)], ["run", "./run/"], ["link", "run"], ["run", "run"]):
        with pytest.raises(ValueError, match=rf": the same folder as {re.escape(str(Path(twice[0])))}, given twice"):
            leaderboard([Path(t) for t in [twice[0], "other", twice[1]]])
        assert main(["leaderboard", twice[0], "other", twice[1], "--out", "lb"]) == 2
        assert "given twice" in capsys.readouterr().err and not (tmp_path / "lb").exists()
    assert len([line for line in leaderboard([run, other]).markdown.splitlines() if "| sd |" in line]) == 2


def test_a_results_json_with_an_integer_python_will_not_read_is_refused_naming_the_file(tmp_path, capsys):
    """json.loads refuses an integer of over 4300 digits with a ValueError that names no file."""
    bad = fake_run(tmp_path / "bad")
    path = bad / "results.json"
    path.write_text(path.read_text()[:-1] + ', "n": ' + "9" * 5000 + "}")
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: not valid JSON (Exceeds the limit" in err and "Traceback" not in err


def _edit(run: Path, edit) -> Path:
    path = run / "results.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return run


def test_a_method_that_did_not_score_every_concept_has_no_mean_and_ranks_after_complete_ones(tmp_path):
    complete = fake_run(tmp_path / "complete", icr=0.8)
    failed = _edit(fake_run(tmp_path / "failed", icr=0.0), lambda r: _row(r, "ge-full", "qrcode", status="failed"))
    empty = _edit(fake_run(tmp_path / "empty"), lambda r: {**r, "rows": []})
    board = leaderboard([complete, failed, empty])
    table = [line for line in board.markdown.splitlines() if line.startswith(f"| {cell(tmp_path)}")]
    assert [line.split(" | ")[:2] for line in table] == [
        [f"| {cell(failed)}", "sd"], [f"| {cell(complete)}", "ge-full"], [f"| {cell(complete)}", "sd"], [f"| {cell(failed)}", "ge-full"]]
    assert table[-1].endswith("| failed | 0.0 [0.0, 10.0] | incomplete |")
    assert f"no rows scored in: {empty}" in board.notes


def test_a_method_with_no_row_for_a_concept_of_the_table_is_incomplete_and_shown_not_run(tmp_path):
    """A table's concepts are those of all its runs: a run that scored only ``text`` lists its methods
    as incomplete, "not run" under qrcode, after the complete ones (not a crash on the missing row)."""
    full = fake_run(tmp_path / "full", icr=0.8)
    text_only = _edit(fake_run(tmp_path / "text-only"), lambda r: {**r, "rows": [row for row in r["rows"] if row["concept"] == "text"]})
    board = leaderboard([full, text_only])
    table = [line for line in board.markdown.splitlines() if line.startswith(f"| {cell(tmp_path)}")]
    assert [line.split(" | ")[:2] for line in table] == [
        [f"| {cell(full)}", "ge-full"], [f"| {cell(full)}", "sd"], [f"| {cell(text_only)}", "sd"], [f"| {cell(text_only)}", "ge-full"]]
    assert table[2].endswith("| not run | 40.0 [30.0, 50.0] | incomplete |")


def test_a_run_of_another_track_with_fewer_concepts_is_ranked_on_its_own_concepts_in_its_own_table(tmp_path):
    """Runs that do not compare get a table each: one of a track scoring qrcode alone (paper-dry's) was
    shown with the other track's text column, "not run", and every method "incomplete", unranked."""
    full = fake_run(tmp_path / "full", icr=0.8)
    one = _edit(fake_run(tmp_path / "one", track_sha="u" * 8, icr=0.4),
                lambda r: {**r, "rows": [row for row in r["rows"] if row["concept"] == "qrcode"]})
    board = leaderboard([full, one])
    assert board.differences and board.differences[0].startswith("track differs")
    own = board.markdown.split(f"## {cell(one)}")[1].split("## ")[0]
    assert "| run | method | qrcode ICR % | mean ICR % |" in own and "text" not in own and "incomplete" not in own
    assert f"| {cell(one)} | ge-full | 10.0 [0.0, 20.0] | 10.0 |" in own
    assert "| text ICR % |" in board.markdown.split(f"## {cell(full)}")[1].split("## ")[0]


def test_a_method_name_with_a_pipe_stays_in_its_cell(tmp_path):
    run = _edit(fake_run(tmp_path / "run"), lambda r: {**r, "rows": [{**row, "method": row["method"].replace("sd", "s|d")} for row in r["rows"]]})
    board = leaderboard([run])
    assert main(["report", str(run)]) == 0 and main(["leaderboard", str(run), "--out", str(tmp_path / "lb")]) == 0
    for page in (tmp_path / "lb" / "leaderboard.html", run / "results.html"):
        text = page.read_text()
        assert "<td>s|d</td>" in text and "<td>s</td>" not in text and "<td>d</td>" not in text
    assert r"| s\|d |" in board.markdown


def test_prompts_compare_by_content_where_recorded_and_by_name_otherwise(tmp_path):
    a = fake_run(tmp_path / "a", prompts_sha="1" * 64, prompts="ours.csv")
    moved = fake_run(tmp_path / "moved", prompts_sha="1" * 64, prompts="/elsewhere/ours.csv")
    edited = fake_run(tmp_path / "edited", prompts_sha="2" * 64, prompts="ours.csv")
    assert leaderboard([a, moved]).differences == []
    board = leaderboard([a, edited])
    assert [d.split(":")[0] for d in board.differences] == ["prompts (content sha256) differs"]
    older = fake_run(tmp_path / "older", prompts="ours.csv")
    board = leaderboard([a, older])
    assert board.differences == [] and board.notes == [f"prompts compared by file name and count only: {older} record no prompts sha256 "
                                                       "(a results.json from an older version, or no scored rows)"]
    assert "prompts compared by file name" in board.markdown
    assert leaderboard([moved, older]).differences[0].startswith("prompts differs")


def test_a_method_that_failed_does_not_turn_a_runs_prompts_into_unrecorded(tmp_path):
    """A failed row records no prompts (nothing was scored): the run's prompts still compare by content."""
    def failed(r):
        rows = [{k: v for k, v in row.items() if k != "prompts_sha256"} | {"status": "failed: planted"}
                if (row["method"], row["concept"]) == ("ge-full", "text") else row for row in r["rows"]]
        return {**r, "rows": rows}

    a = fake_run(tmp_path / "a", prompts_sha="1" * 64)
    with_failure = _edit(fake_run(tmp_path / "failure", prompts_sha="1" * 64), failed)
    board = leaderboard([a, with_failure])
    assert board.differences == [] and board.notes == []
    edited = _edit(fake_run(tmp_path / "edited", prompts_sha="2" * 64), failed)
    assert [d.split(":")[0] for d in leaderboard([a, edited]).differences] == ["prompts (content sha256) differs"]


def test_runs_compare_only_when_the_whole_evaluator_agrees_weights_thresholds_conf_and_clean_reference(tmp_path):
    """The same weights at other thresholds (or another conf, or another clean-image reference) are
    another evaluator: finding-8's case is a copy of a run with every threshold set to 0.99."""
    a = fake_run(tmp_path / "a", prompts_sha="1" * 64)
    for name, change, key in (
        ("thresholds", {"thresholds": {"qrcode": 0.99, "text": 0.99}}, "evaluator thresholds differs"),
        ("conf", {"conf": 0.5}, "evaluator conf differs"),
        ("reference", {"clean_reference_sha256": "d" * 64}, "evaluator clean-image reference (sha256) differs"),
    ):
        board = leaderboard([a, fake_run(tmp_path / name, prompts_sha="1" * 64, **change)])
        assert [d.split(":")[0] for d in board.differences] == [key], board.differences
        assert "not comparable" in board.markdown and "Every run shares" not in board.markdown
    board = leaderboard([a, fake_run(tmp_path / "same", prompts_sha="1" * 64)])
    assert board.differences == [] and board.notes == []
    assert "Every run shares the track, the evaluator (detector weights, thresholds, conf and clean-image reference)" in board.markdown


def test_an_older_results_json_without_a_part_of_the_evaluator_gets_a_note_not_a_claim_of_agreement(tmp_path):
    """The reference results.json of commit 3b55bd5 records the weights, thresholds and conf, but no
    clean reference digest: copies of it compare on what they record, and the page says what they could not."""
    reference = json.loads((Path(__file__).parent / "fixtures" / "results-3b55bd5.json").read_text())
    assert "clean_reference_sha256" not in reference["detector"] and "thresholds" in reference["detector"]
    runs = {}
    for name, thresholds in (("lab-a", None), ("lab-b", None), ("lab-c", 0.99)):
        results = json.loads(json.dumps(reference))
        results["name"] = name
        if thresholds is not None:
            results["detector"]["thresholds"] = dict.fromkeys(results["detector"]["thresholds"], thresholds)
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
        runs[name] = tmp_path / name
    board = leaderboard([runs["lab-a"], runs["lab-b"]])
    assert board.differences == []
    assert any(n.startswith(f"evaluator clean-image reference (sha256) not compared: not recorded in {runs['lab-a']}, {runs['lab-b']}")
               for n in board.notes), board.notes
    assert "Every run shares" not in board.markdown and "not all of it is recorded: see the notes" in board.markdown
    board = leaderboard([runs["lab-a"], runs["lab-c"]])
    assert [d.split(":")[0] for d in board.differences] == ["evaluator thresholds differs"]
    assert "'qrcode': 0.99" in board.differences[0] and "not comparable" in board.markdown
    older = _edit(fake_run(tmp_path / "older", prompts_sha="1" * 64),
                  lambda r: {**{k: v for k, v in r.items() if k != "base"}, "detector": {"path": "d", "sha256": "e" * 8}})
    board = leaderboard([fake_run(tmp_path / "current", prompts_sha="1" * 64), older])
    assert board.differences == [] and len(board.notes) == 4 and all(str(older) in n for n in board.notes), board.notes


def _report_results(quality: str) -> dict:
    """results.json with every table results.md can hold: quality of the given kind ("none": none)."""
    seeds = {"0": {"icr": _ratio(0.5)}, "1": {"icr": _ratio(0.7)}}
    measured = {"scene": {"quality": {"scene_fid": 3.0, "prompt_following": 0.5}, "fid_x_icr": 1.2, "quality_kinds": ["scene-FID"],
                          "quality_detail": {"prompt_following": {"mean": {"value": 0.5, "ci": [0.4, 0.6]}}}},
                "none": {}}[quality]
    rows = [{"concept": c, "method": m, "status": "ok", "icr": _ratio(0.3), **measured, **({"seeds": seeds} if m == "sd" else {})}
            for c in ("qrcode", "watermark") for m in ("sd", "ge-model-removal", "a|pipe")]
    rows.append({"concept": "qrcode", "method": "fmn", "status": "missing: not implemented"})
    return {
        "name": "t", "track": "paper-dry", "note": "n", "rows": rows, "fp_rate": {"qrcode": _ratio(0.0), "watermark": _ratio(0.1)},
        "detector": {"sha256": "ab" * 32, "published": False, "thresholds": {"qrcode": 0.3, "watermark": 0.4}},
        "named_base": {"qrcode": {"icr": _ratio(0.8), "prompt": "<p>, with a qr code", "n_prompts": 10}},
        "targets": {"checks": [{"concept": "qrcode", "target": "ICR < 5%", "measured": "3%", "met": True}]},
        "timings": {"dataset": 1.0},
    }


@pytest.mark.parametrize("quality", ["none", "scene"])
def test_every_table_of_the_written_results_md_has_one_cell_count(tmp_path, quality):
    """Header, separator and rows of each Markdown table hold the same number of cells (a renderer
    shows a table with a 4-cell header over a 3-cell separator as text), with or without quality."""
    from benchmark.report import results_markdown
    from benchmark.results_page import _cells

    written = tmp_path / "results.md"
    written.write_text(results_markdown(_report_results(quality)), encoding="utf-8")
    lines = written.read_text(encoding="utf-8").splitlines()
    tables, block = [], []
    for line in [*lines, ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            tables.append(block)
            block = []
    assert len(tables) == {"none": 6, "scene": 7}[quality], "ICR, seeds, named base, model removal, targets, stages, quality if measured"
    for table in tables:
        assert re.fullmatch(r"\|(?:-+\|)+", table[1]), table
        counts = [len(_cells(row)) for row in table]
        assert len(set(counts)) == 1, (counts, table)
    quality_section = written.read_text(encoding="utf-8").split("## Quality")[1].split("##")[0]
    if quality == "none":
        assert "|" not in quality_section and "Quality measures: none" in quality_section
    else:
        assert "| qrcode | sd (seed 0 only) | 0.500 [0.400, 0.600] | 3.00 | 1.20 |" in quality_section, "seeds recorded before quality over seeds"
        assert "Quality measures: scene-FID" in quality_section


THREE = {"qrcode": 0.3, "watermark": 0.35, "text": 0.4}


def fake_summary(root: Path, track_sha: str = "t" * 8, evaluator: str = "e" * 8, prompts_sha: str = "1" * 64,
                 overrides: dict | None = None, scored: str = "/labs/erased-pipeline", **detector) -> Path:
    """An --out folder as score-pipeline leaves it: summary.json, a row for every concept the
    detector scores, the track's concepts among them."""
    rows = [{"concept": c, "icr": _ratio(0.2), "fp_rate": _ratio(0.0), "prompts_sha256": prompts_sha, "quality": {}, "quality_kinds": []}
            for c in ("qrcode", "watermark", "text")]
    summary = {
        "inputs": {"pipeline": scored, "model": {"class": "StableDiffusionPipeline"}}, "track": "tiny", "track_sha256": track_sha,
        "track_concepts": ["qrcode", "text"], "overrides": overrides or {},
        "prompts": {"file": "icd-tiny-eval", "sha256": prompts_sha, "count": 10, "images": 10},
        "detector": {"path": "d", "sha256": evaluator, "conf": None, "thresholds": THREE, "clean_reference_sha256": "c" * 64,
                     "published": True, **detector},
        "rows": rows, "concepts": {}, "table": "",
    }
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_a_score_pipeline_or_score_images_folder_joins_the_leaderboard_checked_as_a_run_is(tmp_path):
    run = fake_run(tmp_path / "run", prompts_sha="1" * 64, thresholds=THREE)
    handed = fake_summary(tmp_path / "mine")
    board = leaderboard([run, handed])
    assert board.differences == [] and "Every run shares" in board.markdown
    assert f"| {cell(handed)} | erased-pipeline | 20.0 [10.0, 30.0] | 20.0 [10.0, 30.0] | 20.0 |" in board.markdown  # the track's concepts only
    assert "watermark" not in board.markdown
    for name, summary, key in (
        ("track", fake_summary(tmp_path / "other-track", track_sha="u" * 8), "track differs"),
        ("evaluator", fake_summary(tmp_path / "other-detector", evaluator="f" * 8), "evaluator differs"),
        ("prompts", fake_summary(tmp_path / "other-prompts", prompts_sha="2" * 64), "prompts (content sha256) differs"),
        ("conf", fake_summary(tmp_path / "conf", conf=0.5, thresholds=dict.fromkeys(THREE, 0.5)), "evaluator thresholds differs"),
    ):
        assert key in [d.split(":")[0] for d in leaderboard([run, summary]).differences], name
    with_conf = fake_run(tmp_path / "run-conf", prompts_sha="1" * 64, conf=0.5, thresholds={"qrcode": 0.5, "text": 0.5})
    summary_conf = fake_summary(tmp_path / "summary-conf", conf=0.5, thresholds=dict.fromkeys(THREE, 0.5))
    assert leaderboard([with_conf, summary_conf]).differences == [], "one conf over the track's concepts, as results.json records it"
    lossy = fake_summary(tmp_path / "jpeg", overrides={"lossy_images": {"JPEG": 10}})
    assert leaderboard([run, lossy]).differences == [
        f'{lossy} was scored off the track\'s protocol (overrides: {{"lossy_images": {{"JPEG": 10}}}})']
    assert main(["leaderboard", str(run), str(handed), "--out", str(tmp_path / "lb")]) == 0


@pytest.mark.parametrize("folder", ["base", "oracle"])
def test_a_handed_over_folder_named_as_a_control_is_a_labs_model_ranked_not_a_control(tmp_path, folder):
    """``score-images outputs/base``: the lab's model is named after its folder, which is no control of
    a benchmark run's; listing it "(control, not ranked)" would drop it from the ranking unsaid."""
    run = fake_run(tmp_path / "run", prompts_sha="1" * 64, thresholds=THREE, icr=0.9)  # ge-full 0.225, the folder 0.2
    _edit(run, lambda r: {**r, "rows": [*r["rows"], *[{**row, "method": folder} for row in r["rows"] if row["method"] == "sd"]]})
    handed = fake_summary(tmp_path / "mine", scored=f"/labs/outputs/{folder}")
    table = [line for line in leaderboard([run, handed]).markdown.splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[:2] for line in table] == [
        [f"| {cell(handed)}", folder], [f"| {cell(run)}", "ge-full"], [f"| {cell(run)}", "sd"], [f"| {cell(run)}", f"{folder} (control, not ranked)"]]


def test_a_run_folder_that_also_holds_a_summary_json_is_read_as_the_run(tmp_path):
    """score-pipeline's --out pointed into a run folder leaves a summary.json beside its results.json:
    the folder is still the run (its methods), read and listed as made from its results.json."""
    run = fake_run(tmp_path / "run", prompts_sha="1" * 64, thresholds=THREE)
    shutil.copy(fake_summary(tmp_path / "mine") / "summary.json", run / "summary.json")
    board = leaderboard([run])
    assert {line.split(" | ")[1] for line in board.markdown.splitlines() if line.startswith(f"| {cell(run)}")} == {"sd", "ge-full"}
    assert f"`{run / 'results.json'}`" in board.markdown.split("## Made from")[1]


def test_one_model_scored_on_every_concept_of_a_per_subset_track_gets_a_note(tmp_path):
    run = fake_run(tmp_path / "run", prompts_sha="1" * 64, thresholds=THREE)
    said = "is one model scored on every concept, where the track's protocol fine-tunes one model per subset"
    for name, fields, noted in (("all-concepts", {"protocol": "per-subset", "subset": None}, True),
                                ("one-subset", {"protocol": "per-subset", "subset": "icd-qrcode"}, False),
                                ("mixed-track", {"protocol": "mixed", "subset": None}, False),
                                ("older", {}, False)):
        folder = fake_summary(tmp_path / name)
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, **fields}))
        notes = leaderboard([run, folder]).notes
        assert any(n.startswith(f"{folder} {said}") for n in notes) is noted, (name, notes)


def test_a_summary_json_of_another_shape_or_a_folder_with_neither_file_is_refused_in_one_line(tmp_path):
    broken = fake_summary(tmp_path / "broken")
    summary = json.loads((broken / "summary.json").read_text())
    summary["rows"][0]["icr"] = {"value": 2.0, "ci": [0, 1]}
    (broken / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match=r"broken/summary.json: rows\[0\].icr: not a ratio"):
        leaderboard([broken])
    for field, value, said in (
        ("track", 5, r"track: a int, not a string"),
        ("detector", {"thresholds": {"qrcode": "x"}}, r"detector.thresholds.qrcode: a str \('x'\), not a number"),
        ("rows", [{"concept": 3}], r"rows\[0\]: not an object with a concept"),
        ("overrides", ["steps"], r"overrides: not an object"),
        ("inputs", "prompts.txt", r"inputs: not an object"),
        ("prompts", 200, r"prompts: not an object"),
    ):  # every field is checked as a results.json's is
        folder = fake_summary(tmp_path / field)
        summary = json.loads((folder / "summary.json").read_text())
        summary[field] = value
        (folder / "summary.json").write_text(json.dumps(summary))
        with pytest.raises(ValueError, match=rf"{field}/summary.json: {said}"):
            leaderboard([folder])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: holds neither results.json \(a benchmark run folder\) nor summary.json"):
        leaderboard([tmp_path / "empty"])


def test_a_plug_ins_spec_code_and_in_memory_edits_are_on_its_page_and_the_leaderboard(tmp_path):
    def plug_in(results):
        results = _row(results, "ge-full", "qrcode", method_spec="mylab/methods.py:UCEEdit", method_code_sha256="ab" * 32,
                       model={"class": "StableDiffusionPipeline", "unet": "runs/x/unet", "scheduler": "DDIMScheduler",
                              "edited_in_memory": ["unet"]})
        return _row(results, "ge-full", "text", method_spec="mylab/methods.py:UCEEdit", method_code_sha256="ab" * 32)

    run = _edit(fake_run(tmp_path / "run", prompts_sha="1" * 64), plug_in)
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    assert "Plug-ins and methods changed in memory" in page
    assert "<td>ge-full</td><td>mylab/methods.py:UCEEdit</td><td>" + "ab" * 32 + "</td><td>DDIMScheduler</td><td>unet</td>" in page
    assert "Plug-ins and methods" not in write_results_page(json.loads((fake_run(tmp_path / "plain") / "results.json").read_text()),
                                                            tmp_path / "plain").read_text()
    notes = leaderboard([run]).notes
    assert notes == [f"{run} / ge-full: plug-in mylab/methods.py:UCEEdit (code sha256 {'ab' * 6}); sampled with unet changed in "
                     "memory from the folders its model names"]


def test_a_sample_grid_draws_each_images_own_boxes_on_it_at_a_readable_scale(tmp_path):
    """Image i carries the detections of record i, and a small image is enlarged (nearest) to at least 128 px
    so a box and its label can be read: a grid that drew one image's boxes on another would mislead."""
    from implicit_concept.concepts import concept

    paths = []
    for i, grey in enumerate((90, 160)):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), (grey, grey, grey)).save(paths[-1])
    records = [{"detections": [{"concept": "qrcode", "confidence": 0.9, "box": [0, 0, 8, 8]},
                               {"concept": "text", "confidence": 0.8, "box": [8, 8, 16, 16]}]}, {"detections": []}]
    sheet = Image.open(method_grid(paths, records, tmp_path / "grid.png", title="np", columns=2)).convert("RGB")
    assert sheet.size == (2 * (128 + 4) + 4, 14 + 128 + 2 * 4)  # two 128 px tiles, pad 4, a 14 px title line
    left_edge_mid = (4, 14 + 4 + 32)
    assert sheet.getpixel(left_edge_mid) == concept("qrcode").colour
    assert sheet.getpixel((4 + 132, 14 + 4 + 32)) == (160, 160, 160)
    assert sheet.getpixel((4 + 90, 14 + 4 + 90)) == (90, 90, 90)
    assert sheet.getpixel((4 + 127, 14 + 4 + 100)) == concept("text").colour, "every detection's box, not the first alone"
    assert sheet.getpixel((4 + 132 + 127, 14 + 4 + 127)) == (160, 160, 160), "the tiles under the title line, whole"


def test_a_plug_in_is_listed_once_whatever_the_number_of_concepts_it_scored():
    """The provenance table is one line per method: its spec, code and edits are the same on every concept's row."""
    from benchmark.results_page import method_provenance

    model = {"scheduler": "DDIMScheduler", "edited_in_memory": ["unet"]}
    rows = [{"concept": c, "method": "uce", "method_spec": "mylab/methods.py:UCEEdit", "method_code_sha256": "ab" * 32, "model": model}
            for c in ("qrcode", "watermark", "text")] + [{"concept": "qrcode", "method": "sd", "model": {"edited_in_memory": []}}]
    table = method_provenance({"rows": rows})
    assert table.splitlines()[2:] == [f"| uce | mylab/methods.py:UCEEdit | {'ab' * 32} | DDIMScheduler | unet |"]


def test_the_page_inlines_only_the_runs_own_png_files_and_names_the_rest(tmp_path):
    """A run folder handed over: a grid linking out of it (the page would carry that file to whoever it
    is mailed to), a FIFO (reading it waits forever), a looping link and other bytes named .png are not
    inlined but named; the run's own images still are."""
    import threading

    run = fake_run(tmp_path / "run")
    secret = tmp_path / "private.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    grids = run / "grids" / "icd-mixed"
    os.symlink(secret, grids / "linked.png")
    os.mkfifo(grids / "fifo.png")
    os.symlink("loop.png", grids / "loop.png")
    (grids / "text.png").write_text("not an image")
    (run / "icr.png").unlink()
    os.symlink(secret, run / "icr.png")
    written = []
    worker = threading.Thread(target=lambda: written.append(write_results_page(json.loads((run / "results.json").read_text()), run)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # let the reader go before failing
        os.close(os.open(grids / "fifo.png", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("the page waited on a FIFO in the run folder")
    page = written[0].read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2  # sd's and ge-full's grids
    for name, why in (("icr.png", "a link out of the run folder"), ("grids/icd-mixed/linked.png", "a link out of the run folder"),
                      ("grids/icd-mixed/fifo.png", "not a regular file"), ("grids/icd-mixed/loop.png", "not a regular file"),
                      ("grids/icd-mixed/text.png", "not a PNG file")):
        assert f"{name} ({why})" in page


def test_a_built_in_method_sampled_with_weights_changed_in_memory_is_listed_as_one():
    from benchmark.results_page import method_provenance

    rows = [{"concept": "qrcode", "method": "esd", "model": {"edited_in_memory": ["unet"]}}]
    assert method_provenance({"rows": rows}).splitlines()[2:] == ["| esd | built-in | \\- | \\- | unet |"]


def test_a_run_name_with_markup_is_text_in_the_pages_title(tmp_path):
    from benchmark.results_page import results_page

    run = fake_run(tmp_path / "run")
    results = {**json.loads((run / "results.json").read_text()), "name": "</title><script>x</script>"}
    page = results_page(results, run)
    assert "<script>" not in page and "<title>Implicit concept removal: &lt;/title&gt;&lt;script&gt;" in page


def test_an_image_caption_is_escaped_in_its_alt_text_and_caption(tmp_path):
    """A grid is captioned by its file name, which a method name makes: markup in it is shown, never run."""
    run = fake_run(tmp_path / "run")
    shutil.copy(run / "grids" / "icd-mixed" / "sd.png", run / "grids" / "icd-mixed" / '<img src=x onerror="alert(1)">.png')
    page = write_results_page(json.loads((run / "results.json").read_text()), run).read_text()
    assert '<img src=x onerror="alert(1)">' not in page
    assert 'alt="icd-mixed / &lt;img src=x onerror=&quot;alert(1)&quot;&gt;"' in page


def test_rows_with_blank_images_are_named_in_the_report_and_the_leaderboard(tmp_path):
    from benchmark.report import results_markdown

    run = fake_run(tmp_path / "run")
    _edit(run, lambda r: {**r, "rows": [{**row, "blank_images": 7} if row["method"] == "ge-full" and row["concept"] == "text" else row
                                        for row in r["rows"]]})
    results = json.loads((run / "results.json").read_text())
    report = results_markdown(results)
    section = report.split("## Blank images\n")[1].split("\n## ")[0]
    assert [line for line in section.splitlines() if line.startswith("- ")] == ["- `ge-full` on text: 7 of 10 images"]
    notes = leaderboard([run]).notes
    assert [n for n in notes if "images blank" in n] == [f"{run} / ge-full on text: 7 of 10 images blank (one flat colour), which the "
                                                  "detector finds nothing in: read its ICR with its quality"]
    plain = fake_run(tmp_path / "plain")
    assert "Blank" not in results_markdown(json.loads((plain / "results.json").read_text()))
    assert not [n for n in leaderboard([plain]).notes if "images blank" in n]


@pytest.mark.parametrize("value", [-1, 11, 2.0, "3", True])
def test_a_blank_image_count_that_is_no_count_of_the_rows_images_is_refused(tmp_path, value):
    run = fake_run(tmp_path / "run")
    _edit(run, lambda r: {**r, "rows": [{**r["rows"][0], "blank_images": value}, *r["rows"][1:]]})
    assert main(["report", str(run)]) == 2


@pytest.mark.parametrize("scored", [".", "./", "..", "/"])
def test_a_handed_over_folder_scored_as_dot_or_dotdot_is_named_after_its_out_folder_not_left_nameless(tmp_path, monkeypatch, scored):
    """``score-images . --out ../mine`` records the images as ``.``, whose name is empty: its row had no method."""
    run = fake_run(tmp_path / "run", prompts_sha="1" * 64, thresholds=THREE)
    handed = fake_summary(tmp_path / "mine", scored=scored)
    monkeypatch.chdir(tmp_path / "mine")
    table = [line.split(" | ")[:2] for line in leaderboard([run, Path(".")]).markdown.splitlines() if line.startswith("| ")]
    assert ["| .", "mine"] in table, table
    assert leaderboard([run, handed]).markdown.count(f"| {cell(handed)} | mine |") == 1


def test_report_on_a_scored_folder_says_what_it_is_and_points_to_the_leaderboard(tmp_path, capsys):
    """``report`` on a score-pipeline or score-images --out folder said "no results.json (is it a
    benchmark run folder?)", leaving the lab to guess which command takes the folder."""
    handed = fake_summary(tmp_path / "mine")
    assert main(["report", str(handed)]) == 2
    err = capsys.readouterr().err
    assert f"{handed}: a score-pipeline or score-images --out folder (its summary.json), not a benchmark run folder" in err
    assert f"implicit-concept leaderboard {handed} RUN ... --out BOARD" in err and "results.html" not in os.listdir(handed)


def test_the_leaderboard_is_never_written_into_a_run_or_scored_folder(tmp_path, capsys):
    """``leaderboard runs/a --out runs/a`` (or a folder inside it, or another run's folder) wrote a
    board of several runs into one run's record; a folder holding the runs is fine."""
    run = fake_run(tmp_path / "runs" / "a", prompts_sha="1" * 64, thresholds=THREE)
    handed = fake_summary(tmp_path / "runs" / "mine")
    other = fake_run(tmp_path / "runs" / "b", prompts_sha="1" * 64, thresholds=THREE)
    for out, said in ((run, f"is or lies inside {run}, a folder the leaderboard reads"),
                      (handed / "board", f"is or lies inside {handed}, a folder the leaderboard reads"),
                      (other, "holds results.json, so it is a benchmark run folder"),
                      (fake_summary(tmp_path / "theirs"), "holds summary.json, so it is a scored folder")):
        assert main(["leaderboard", str(run), str(handed), "--out", str(out)]) == 2
        assert f"--out {out}: {said}; write the board to a folder apart from the runs" in capsys.readouterr().err
        assert not list(tmp_path.rglob("leaderboard.*"))
    assert main(["leaderboard", str(run), str(handed), "--out", str(tmp_path / "runs")]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").glob("leaderboard.*")) == ["leaderboard.html", "leaderboard.md"]


def test_report_and_leaderboard_write_only_while_they_hold_their_output_folder(tmp_path, capsys):
    """``report`` wrote results.html into a run folder a benchmark was still writing (a page of the
    results it was replacing), and two leaderboards into one --out left one's page beside the other's
    Markdown: each now holds the folder's lock first, and one held elsewhere is refused, naming it."""
    from implicit_concept.file_locks import locked

    run = fake_run(tmp_path / "run", prompts_sha="1" * 64, thresholds=THREE)
    board = tmp_path / "board"
    board.mkdir()
    for argv, held in ((["report", str(run)], run), (["leaderboard", str(run), "--out", str(board)], board)):
        with locked(held, inside=True):  # the benchmark, or the other leaderboard, still writing
            assert main(argv) == 2
        assert f"{held}: in use by another process (pid {os.getpid()})" in capsys.readouterr().err
    assert not (run / "results.html").exists() and not list(board.glob("leaderboard.*"))
    assert main(["report", str(run)]) == 0 and main(["leaderboard", str(run), "--out", str(board)]) == 0


def test_the_leaderboard_says_how_it_lists_folders_scored_one_subset_each(tmp_path):
    """A lab's three ``score-pipeline --subset`` folders on a per-subset track (one model per subset)
    were listed as three runs, not comparable (each subset's own test captions) or incomplete, with
    nothing saying why: the board now says how such folders are listed and that none are joined."""
    folders = []
    for i, concept in enumerate(("qrcode", "watermark", "text")):
        folder = fake_summary(tmp_path / f"mine-{concept}", prompts_sha=str(i) * 64, scored=f"/labs/mine-{concept}/pipeline")
        _edit_summary(folder, subset=f"icd-{concept}", protocol="per-subset", track_concepts=[concept])
        folders.append(folder)
    board = leaderboard(folders)
    said = [n for n in board.notes if "each scored one subset of a per-subset track (--subset)" in n]
    assert said == [f"{', '.join(map(str, folders))} each scored one subset of a per-subset track (--subset): each is listed as a "
                    "run of its own, over that subset's concepts, never joined with others into one method (nothing a summary.json "
                    "records says which folders are one method's), so beside other subsets it is incomplete, or not comparable "
                    "where the track prompts each subset with its own test captions"]
    assert said[0] in _md_unescaped(board.markdown)
    whole = fake_summary(tmp_path / "whole")
    _edit_summary(whole, protocol="per-subset", subset=None)
    mixed = fake_summary(tmp_path / "mixed")
    _edit_summary(mixed, protocol="mixed", subset="icd-mixed")  # a mixed track's one subset, named: the whole track
    assert not any("each scored one subset" in n for n in leaderboard([whole, mixed, fake_summary(tmp_path / "plain")]).notes)


def _edit_summary(folder: Path, **fields) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, **fields}))


def _md_unescaped(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)
