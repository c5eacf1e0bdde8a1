"""The command line: --version, and --quiet silencing the libraries' own bars and warnings too."""
import logging
import os
import subprocess
import sys
import warnings

import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from benchmark.cli import main
from benchmark.quiet_libraries import QUIET_ENVIRONMENT

LOAD_A_PIPELINE = """
import sys
from contextlib import nullcontext
from benchmark.quiet_libraries import quiet_libraries
with quiet_libraries() if sys.argv[1] == "quiet" else nullcontext():
    from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline, save_portable_pipeline
    config = TinyPipelineConfig(image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True), attention_head_dim=8, text_hidden=16, text_layers=1, text_heads=2)
    save_portable_pipeline(build_tiny_pipeline(config, sys.argv[2] + "/tok", seed=0), sys.argv[2] + "/p")
    pipe = load_pipeline(sys.argv[2] + "/p")
    from transformers import CLIPTextModel  # a plug-in's own load: the toolkit's draw no bar of the library's
    CLIPTextModel.from_pretrained(sys.argv[2] + "/p/text_encoder", local_files_only=True)
"""


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.startswith("implicit-concept ")


def test_quiet_silences_the_libraries_bars_and_warnings(tmp_path):
    def run(mode: str) -> str:
        (tmp_path / mode).mkdir()
        env = {k: v for k, v in os.environ.items() if k not in QUIET_ENVIRONMENT}  # the noise as a user's shell has it
        done = subprocess.run([sys.executable, "-c", LOAD_A_PIPELINE, mode, str(tmp_path / mode)], capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr

    noisy, quiet = run("loud"), run("quiet")
    assert "it/s]" in noisy or "Expected types" in noisy  # the noise this test is about exists
    assert "it/s]" not in quiet and "Expected types" not in quiet and "Loading" not in quiet, quiet[-2000:]


def test_long_commands_show_one_progress_bar_and_quiet_removes_it(debug_dataset, tmp_path, capsys):
    """``verify`` and ``export`` on a built dataset (the session's, which both only read): a bar on
    stderr, none with --quiet."""
    data = debug_dataset
    for command, bar in ((["verify", str(data)], f"verify {data.name}"), (["export", str(data / "icd-mixed"), "--out", str(tmp_path / "x")], "export icd-mixed")):
        assert main(command) == 0
        err = capsys.readouterr().err
        assert bar in err and "100%" in err, err
        assert main(command + ["--quiet"]) == 0
        assert bar not in capsys.readouterr().err


def test_quiet_is_put_back_when_the_command_returns(tmp_path, monkeypatch, recwarn):
    """``main([..., "--quiet"])`` called in a process (a test, a notebook) leaves that process's
    environment, library verbosity and bars as it found them: spawned runs after it are not silenced."""
    for name in QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    ultralytics_level = logging.getLogger("ultralytics").level
    before = (dict(os.environ), diffusers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled())
    assert before[1:] != (logging.ERROR, False) and ultralytics_level != logging.ERROR, "a state --quiet would change"
    seen = {}

    def during(args):
        seen.update(env=os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"), bars=transformers_logging.is_progress_bar_enabled())
        warnings.warn("a library's deprecation during the command", FutureWarning)
        raise ValueError("the command failed")

    from benchmark import cli

    monkeypatch.setattr(cli, "_verify", during)
    assert main(["verify", str(tmp_path), "--quiet"]) == 2
    assert seen == {"env": "1", "bars": False}, "quiet while the command runs"
    assert (dict(os.environ), diffusers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()) == before
    assert logging.getLogger("ultralytics").level == ultralytics_level
    warnings.warn("a deprecation after the command", FutureWarning)
    assert [str(w.message) for w in recwarn] == ["a deprecation after the command"]


def test_quiet_leaves_bars_its_caller_turned_off_off(tmp_path, monkeypatch):
    """Put back is as found: a notebook that turned the libraries' bars off itself does not find
    them on after a ``--quiet`` command."""
    from benchmark import cli

    monkeypatch.setattr(cli, "_verify", lambda args: 0)
    libraries = (diffusers_logging, transformers_logging)
    for library in libraries:
        library.disable_progress_bar()
    try:
        assert main(["verify", str(tmp_path), "--quiet"]) == 0
        after = [library.is_progress_bar_enabled() for library in libraries]
    finally:
        for library in libraries:
            library.enable_progress_bar()
    assert after == [False, False]


def test_quiet_leaves_an_ultralytics_imported_before_it_as_its_caller_set_it(tmp_path, monkeypatch):
    """Only an import the command made is set from the environment after it: a notebook that
    imported ultralytics and quieted it itself (``VERBOSE`` off, its logger at WARNING) has it so
    after a ``--quiet`` command, not back to the verbosity ``YOLO_VERBOSE`` would give a new import."""
    from benchmark import cli
    from implicit_concept.detector.yolo_env import import_ultralytics

    utils = import_ultralytics("ultralytics.utils")
    logger = logging.getLogger("ultralytics")
    for name in QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(utils, "VERBOSE", False)
    monkeypatch.setattr(cli, "_verify", lambda args: 0)
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        assert main(["verify", str(tmp_path), "--quiet"]) == 0
        after = logger.level, utils.VERBOSE
    finally:
        logger.setLevel(before)
    assert after == (logging.WARNING, False)


IMPORT_DURING_QUIET = """
import sys
from benchmark.quiet_libraries import quiet_libraries
from implicit_concept.detector.yolo_env import import_ultralytics, use_cache
use_cache(sys.argv[1])
with quiet_libraries():
    import_ultralytics()  # the command's first detector load
from ultralytics.utils import LOGGER
import ultralytics.utils
LOGGER.info("an epoch line after the command")
print(ultralytics.utils.VERBOSE)
"""


@pytest.mark.parametrize("shell", ["verbose", "YOLO_VERBOSE=False"])
def test_ultralytics_first_imported_within_quiet_is_as_the_callers_environment_says_after(tmp_path, shell):
    """ultralytics reads ``YOLO_VERBOSE`` once, at import: first imported within ``--quiet`` (which
    sets it for the spawned workers), it printed nothing for the rest of the process, so a later
    detector training in the same notebook or test session showed no epoch line."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENVIRONMENT}
    if shell != "verbose":
        env["YOLO_VERBOSE"] = "False"
    done = subprocess.run([sys.executable, "-c", IMPORT_DURING_QUIET, str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ("True\n" if shell == "verbose" else "False\n")
    assert ("an epoch line after the command" in done.stderr) == (shell == "verbose"), done.stderr[-2000:]


def test_prompts_are_never_written_with_seeds_the_prompts_reader_refuses(tmp_path, capsys):
    from benchmark.prompts import SEED_RANGE

    out = tmp_path / "p.csv"
    assert main(["prompts", "icd-debug", "--count", "2", "--seed-base", str(SEED_RANGE[1]), "--out", str(out)]) == 2
    assert "evaluation seeds of 2 prompts must lie in" in capsys.readouterr().err and not out.exists()
    assert main(["prompts", "icd-debug", "--count", "2", "--seed-base", str(SEED_RANGE[1] - 1), "--out", str(out)]) == 0
    from benchmark.prompts import read_prompts

    assert [p.evaluation_seed for p in read_prompts(out)] == [SEED_RANGE[1] - 1, SEED_RANGE[1]]


def _commands(parser, prefix=()):
    """Every (command words, parser) below ``parser``, nested commands (``detector train``) included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_argument_of_every_command_says_what_it_is():
    import argparse

    from benchmark.cli import build_parser

    silent = [
        f"{' '.join(words)} {action.dest if not action.option_strings else action.option_strings[-1]}"
        for words, sub in _commands(build_parser())
        for action in sub._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help
    ]
    assert silent == []


def test_a_track_without_a_published_evaluator_is_refused_saying_where_a_runs_own_is(tmp_path, capsys):
    assert main(["score-images", str(tmp_path), "--track", "debug", "--out", str(tmp_path / "out"), "--no-quality"]) == 2
    err = capsys.readouterr().err
    assert "no published detector for track 'debug'" in err and "its results.json, detector.path" in err, err


def test_a_missing_quality_reference_is_refused_with_the_build_that_makes_it(tmp_path, monkeypatch, capsys):
    """score-images without the track's dataset said "build the track's dataset (make dataset)", which
    builds icd-tiny whatever the track: on --track debug the advice left the refusal as it was. The
    refusal names the folder and the build command for the track's own recipe; run as written, the
    next attempt gets past it (here to the images it lacks)."""
    import shlex

    from implicit_concept.detector.inference import Detector

    monkeypatch.setattr(Detector, "load", staticmethod(lambda path: object()))  # the detector is not what this checks
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "detector").mkdir()
    score = ["score-images", "images", "--out", "out", "--data", "my data", "--detector", "detector"]
    assert main([*score, "--track", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "my data/icd-tiny/icd-mixed/test: no such folder" in err and "implicit-concept build icd-tiny --out 'my data/icd-tiny'" in err, err
    assert main([*score, "--track", "debug"]) == 2
    err = capsys.readouterr().err
    assert "my data/icd-debug/icd-qrcode/test: no such folder" in err, err
    advice = err.split("(implicit-concept build ", 1)[1].split(")", 1)[0]
    assert main(["build", *shlex.split(advice), "--quiet"]) == 0
    capsys.readouterr()
    assert main([*score, "--track", "debug"]) == 2
    err = capsys.readouterr().err
    assert "no such folder" not in err and "images named by" in err, err


def test_score_pipeline_passes_own_scheduler_to_the_library(tmp_path, monkeypatch):
    """The CLI is thin: --own-scheduler reaches score_pipeline, and its absence means the track's sampler."""
    import benchmark.external as external

    seen = []

    def fake_score_pipeline(pipeline_dir, out, judging, **kwargs):
        seen.append(kwargs["own_scheduler"])
        raise ValueError("stop here")

    monkeypatch.setattr(external, "score_pipeline", fake_score_pipeline)
    for flags, expected in (([], False), (["--own-scheduler"], True)):
        assert main(["score-pipeline", str(tmp_path), "--track", "tiny", "--out", str(tmp_path / "o"), "--no-quality", *flags]) == 2
        assert seen[-1] is expected


def test_the_help_names_what_each_command_writes_and_caches():
    """``score-images`` writes no images; the scoring commands cache the scene-feature network under
    ``--cache``; ``benchmark`` without ``--detector`` uses the published evaluator where there is one."""
    from benchmark.cli import build_parser

    helps = {words: {a.option_strings[-1]: a.help for a in sub._actions if a.option_strings} for words, sub in _commands(build_parser())}
    assert "images" not in helps[("score-images",)]["--out"]
    assert "images" in helps[("score-pipeline",)]["--out"]
    for command in ("score-pipeline", "score-images"):
        assert "scene-feature" in helps[(command,)]["--cache"]
    assert "published" in helps[("benchmark",)]["--detector"]
