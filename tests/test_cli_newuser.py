"""The command line as a new user types it: long options spelled out (no prefix standing for one),
no empty path taken for the current folder, a quoted ``~`` as the home folder, and a folder that is not
a run left as it was by ``report``."""
import argparse
import shutil

import pytest

from benchmark import cli
from benchmark.cli import build_parser, main
from tests.test_cli_conventions import _make

COMMANDS = ("_build", "_recipe_name", "_verify", "_show", "_detector_train", "_score", "_benchmark", "_publish", "_export",
            "_leaderboard", "_report", "_prompts", "_score_pipeline", "_score_images")


@pytest.fixture
def ran(monkeypatch) -> list[str]:
    """The commands that ran, none doing its work: an argument taken for another would start a build or a benchmark."""
    ran = []
    for name in COMMANDS:
        monkeypatch.setattr(cli, name, lambda args, name=name: ran.append(name) or 0)
    return ran


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    captured = capsys.readouterr()
    assert e.value.code == 2 and captured.out == "", captured
    assert len(captured.err.splitlines()) == 1, captured.err
    return captured.err


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield sub
                yield from _subparsers(sub)


@pytest.mark.parametrize("argv, typed", [
    (["benchmark", "--track", "debug", "--run", "mine"], "--run mine"),  # was --runs: results under mine/debug
    (["prompts", "icd-tiny", "--seed", "5", "--out", "p.csv"], "--seed 5"),  # was --seed-base
    (["score-images", "imgs", "--out", "o", "--no"], "--no"),  # was --no-quality
    (["build", "icd-debug", "--work", "0"], "--work 0"),
])
def test_a_prefix_of_a_long_option_is_not_taken_for_it(tmp_path, monkeypatch, capsys, ran, argv, typed):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    err = _usage_error(capsys, argv)
    assert f"unrecognized arguments: {typed}" in err, err
    assert ran == []


def test_every_command_spells_its_long_options_out_and_takes_them_with_or_without_equals(tmp_path):
    parser = build_parser()
    assert [sub.prog for sub in _subparsers(parser) if sub.allow_abbrev] == []
    spaced = parser.parse_args(["prompts", "icd-tiny", "--count", "3", "--out", "p.csv"])
    joined = parser.parse_args(["prompts", "icd-tiny", "--count=3", "--out=p.csv"])
    assert vars(spaced) == vars(joined) and joined.count == 3


@pytest.mark.parametrize("argv, argument", [
    (["export", "{shards}", "--out", ""], "--out"),  # exported into the current folder
    (["verify", " "], "dir"),  # verified the current folder
    (["benchmark", "--track", "debug", "--runs", ""], "--runs"),
    (["benchmark", "--track", "debug", "--data", ""], "--data"),
    (["detector", "train", "{shards}", "--out", ""], "--out"),
    (["build", "icd-debug", "--out", ""], "--out"),
    (["leaderboard", "{shards}", "", "--out", "board"], "runs"),
    (["score", "{shards}", "--json", ""], "--json"),
    (["score-images", "{shards}", "--out", "o", "--cache", ""], "--cache"),
    (["recipe-name", ""], "recipe"),
])
def test_an_empty_path_is_refused_naming_its_argument_not_taken_for_the_current_folder(tmp_path, monkeypatch, capsys, ran, argv,
                                                                                        argument):
    shards = tmp_path / "shards"
    shards.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    err = _usage_error(capsys, [a.format(shards=shards) for a in argv])
    assert f"error: argument {argument}: " in err and "empty, where a path is expected" in err, err
    assert ran == [] and list(work.iterdir()) == [] and list(shards.iterdir()) == []


def test_a_quoted_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch, capsys):
    """``--out=~/x`` and ``--out '~/x'`` reach the command with the ``~`` the shell left: it made a
    folder named ``~`` in the current one, which ``rm -rf ~`` then takes for home."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    assert main(["prompts", "icd-tiny", "--count", "2", "--out=~/p.csv"]) == 0
    assert capsys.readouterr().out.startswith(f"{home / 'p.csv'}: 2 prompts")
    assert (home / "p.csv").read_text().startswith("case_number,prompt,evaluation_seed")
    assert list(work.iterdir()) == []
    args = build_parser().parse_args(["benchmark", "--runs", "~/runs", "--data", "~", "--cache", "~/c"])
    assert (args.runs, args.data, args.cache) == (str(home / "runs"), str(home), str(home / "c"))


def test_report_on_a_folder_that_is_no_run_leaves_it_as_it_was(tmp_path, capsys):
    """``report ~/photos``: refused, but with the run lock's file left among the photos."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.txt").write_text("x")
    assert main(["report", str(photos)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"implicit-concept report: error: {photos / 'results.json'}: no results.json (is {photos} a benchmark run folder?)"
    assert sorted(p.name for p in photos.iterdir()) == ["a.txt"]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("data", ["", "  "])
def test_make_dataset_with_an_empty_data_builds_nothing(tmp_path, data):
    """``make dataset DATA=`` built into ``/icd-tiny``, at the root of the disk."""
    done, calls = _make(tmp_path, "dataset", f"DATA={data}")
    assert done.returncode != 0 and calls == [], calls
    assert "DATA is empty" in done.stderr, done.stderr


def test_verify_says_each_problem_on_one_line_whatever_the_names_in_it(tmp_path, capsys):
    """A folder named with a line break split its problem over two lines of stderr, where every other
    error is one line (a log read line by line took the second half for a problem of its own)."""
    missing = tmp_path / "no\nsuch"
    assert main(["verify", str(missing), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{tmp_path}/no\\nsuch: does not exist (verify takes a built dataset's folder)"], err


def test_prompts_makes_the_folder_its_csv_goes_in(tmp_path, capsys):
    """``prompts icd-tiny --out eval/prompts.csv`` was refused ("cannot be written"), where show's
    --out and every --json make their folder."""
    out = tmp_path / "new folder" / "prompts.csv"
    assert main(["prompts", "icd-tiny", "--count", "2", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "case_number,prompt,evaluation_seed,scene"
    above = tmp_path / "a file"
    above.write_text("kept")
    assert main(["prompts", "icd-tiny", "--count", "2", "--out", str(above / "prompts.csv")]) == 2
    assert capsys.readouterr().err.strip() == (f"implicit-concept prompts: error: --out {above / 'prompts.csv'}: cannot be written "
                                               f"({above}: is a file, where a folder is expected; move it away or choose another path)")
    assert above.read_text() == "kept"


HELP_EVERYWHERE = r"""
import contextlib, io, json, sys
from benchmark.cli import build_parser, main

def commands(parser, prefix=()):
    for action in parser._actions:
        for name, sub in getattr(action, "choices", None).items() if hasattr(action, "_name_parser_map") else ():
            yield (*prefix, name)
            yield from commands(sub, (*prefix, name))

codes = {}
for command in [(), *commands(build_parser())]:
    for extra in (["--help"], ["--no-such-option"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([*command, *extra])
            except SystemExit as e:
                codes[" ".join([*command, *extra])] = [e.code, out.getvalue() != "", len(err.getvalue().splitlines())]
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "ultralytics") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_and_a_usage_error_of_every_command_import_no_heavy_library(tmp_path):
    """``--help`` and a mistyped option answer at once, on stdout and on one line of stderr
    respectively, with exit 0 and 2, however many commands there are; torch is never imported for them."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HELP_EVERYWHERE], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(cli.Path(cli.__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["heavy"] == [], seen["heavy"]
    assert len(seen["codes"]) >= 2 * 15, seen["codes"]
    for typed, (code, said_on_stdout, stderr_lines) in seen["codes"].items():
        if typed.endswith("--help"):
            assert (code, said_on_stdout, stderr_lines) == (0, True, 0), typed
        else:
            assert (code, said_on_stdout, stderr_lines) == (2, False, 1), typed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("target", ["install", "dataset", "benchmark", "test"])
def test_make_with_an_empty_venv_runs_nothing(target):
    """``make install VENV=`` made the repository itself a venv (``python3 -m venv ''``) and then ran
    pip as ``/bin/python``, the system's. Asked with -n, so that nothing runs even where it is not refused."""
    import subprocess

    from tests.test_cli_conventions import REPO

    done = subprocess.run(["make", "-n", target, "VENV="], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "VENV is empty: name a folder" in done.stderr, (done.stdout, done.stderr)
    assert "pip install" not in done.stdout, done.stdout


def test_an_empty_run_name_is_refused_not_taken_for_the_tracks(tmp_path, monkeypatch, capsys):
    """``benchmark --name "$NAME"`` with NAME unset ran as the track's default run, into (or resuming)
    ``runs/debug``, the run the lab meant to keep apart."""
    import benchmark.protocol

    started = []
    monkeypatch.setattr(benchmark.protocol, "run_benchmark", lambda run: run.check_start() or started.append(run) or {})
    monkeypatch.chdir(tmp_path)
    assert main(["benchmark", "--track", "debug", "--name", "", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "implicit-concept benchmark: error: --name: expected a folder name (letters, digits, '-', '_', '.', " \
                          "not starting with '.' or '-', at most 64 characters), got ''", err
    assert started == [] and not (tmp_path / "runs").exists()
