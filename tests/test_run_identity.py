"""A run's record names what made its results by content: a resume is the same run however its
inputs were typed or wherever they lie, and is refused, naming the field, when their content differs;
a track's sha256 (what the leaderboard compares) names its recipe and prompts files by content."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from benchmark.benchmark_run import BenchmarkRun
from benchmark.prompts import PROMPTS_DIR
from benchmark.track import load_track
from implicit_concept.concepts import CONCEPT_NAMES
from manifests import RECIPES_DIR

REFERENCE = Path(__file__).resolve().parent.parent / "benchmark" / "reference" / "tiny" / "results.json"


def _images(folder: Path, words: str = "a field") -> Path:
    folder.mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(folder / f"img{i}.jpg")
        (folder / f"img{i}.txt").write_text(f"picture {i} of {words}")
    return folder


def _detector(folder: Path, bump: float = 0.0) -> Path:
    """A detector folder in the published format (untrained weights, each moved by ``bump``)."""
    from implicit_concept.detector.inference import build_model
    from implicit_concept.detector.weights import weights_state, write_detector

    state = weights_state(build_model("yolov8n.yaml", CONCEPT_NAMES))
    state = {k: v + bump if v.is_floating_point() else v for k, v in state.items()}
    folder.mkdir(parents=True, exist_ok=True)
    write_detector(folder, state, model="yolov8n.yaml", names=CONCEPT_NAMES, imgsz=32, scale={"name": "random"},
                   thresholds=dict.fromkeys(CONCEPT_NAMES, 0.25))
    return folder


def _run(runs: Path, **given) -> BenchmarkRun:
    run = BenchmarkRun(track=load_track("debug"), name="r", runs_root=runs, **given)
    run.check_start()
    run.claim()  # as the protocol does, holding the folder's lock
    return run


def test_a_folder_source_typed_another_way_or_moved_whole_resumes_and_other_images_are_refused(tmp_path, monkeypatch):
    """run.json kept --source as typed and compared it: the same folder typed absolute was refused,
    while ``--source src`` from another working folder (other images) resumed and mixed their rows."""
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "src")
    runs = tmp_path / "runs"
    first = _run(runs, source="src")
    recorded = json.loads((runs / "r" / "run.json").read_text())
    assert recorded["source"] == "src" and recorded["source_fingerprint"]["files"] == 12
    for typed in (str(tmp_path / "src"), "./src/", str(tmp_path / "runs" / ".." / "src")):
        _run(runs, source=typed)
    _run(runs, source="src", data_root=tmp_path / "other-data")  # --data is where the dataset goes, not what it is
    os.rename(tmp_path / "src", tmp_path / "moved")  # moved whole: names, sizes and times kept
    _run(runs, source="moved")
    assert json.loads((runs / "r" / "run.json").read_text()) == recorded, "nothing rewritten"

    _images(tmp_path / "lab-b" / "src", words="a street")  # the same typed path, from another folder
    monkeypatch.chdir(tmp_path / "lab-b")
    refusal = (f"{first.root}: was made with another config (run.json differs in source_fingerprint.bytes, "
               "source_fingerprint.sha256: the source's files (names, sizes, times) are not those the run was made from); "
               "use another --name or remove the folder")
    for check in (lambda run: run.check_start(), lambda run: run.claim()):
        with pytest.raises(ValueError) as e:
            check(BenchmarkRun(track=load_track("debug"), name="r", runs_root=runs, source="src"))
        assert str(e.value) == refusal
    monkeypatch.chdir(tmp_path)
    (tmp_path / "moved" / "img3.txt").write_text("a caption changed since")
    with pytest.raises(ValueError, match=r"run.json differs in source_fingerprint\.bytes, source_fingerprint\.sha256: the source's files"):
        BenchmarkRun(track=load_track("debug"), name="r", runs_root=runs, source="moved").check_start()
    assert json.loads((runs / "r" / "run.json").read_text()) == recorded


def test_a_detector_is_recorded_by_its_weights(tmp_path, monkeypatch):
    """run.json kept --detector's path: the same weights elsewhere were refused, and other weights
    at the same path resumed."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    _detector(tmp_path / "det")
    _run(runs, detector=Path("det"))
    recorded = json.loads((runs / "r" / "run.json").read_text())
    assert recorded["detector"] == "det" and len(recorded["detector_sha256"]) == 64
    shutil.copytree(tmp_path / "det", tmp_path / "copy")
    _run(runs, detector=tmp_path / "copy" / "detector.safetensors")
    shutil.rmtree(tmp_path / "det")
    _detector(tmp_path / "det", bump=0.5)
    with pytest.raises(ValueError, match=r"run.json differs in detector_sha256: --detector's weights are not those the run was made with\); "
                                         r"use another --name or remove the folder$"):
        _run(runs, detector=Path("det"))
    with pytest.raises(ValueError, match=r"run.json differs in detector_sha256: --detector's weights"):
        _run(runs)  # the track's own detector in place of the one given
    assert json.loads((runs / "r" / "run.json").read_text()) == recorded


def test_a_run_folder_written_before_content_was_recorded_is_compared_as_it_was_then(tmp_path):
    """An older run.json (no source_fingerprint, no detector_sha256) still resumes on its inputs as
    typed, and refuses others; it is not rewritten."""
    runs = tmp_path / "runs"
    run = BenchmarkRun(track=load_track("debug"), name="r", runs_root=runs)
    older = {k: v for k, v in json.loads(json.dumps(run.record())).items() if k not in ("source_fingerprint", "detector_sha256")}
    (runs / "r").mkdir(parents=True)
    (runs / "r" / "run.json").write_text(json.dumps(older))
    _run(runs)
    _detector(tmp_path / "det")
    with pytest.raises(ValueError, match=r"run.json differs in detector\)"):
        _run(runs, detector=tmp_path / "det")
    assert json.loads((runs / "r" / "run.json").read_text()) == older


def test_rows_made_on_a_pretrained_base_are_not_resumed_on_the_tracks_own(tmp_path):
    """--pretrained is no longer compared as typed; its weights are checked against the rows' base,
    and a resume without it (the track's base) beside rows made on it is refused."""
    runs = tmp_path / "runs"
    _run(runs)
    base = {"from": "--pretrained", "weights_sha256": "ab" * 32}
    (runs / "r" / "results.json").write_text(json.dumps({"name": "r", "track": "debug", "fp_rate": {}, "rows": [], "base": base}))
    with pytest.raises(ValueError, match=r"results.json: its rows were made from a --pretrained base \(abababababab\), and none is given"):
        _run(runs)
    (runs / "r" / "results.json").write_text(json.dumps({"name": "r", "track": "debug", "fp_rate": {}, "rows": [],
                                                         "base": {**base, "from": "track"}}))
    _run(runs)


def test_a_track_names_its_recipe_and_prompts_files_by_content(tmp_path, monkeypatch):
    """track_sha256 hashed the recipe's path as typed: one recipe file at two paths gave two tracks
    (the leaderboard refused to compare them), and ``mine.toml`` from two working folders one track."""
    shipped = {name: load_track(name).sha256 for name in ("debug", "tiny")}
    assert shipped["tiny"] == json.loads(REFERENCE.read_text())["config"]["track_sha256"], "shipped tracks keep their sha256"
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(RECIPES_DIR / "icd-debug.toml", tmp_path / folder / "mine.toml")
        shutil.copy(PROMPTS_DIR / "icd-tiny-eval.csv", tmp_path / folder / "p.csv")
    copies = [load_track("debug", {"recipe": f"{f}/mine.toml", "prompts": f"{f}/p.csv"}) for f in ("a", str(tmp_path / "b"))]
    assert [t.sha256 for t in copies] == [shipped["debug"]] * 2, "a copy of a shipped file is that file"
    assert copies[0].to_dict()["recipe"] == "a/mine.toml", "the track as read keeps the path as typed"

    for folder, seed in (("a", 1), ("b", 2)):
        recipe = tmp_path / folder / "mine.toml"
        recipe.write_text(recipe.read_text().replace("seed = 20231010", f"seed = {seed}"))
    assert load_track("debug", {"recipe": "a/mine.toml"}).identity()["recipe"].startswith("sha256:")
    edited = [load_track("debug", {"recipe": f"{f}/mine.toml"}).sha256 for f in ("a", "b")]
    assert len({shipped["debug"], *edited}) == 3, "other recipes, other tracks"
    monkeypatch.chdir(tmp_path / "a")
    in_a = load_track("debug", {"recipe": "mine.toml"}).sha256
    monkeypatch.chdir(tmp_path / "b")
    assert load_track("debug", {"recipe": "mine.toml"}).sha256 != in_a, "one relative path, two recipes"
    shutil.copy(tmp_path / "a" / "mine.toml", tmp_path / "b" / "same.toml")
    assert load_track("debug", {"recipe": "same.toml"}).sha256 == in_a == edited[0]

    lines = (PROMPTS_DIR / "icd-tiny-eval.csv").read_text().splitlines()
    (tmp_path / "b" / "p.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert load_track("debug", {"prompts": "p.csv"}).sha256 != shipped["debug"], "other prompts, another track"


def test_the_leaderboard_compares_the_data_a_run_was_made_from():
    """Runs of one track on other data (``--source``, or the shipped recipe changed under its name)
    shared a table: the leaderboard compared the track's sha256 alone."""
    from benchmark.leaderboard import differences

    reference = json.loads(REFERENCE.read_text())
    older = json.loads((Path(__file__).parent / "fixtures" / "results-3b55bd5.json").read_text())
    lab = json.loads(json.dumps(reference))
    lab["config"]["recipe_sha256"] = "cd" * 32
    lines, _ = differences({"reference": reference, "lab": lab})
    assert f"data (recipe sha256) differs: reference = {reference['config']['recipe_sha256']}; lab = {'cd' * 32}" in lines
    assert not [n for n in differences({"reference": reference, "copy": reference})[1] if n.startswith("data")]
    assert "data (recipe sha256) not compared: not recorded in older (a results.json from an older version)" in \
        differences({"reference": reference, "older": older})[1]
    a, b = (json.loads(json.dumps(reference)) for _ in range(2))
    a["config"]["source_fingerprint"], b["config"]["source_fingerprint"] = {"kind": "folder", "sha256": "a"}, {"kind": "folder", "sha256": "b"}
    lines, notes = differences({"a": a, "b": b})
    assert not [n for n in lines if n.startswith("data")]
    assert "data: one recipe, but the source files differ in name, size or modification time between a, b " \
           "(other images, or the same ones copied without their times)" in notes


def test_the_leaderboard_leaves_a_handed_over_runs_data_out():
    """A pipeline or images handed over for scoring record no recipe: whose data made them is not
    known, so their row is no note that the data was not compared (its base is not either)."""
    from benchmark.leaderboard import differences

    reference = json.loads(REFERENCE.read_text())
    handed = json.loads(json.dumps(reference))
    handed["handed_over"] = True
    for key in ("recipe_sha256", "source_fingerprint"):
        handed["config"].pop(key, None)
    lines, notes = differences({"reference": reference, "handed": handed})
    assert [n for n in lines + notes if n.startswith("data")] == []


def test_a_track_recipe_file_at_another_path_resumes_the_same_run(tmp_path, monkeypatch):
    """run.json records the track by content, as its sha256 does: one recipe file copied to another
    folder, or typed absolute, was refused as another track (its path differed)."""
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "mine.toml").write_text((RECIPES_DIR / "icd-debug.toml").read_text().replace("seed = 20231010", "seed = 7"))
    for typed in ("a/mine.toml", str(tmp_path / "b" / "mine.toml")):
        run = BenchmarkRun(track=load_track("debug", {"recipe": typed}), name="r", runs_root=tmp_path / "runs")
        run.check_start()
        run.claim()
    assert json.loads((tmp_path / "runs" / "r" / "run.json").read_text())["track"]["recipe"].startswith("sha256:")


def test_the_leaderboard_notes_other_source_files_only_under_one_recipe():
    """Two recipes are other data already (a line of the table's differences): their source files
    differing is no news, and a note saying "one recipe" would be false."""
    from benchmark.leaderboard import differences

    reference = json.loads(REFERENCE.read_text())
    a, b = (json.loads(json.dumps(reference)) for _ in range(2))
    b["config"]["recipe_sha256"] = "cd" * 32
    a["config"]["source_fingerprint"], b["config"]["source_fingerprint"] = {"kind": "folder", "sha256": "a"}, {"kind": "folder", "sha256": "b"}
    lines, notes = differences({"a": a, "b": b})
    assert [n for n in notes if n.startswith("data")] == [] and any(n.startswith("data (recipe sha256) differs") for n in lines)


def test_a_resume_with_other_prompts_on_the_same_data_is_refused(tmp_path):
    """The data alone does not make a run: fewer prompts on the same recipe would mix rows scored on
    two prompt sets under one results.json."""
    runs = tmp_path / "runs"
    _run(runs)
    with pytest.raises(ValueError, match=r"run.json differs in track\.num_prompts, track_sha256\); use another --name"):
        BenchmarkRun(track=load_track("debug", {"num_prompts": 4}), name="r", runs_root=runs).claim()
