"""The machine-readable files the toolkit writes, read as a lab's scripts read them: ``JSON.parse``,
jq and pandas take strict JSON in UTF-8 only (no ``NaN`` or ``Infinity`` token, no byte that is not
UTF-8), whatever a record holds: a measure of nothing, a file name that is not UTF-8."""
import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.evaluation import quality
from benchmark.evaluation.quality import paper_fid, scene_fid
from benchmark.leaderboard import write_leaderboard
from benchmark.report import shown_name
from benchmark.results_file import read_results
from benchmark.results_page import write_results_page
from benchmark.training.checkpoints import RUN_FILE, Session, TrainState, write_finished_run
from benchmark.training.config import TrainingConfig
from benchmark.training.state_files import load_state, save_state
from implicit_concept.files import atomic_write_json
from implicit_concept.scoring import ScoreConfig, score_images
from tests.real_runs import real_run
from tests.test_detection import FakeDetector
from tests.test_results_page import _edit, fake_run

REPO = Path(__file__).resolve().parents[1]


def strict_json(path):
    """``path`` read as a strict parser reads it: UTF-8 bytes, and no NaN, Infinity or -Infinity token."""
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_bytes().decode("utf-8"), parse_constant=refuse)


def test_a_record_holding_numbers_that_are_not_finite_is_strict_json_with_null_for_each(tmp_path):
    record = {"icr": float("nan"), "ci": [float("-inf"), 1.0], "nested": {"std": (float("inf"), 0.5)}, "count": 0}
    atomic_write_json(tmp_path / "r.json", record)
    assert strict_json(tmp_path / "r.json") == {"icr": None, "ci": [None, 1.0], "nested": {"std": [None, 0.5]}, "count": 0}
    assert (tmp_path / "r.json").read_bytes().endswith(b"}\n")


def test_a_record_is_laid_out_as_the_readme_says_keys_sorted_indented_one_newline_at_the_end(tmp_path):
    """Two runs' records compare line by line (diff, git) only in the one layout."""
    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": {"d": [1, 2], "c": "é"}})
    expected = '{\n  "a": {\n    "c": "é",\n    "d": [\n      1,\n      2\n    ]\n  },\n  "b": 1\n}\n'
    assert (tmp_path / "r.json").read_bytes() == expected.encode("utf-8")


def test_the_records_on_one_line_are_those_the_readme_names(tmp_path, debug_dataset, monkeypatch):
    """The README said every JSON file is indented. Three are one line, each for its reason: a
    detector's clean_reference.json (its sha256 is the evaluator's identity: the published detector's
    identity.json and every results.json record it), an export's COCO annotations (COCO's layout) and
    the edit record beside an edited pipeline (its canonical form). Each is strict JSON on one line,
    and the README's JSON paragraph names each."""
    from benchmark.methods import interface
    from implicit_concept.detector.export import export_detection_dataset
    from implicit_concept.scoring import CleanReference

    CleanReference("the test split", {"qrcode": [0.5, 0.0], "text": [0.0, 0.25]}).write(tmp_path / "clean_reference.json")
    export_detection_dataset(debug_dataset / "icd-qrcode", tmp_path / "export", formats=("coco",))
    monkeypatch.setattr(interface, "save_portable_pipeline", lambda pipe, out: None)  # the record, not the pipeline
    ctx = interface.MethodContext(("qrcode",), tmp_path / "work", 0, lambda ft: tmp_path / "sd", lambda path: object(), tmp_path)
    (tmp_path / "work").mkdir()
    edited = ctx.edited_sd("esd", {"steps": 2, "concept": "QR code"}, lambda pipe: None)
    for path in (tmp_path / "clean_reference.json", tmp_path / "export" / "annotations" / "test.json", edited / "esd.json"):
        text = path.read_text(encoding="utf-8")
        assert strict_json(path) and text.endswith("}\n") and text.count("\n") == 1, path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    paragraph = " ".join(readme.split("Every JSON file the toolkit writes", 1)[1].split("\n\n", 1)[0].split())
    assert "indented (on one line:" in paragraph, paragraph
    said = paragraph.split("indented (on one line:", 1)[1].split("), one newline", 1)[0]
    for named in ("`clean_reference.json`", "COCO annotations", "`esd.json`", "`fmn.json`"):
        assert named in said, paragraph


def test_a_file_name_that_is_not_utf8_is_written_as_an_escape_that_reads_back_as_the_same_name(tmp_path):
    """Linux names are bytes: a folder from a Latin-1 system (``r\\xe9sultats``) is a str with a lone
    surrogate in Python. score-images on such a folder scored every image, then failed writing
    summary.json ('surrogates not allowed'); so would results.json under such a --runs."""
    folder = os.fsdecode(b"/data/r\xe9sultats")
    atomic_write_json(tmp_path / "summary.json", {"inputs": {"images": folder}, "caption": "café, 二维码"})
    read = strict_json(tmp_path / "summary.json")
    assert os.fsencode(read["inputs"]["images"]) == b"/data/r\xe9sultats"
    assert "café, 二维码".encode("utf-8") in (tmp_path / "summary.json").read_bytes(), "UTF-8 text, as every record"


def test_a_fine_tune_whose_last_loss_is_unknown_records_null_not_nan(tmp_path):
    """A checkpoint from before losses were kept, resumed with no step left: run.json said NaN."""
    state = TrainState(seed=0)
    state.step = 4
    write_finished_run(tmp_path, {"config": {"steps": 4}}, TrainingConfig(steps=4), state, Session(first_step=4, prepare_seconds=0.0))
    record = strict_json(tmp_path / RUN_FILE)
    assert record["final_loss"] is None and record["steps"] == 4


def test_scores_json_is_utf8_names_images_as_given_and_records_the_versions_that_scored(tmp_path):
    weights = tmp_path / "detector.safetensors"
    weights.write_bytes(b"fake")
    names = ["café_0.png", os.fsdecode(b"r\xe9sum\xe9_0.png")]
    images = [(name, Image.new("RGB", (16, 16), (10 * i, 0, 0))) for i, name in enumerate(names)]
    clean = [Image.new("RGB", (16, 16))] * 4
    report = score_images(images, FakeDetector(weights), ScoreConfig(), clean=clean, checkers=[])
    out = report.write_json(tmp_path / "scores.json")
    record = strict_json(out)
    assert [im["name"] for im in record["images"]] == names
    assert "café_0.png".encode("utf-8") in out.read_bytes(), "UTF-8, as summary.json and results.json, not \\u escapes"
    assert record["environment"]["packages"]["implicit-concept"], "the versions same bytes holds under"
    assert record == json.loads(json.dumps(report.to_json()))


EDIT_RECORD = """
import sys
from pathlib import Path
from benchmark.methods.interface import MethodContext

class Pipe:
    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model_index.json").write_text("{}")

root = Path(sys.argv[1])
ctx = MethodContext(concepts=("watermark",), work_dir=root / "w", seed=0, finetune=lambda ft: root / "sd",
                    load_pipeline=lambda path: Pipe(), train_shards=root)
print(ctx.edited_sd("mine", {"anchor": "marca d'\\u00e1gua, \\u6c34\\u5370"}, lambda pipe: None))  # escaped: argv is ASCII too
"""


def test_an_edit_record_is_utf8_whatever_the_locale(tmp_path):
    """``ctx.edited_sd``'s record (a plug-in's own, any text) was written in the locale's encoding:
    under ``LC_ALL=C PYTHONUTF8=0`` (ASCII) a non-ASCII anchor word failed the edit after it was made."""
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run([sys.executable, "-c", EDIT_RECORD, str(tmp_path)], env=env, capture_output=True, text=True, encoding="utf-8")
    assert done.returncode == 0, done.stderr[-2000:]
    written = (Path(done.stdout.strip()) / "mine.json").read_bytes()
    assert written == '{"anchor":"marca d\'água, 水印"}\n'.encode("utf-8")


def test_a_run_or_method_whose_name_is_not_utf8_is_shown_escaped_on_the_board_and_page(tmp_path):
    """A score-images folder from a Latin-1 system names its method (``imgs-\\xe9``): the leaderboard
    scored it, then failed writing leaderboard.md ('surrogates not allowed'); results.html alike."""
    name = os.fsdecode(b"r\xe9sultats")
    run = fake_run(tmp_path / "run").rename(tmp_path / name)  # a benchmark run's own names are ASCII: its folder's need not be
    _edit(run, lambda r: {**r, "rows": [{**row, "method": f"{row['method']}-{name}"} for row in r["rows"]]})
    write_leaderboard([run], tmp_path / "board")
    write_results_page(read_results(run), run)
    for page in (tmp_path / "board" / "leaderboard.md", tmp_path / "board" / "leaderboard.html", run / "results.html"):
        text = page.read_bytes().decode("utf-8")
        assert "r\\xe9sultats" in text.replace("\\\\", "\\"), page.name


def test_a_shown_name_gives_a_bytes_escape_for_a_byte_that_is_not_utf8_and_a_code_for_any_other_surrogate():
    """Only U+DC80..U+DCFF are bytes a name that is not UTF-8 held (the bytes below 0x80 are ASCII and
    read as themselves); another lone surrogate (half of an emoji cut in a JSON record) is no byte:
    shown as \\x41 it would name the letter A."""
    assert shown_name(os.fsdecode(b"r\xe9sum\xe9")) == "r\\xe9sum\\xe9"
    assert shown_name("cut \ud83d emoji, \udc41") == "cut \\ud83d emoji, \\udc41"
    assert shown_name("café, 二维码") == "café, 二维码"


def test_a_run_or_cache_folder_whose_name_is_not_utf8_is_refused_before_any_stage(tmp_path):
    """The pipelines a run saves cannot be written there (tokenizers takes UTF-8 paths only): the first
    fine-tune failed, minutes in, as 'icd-qrcode/sd: build(ctx) raised UnicodeEncodeError'."""
    latin1 = tmp_path / os.fsdecode(b"r\xe9sultats")
    for option, run in (("--runs", real_run(latin1 / "debug", cache=tmp_path / "cache", data_root=tmp_path / "data")),
                        ("--cache", real_run(tmp_path / "runs" / "debug", cache=latin1, data_root=tmp_path / "data"))):
        with pytest.raises(ValueError, match=rf"^{option} .*r\\xe9sultats: the folder's name is not valid UTF-8"):
            run.check_start()
        assert not os.path.exists(os.fsencode(latin1)), "refused before anything is made"


def test_a_relative_runs_folder_under_a_current_folder_whose_name_is_not_utf8_is_refused(tmp_path, monkeypatch):
    """The pipelines are written at the absolute path: ``--runs runs`` from such a folder failed as one does."""
    latin1 = tmp_path / os.fsdecode(b"r\xe9sultats")
    latin1.mkdir()
    monkeypatch.chdir(latin1)
    run = real_run(Path("runs") / "debug", cache=tmp_path / "cache", data_root=tmp_path / "data")
    with pytest.raises(ValueError, match=r"^--runs .*r\\xe9sultats/runs: the folder's name is not valid UTF-8"):
        run.check_start()
    assert list(latin1.iterdir()) == []


def test_a_checkpoints_state_is_strict_json_and_keeps_its_numbers_that_are_not_finite(tmp_path):
    """An optimizer's or scaler's inf and NaN, scalars and in arrays: tagged, not Python's tokens,
    and read back exactly (strict JSON's null would have made them None)."""
    state = {"scale": float("inf"), "found_inf": [float("nan"), -math.inf, 0.5], "array": np.array([1.0, np.inf, -np.inf, np.nan])}
    save_state(tmp_path / "state", state)
    strict_json(tmp_path / "state.json")
    back = load_state(tmp_path / "state")
    assert back["scale"] == math.inf and math.isnan(back["found_inf"][0]) and back["found_inf"][1:] == [-math.inf, 0.5]
    assert back["array"].dtype == np.float64 and np.array_equal(back["array"], state["array"], equal_nan=True)


def test_a_fid_over_fewer_than_two_images_is_refused_saying_so():
    """score-images --num-prompts 1 failed as 'feats_a: need at least 2 feature vectors for a covariance'."""
    one, two = [Image.new("RGB", (8, 8))], [Image.new("RGB", (8, 8))] * 2
    with pytest.raises(ValueError, match=r"^scene-FID needs at least 2 generated and 2 reference images, got 1 generated and 2 reference: .*--no-quality"):
        scene_fid(one, two, extractor=None)
    with pytest.raises(ValueError, match=r"^scene-FID needs .* got 2 generated and 1 reference: "):
        scene_fid(two, one, extractor=None)


class Features:
    """Scene features, one row per image."""

    id, image_size = "fake", 8

    def features(self, images):
        return np.array([[float(i), float(i % 2)] for i in range(len(images))])


class FakeInceptionFID:
    """torchmetrics' FrechetInceptionDistance without its Inception network."""

    def __init__(self, **settings):
        pass

    def to(self, device):
        return self

    def update(self, x, real):
        pass

    def compute(self):
        return 0.0


def test_a_fid_over_two_images_a_side_is_computed_and_the_papers_fid_refuses_one(tmp_path, monkeypatch):
    """Two a side are enough for a covariance; the paper track's FID refuses one as scene-FID does,
    before its Inception pass over every image."""
    two = [Image.new("RGB", (8, 8))] * 2
    score = scene_fid(two, two, Features())
    assert (score.value, score.n_generated, score.n_reference) == (pytest.approx(0.0, abs=1e-6), 2, 2)
    monkeypatch.setattr(quality, "_torchmetrics", lambda module, name, extra: FakeInceptionFID)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"unread")
    assert paper_fid(two, two, weights).value == 0.0
    with pytest.raises(ValueError, match=r"^FID needs at least 2 generated and 2 reference images, got 1 generated"):
        paper_fid(two[:1], two, weights)


#: tempfile's file makers, each with where its mode is among its arguments.
TEMPORARY_FILES = {"TemporaryFile": 0, "NamedTemporaryFile": 0, "SpooledTemporaryFile": 1}


def _text_opens_without_encoding(source: Path) -> list[str]:
    """Where ``source`` opens a text file in the locale's encoding: ``open``/``Path.open``/``os.fdopen``
    or a tempfile in a text mode, ``read_text``/``write_text``, with no ``encoding`` named."""
    def mode(call, position, default="'r'"):
        if len(call.args) > position:
            return ast.unparse(call.args[position])
        named = [k.value for k in call.keywords if k.arg == "mode"]
        return ast.unparse(named[0]) if named else default

    found = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else None
        if (isinstance(func, ast.Name) and func.id == "open") or (owner == "io" and func.attr == "open"):
            text = "b" not in mode(node, 1)
        elif owner in ("gzip", "bz2", "lzma") and func.attr == "open":  # binary unless a text mode is named
            text = "t" in mode(node, 1, "'rb'")
        elif owner == "os" and func.attr == "fdopen":
            text = "b" not in mode(node, 1)
        elif owner == "tempfile" and func.attr in TEMPORARY_FILES:  # binary unless a text mode is named
            text = "b" not in mode(node, TEMPORARY_FILES[func.attr], "'w+b'")
        elif isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text"):
            text = True
        elif isinstance(func, ast.Attribute) and func.attr == "open" and owner not in ("Image", "tarfile", "os") and not owner.endswith("TarFile"):
            text = "b" not in mode(node, 0)
        else:
            text = False
        if text:
            found.append(f"{source}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_every_text_file_the_toolkit_reads_or_writes_is_utf_8_whatever_the_locale():
    """Records are UTF-8 (a name that is not ASCII, a lab's caption); a read in the locale's encoding
    (a machine set to Latin-1) takes them as other characters, or fails. Every text open names its
    encoding; found: the checksums listing a fine-tune's cache key is made of, and results.md printed."""
    sources = [path for package in ("implicit_concept", "builders", "benchmark") for path in sorted((REPO / package).rglob("*.py"))]
    assert len(sources) > 50
    assert [line for path in sources for line in _text_opens_without_encoding(path)] == []


def test_the_encoding_check_finds_text_opens_in_the_locale_s_encoding(tmp_path):
    source = tmp_path / "module.py"
    source.write_text("import pathlib\np = pathlib.Path('x')\np.read_text()\nopen(p, 'w')\np.open()\np.write_text('a')\n"
                      "open(p, 'rb')\np.open('wb')\np.read_text(encoding='utf-8')\nopen(p, encoding='utf-8')\n"
                      "import gzip\ngzip.open(p, 'rb')\ngzip.open(p, 'rt')\ngzip.open(p)\n"
                      "import io, os, tempfile\nio.open(p)\nos.fdopen(3, 'w')\nos.fdopen(3, 'rb')\ntempfile.NamedTemporaryFile('w')\n"
                      "tempfile.TemporaryFile()\ntempfile.SpooledTemporaryFile(10, mode='w+')\nos.open(p, os.O_RDONLY)\n", encoding="utf-8")
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in _text_opens_without_encoding(source)] == [
        "3", "4", "5", "6", "13", "16", "17", "19", "21"]


def test_json_dash_prints_strict_json_as_the_files_are(capsys):
    """``--json -`` is for scripts piping into jq: a measure of nothing (NaN) printed as Python's
    ``NaN`` token made jq fail where ``--json FILE`` holds ``null``."""
    from benchmark.cli import _json_result

    assert _json_result("-", {"icr": float("nan"), "ci": [float("inf"), 0.5], "name": "imgs-\udce9"}) is True
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1
    assert json.loads(printed, parse_constant=lambda token: pytest.fail(f"{token} is not JSON")) == {
        "ci": [None, 0.5], "icr": None, "name": "imgs-\udce9"}
