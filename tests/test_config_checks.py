"""Configuration is checked whole at the edge: tracks, detector scales and the command line refuse
bad values before any stage runs, in one line naming the file and the field (no training here)."""
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark.benchmark_run import BenchmarkRun
from benchmark.cli import build_parser, main
from benchmark.track import TRACKS_DIR, TrackError, load_track
from benchmark.track_check import _subsets_read, check_track
from builders.recipe import load_recipe
from implicit_concept.detector.training import ScaleError, load_scale
from manifests import RECIPES_DIR

DEBUG = (TRACKS_DIR / "debug.toml").read_text()


def _track_file(tmp_path: Path, replace: dict[str, str] | None = None, append: str = "", name: str = "mine.toml") -> Path:
    """A copy of the debug track with whole lines replaced (``'num_prompts = 8': 'num_prompts = 8.5'``)."""
    text = DEBUG
    for old, new in (replace or {}).items():
        assert re.search(rf"^{re.escape(old)}$", text, flags=re.M), old
        text = re.sub(rf"^{re.escape(old)}$", new.replace("\\", "\\\\"), text, count=1, flags=re.M)
    path = tmp_path / name
    path.write_text(text + append)
    return path


def _refused(path: Path, *fragments: str) -> str:
    """The one-line error for a track file, which must name the file and every fragment."""
    with pytest.raises(TrackError) as e:
        check_track(load_track(path))
    message = str(e.value)
    assert str(path) in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# 1 and 3: every field is checked before the first stage.

def test_prompts_and_their_count_are_checked_before_any_stage(tmp_path):
    _refused(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': 'prompts = "icd-tiny-evla"'}), "prompts", "icd-tiny-evla")
    _refused(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': "prompts = 5"}), "prompts:")
    _refused(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': 'prompts = ""'}), "prompts:")
    csv = tmp_path / "three.csv"
    csv.write_text("case_number,prompt,evaluation_seed\n0,a,1\n1,b,2\n2,c,3\n")
    # more prompts asked for than the file holds: refused, never silently fewer
    message = _refused(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': f'prompts = "{csv}"'}), "num_prompts = 8", "only 3 prompts")
    assert str(csv) in message
    check_track(load_track(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': f'prompts = "{csv}"', "num_prompts = 8": "num_prompts = 3", "named_prompts = 4": "named_prompts = 3"})))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("case,prompt\n0,a\n")
    _refused(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': f'prompts = "{bad_csv}"'}), "missing column")


@pytest.mark.parametrize("value", ["8.5", "true", "nan", "inf", '"8"', "0"])
def test_num_prompts_must_be_a_positive_integer(tmp_path, value):
    _refused(_track_file(tmp_path, {"num_prompts = 8": f"num_prompts = {value}"}), "num_prompts:")


@pytest.mark.parametrize("size", [32, 60, 63, 128, 4096])
def test_generation_image_size_must_fit_the_base(tmp_path, size):
    text = DEBUG.replace("[generation]\nsteps = 4\nguidance_scale = 7.5\nimage_size = 64", f"[generation]\nsteps = 4\nguidance_scale = 7.5\nimage_size = {size}")
    assert text != DEBUG
    path = tmp_path / "size.toml"
    path.write_text(text)
    _refused(path, "[generation]", f"image_size = {size}")


def test_generation_image_size_with_pretrained_base_is_a_multiple_of_8():
    track = load_track("debug", {"generation": {"steps": 4, "image_size": 60}})
    with pytest.raises(TrackError, match="image_size = 60: a diffusers pipeline needs a multiple of 8"):
        check_track(track, pretrained=Path("/some/sd"))
    check_track(load_track("debug", {"generation": {"steps": 4, "image_size": 512}}), pretrained=Path("/some/sd"))


def test_quality_fields_are_checked(tmp_path):
    paper = DEBUG.replace('[quality]\nkind = "scene"\nimage_size = 64\nsteps = 40\nheldout = 50',
                          '[quality]\nkind = "paper"\nfid_weights = "/nonexistent/inception.pth"\nclip_weights = "/nonexistent/clip"')
    (tmp_path / "paper.toml").write_text(paper)
    _refused(tmp_path / "paper.toml", "[quality]", "fid_weights", "/nonexistent/inception.pth")
    none = DEBUG.replace('kind = "scene"', 'kind = "none"')
    (tmp_path / "none.toml").write_text(none)
    _refused(tmp_path / "none.toml", "[quality]", "unknown field")


# 4: the track's name becomes a folder under --runs.

@pytest.mark.parametrize("name", ['""', '"."', '".."', '"../../escaped"', '"a/b"', "5", '".hidden"'])
def test_track_name_is_a_safe_folder_name(tmp_path, name):
    _refused(_track_file(tmp_path, {'name = "debug"': f"name = {name}"}), "name:", "folder name")


def test_a_bad_name_writes_nothing_outside_runs(tmp_path, capsys):
    track = _track_file(tmp_path, {'name = "debug"': 'name = "../escaped"'})
    runs = tmp_path / "runs"
    assert main(["benchmark", "--track", str(track), "--runs", str(runs), "--data", str(tmp_path / "d"), "--cache", str(tmp_path / "c"), "--quiet"]) == 2
    assert "name:" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not runs.exists()
    assert main(["benchmark", "--track", "debug", "--name", "../x", "--runs", str(runs), "--data", str(tmp_path / "d"), "--quiet"]) == 2
    assert "--name" in capsys.readouterr().err and not (tmp_path / "x").exists()


# 5: a failed start does not claim the run folder; a refused rerun says what differs.

@pytest.mark.parametrize("option", ["--detector", "--pretrained"])
def test_a_bad_path_option_fails_at_once_and_claims_nothing(tmp_path, capsys, option):
    runs = tmp_path / "runs"
    argv = ["benchmark", "--track", "debug", "--name", "det", "--runs", str(runs), "--data", str(tmp_path / "data"),
            "--cache", str(tmp_path / "cache"), "--quiet", option, str(tmp_path / "nonexistent")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert option in err and str(tmp_path / "nonexistent") in err and len(err.strip().splitlines()) == 1, err
    assert not (runs / "det" / "run.json").exists()
    assert not (tmp_path / "data").exists(), "no stage ran"


def test_a_changed_config_is_refused_naming_the_fields(tmp_path):
    first = BenchmarkRun(track=load_track("debug"), name="r", runs_root=tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps(first.record()))
    first.check_start()  # the same config is welcome
    changed = BenchmarkRun(track=load_track("debug", {"num_prompts": 7}), name="r", runs_root=tmp_path)
    with pytest.raises(ValueError, match=r"another config \(run.json differs in .*track\.num_prompts") as e:
        changed.check_start()
    assert "track.seed" not in str(e.value)


# 6 and 7: one line naming the file and the field.

def test_track_file_problems_name_the_file(tmp_path):
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(TrackError, match=re.escape(f"{folder}: a folder")):
        load_track(folder)
    bad = tmp_path / "nonutf8.toml"
    bad.write_bytes(b'name = "x"\nnote = "\xff"\n')
    with pytest.raises(TrackError, match=re.escape(f"{bad}: not UTF-8")):
        load_track(bad)
    no_name = tmp_path / "no_name.toml"
    no_name.write_text(DEBUG.replace('name = "debug"\n', ""))
    with pytest.raises(TrackError, match=re.escape(f"{no_name}: missing field name")):
        load_track(no_name)
    noext = tmp_path / "debugcopy"
    noext.write_text(DEBUG)
    assert load_track(noext).where == str(noext)


def _hostile_config(tmp_path: Path, kind: str) -> Path:
    """A recipe or track path that is tiny on disk or no file at all: a FIFO, a device, a file over the
    bound, an integer of more digits than Python converts."""
    path = tmp_path / f"{kind}.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "oversized":
        path.write_text("# " + "x" * (1 << 20) + "\n" + DEBUG)
    else:
        path.write_text(DEBUG.replace("seed = 0", "seed = " + "9" * 5000))
    return path


HOSTILE = [
    ("fifo", "a FIFO (named pipe), where a file was expected"),
    ("device", "a character device, where a file was expected"),
    ("oversized", f"over {1 << 20} bytes"),
    ("digits", "not valid TOML: Exceeds the limit (4300 digits)"),
]
COMMANDS = ["recipe-name", "benchmark --track"]

#: One child imports the command once, then forks a process per case, in the case's folder, given 2 GB
#: of address space past those imports and HUNG_S to end: a child per case spent most of its time importing.
#: The imports' objects are frozen out of the collector, whose pass at each exit copied all their pages.
_FORKED_PER_CASE = """
import gc, json, os, re, resource, sys
import benchmark.benchmark_run
from benchmark.cli import main
from tests.process_table import ended_or_killed
HUNG_S = 120.0
gc.freeze()
for folder, argv in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os.chdir(folder)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        size = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024 + (2 << 30)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
        sys.exit(main(argv))
    print(json.dumps([folder, *ended_or_killed(pid, HUNG_S)]), flush=True)
"""


@pytest.fixture(scope="module")
def hostile_configs_run(tmp_path_factory):
    """Each ``HOSTILE`` config under each of ``COMMANDS``, in a folder of its own:
    ``{(kind, command): (folder, path, hung, exit code, stderr)}`` (read-only)."""
    cases = {}
    for kind, _ in HOSTILE:
        for command in COMMANDS:
            folder = tmp_path_factory.mktemp(f"{kind}-{command.split()[0]}")
            path = _hostile_config(folder, kind)
            argv = [*command.split(), str(path)] + (["--runs", str(folder / "runs")] if command != "recipe-name" else [])
            cases[kind, command] = (folder, path, argv)
    done = subprocess.run([sys.executable, "-c", _FORKED_PER_CASE, json.dumps([[str(f), argv] for f, _, argv in cases.values()])],
                          capture_output=True, text=True, timeout=120 * (len(cases) + 1),
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ended = {folder: (hung, code) for folder, hung, code in map(json.loads, done.stdout.splitlines())}
    return {key: (folder, path, *ended[str(folder)], (folder / "stderr").read_text()) for key, (folder, path, _) in cases.items()}


@pytest.mark.parametrize("kind,fragment", HOSTILE)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_config_file_that_blocks_never_ends_or_bombs_is_one_line_naming_it(hostile_configs_run, kind, fragment, command):
    """A FIFO named as the recipe hung the command (reading waits for a writer), /dev/zero took all
    the memory (MemoryError traceback), a 5000-digit integer raised Python's limit without the file.
    Run in a process given 2 GB of address space past its imports, so a hang or a bomb fails this test."""
    folder, path, hung, code, err = hostile_configs_run[kind, command]
    assert not hung, "the command waited on the file"
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert err.count("\n") == 1 and f"{path}: {fragment}" in err, err
    assert not (folder / "runs").exists()


def test_a_config_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Notepad saves UTF-8 with a byte-order mark, which tomllib refused as an invalid statement."""
    marked = tmp_path / "marked.toml"
    marked.write_bytes(b"\xef\xbb\xbf" + DEBUG.encode("utf-8"))
    assert load_track(marked).sha256 == load_track("debug").sha256
    recipe = tmp_path / "recipe.toml"
    recipe.write_bytes(b"\xef\xbb\xbf" + (RECIPES_DIR / "icd-debug.toml").read_bytes())
    assert load_recipe(recipe).sha256 == load_recipe("icd-debug").sha256


@pytest.mark.parametrize("line,new,field", [
    ("seed = 0", 'seed = "0"', "seed:"),
    ("num_prompts = 8", 'num_prompts = "8"', "num_prompts:"),
    ("steps = 2", 'steps = "2"', "esd.steps"),
    ("image_size = 64", "pipeline = [64]", "pipeline"),
    ('removal_method = "ge-full"', "removal_method = 5", "removal_method"),
])
def test_wrong_types_name_the_field(tmp_path, line, new, field):
    message = _refused(_track_file(tmp_path, {line: new}), field)
    assert "not supported between" not in message and "object" not in message and "[finetune]" not in message


def test_wrong_typed_tables_name_the_table(tmp_path):
    _refused(_track_file(tmp_path, append="\ntypo = 1\n"), "[targets]", "typo")
    text = DEBUG[:DEBUG.index("# Checked like")].replace('detector_scale = "debug"', 'detector_scale = "debug"\ntargets = 5')
    path = tmp_path / "t.toml"
    path.write_text(text)
    _refused(path, "[targets]", "expected a table")
    geom = tmp_path / "g.toml"
    geom.write_text(DEBUG.replace('detector_scale = "debug"', 'detector_scale = "debug"\ngeom_erasing = [4]'))
    _refused(geom, "[geom_erasing]", "expected a table")


def test_a_track_seed_in_finetune_is_refused_not_overridden():
    with pytest.raises(TrackError, match=r"\[finetune\]\.seed"):
        load_track("debug", {"finetune": {"steps": 4, "seed": 5}})


def test_cli_names_the_track_file_for_a_bad_seed(tmp_path, capsys):
    track = _track_file(tmp_path, {"seed = 0": 'seed = "0"'})
    assert main(["benchmark", "--track", str(track), "--runs", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{track}: seed:" in err and "[finetune]" not in err


# 8: numbers and types.

@pytest.mark.parametrize("overrides,fragment", [
    ({"finetune": {"learning_rate": float("inf")}}, "finetune.learning_rate"),
    ({"finetune": {"weight_decay": float("inf")}}, "finetune.weight_decay"),
    ({"finetune": {"steps": 4, "warmup_steps": 1_000_000_000}}, "warmup_steps"),
    ({"base": {"training": {"learning_rate": float("inf")}}}, "base.training.learning_rate"),
    ({"base": {"training": {"steps": 10, "warmup_steps": 11}}}, "warmup_steps"),
    ({"geom_erasing": {"alpha": float("inf")}}, "geom_erasing.alpha"),
    ({"esd": {"lr": -1.0}}, "esd.lr"),
    ({"esd": {"lr": "x"}}, "esd.lr"),
    ({"esd": {"lr": float("nan")}}, "esd.lr"),
    ({"esd": {"negative_guidance": float("nan")}}, "esd.negative_guidance"),
    ({"esd": {"sample_guidance": "x"}}, "esd.sample_guidance"),
    ({"esd": {"steps": 2.5}}, "esd.steps"),
    ({"esd": {"steps": True}}, "esd.steps"),
    ({"fmn": {"lr": "x"}}, "fmn.lr"),
    ({"fmn": {"lr": -1.0}}, "fmn.lr"),
    ({"fmn": {"steps": 2.5}}, "fmn.steps"),
    ({"concepts": ["qrcode", "qrcode"]}, "concepts"),
    ({"methods": ["base", "sd", "sd"]}, "methods"),
    ({"seeds": [0, 1], "seed_methods": ["sd", "sd"]}, "seed_methods"),
    ({"targets": {"removal_method": "ge-ful"}}, "removal_method"),
    ({"targets": {"named_base_min_icr": True}}, "named_base_min_icr"),
    ({"seed": 2**64}, "seed"),
    ({"conf": float("nan")}, "conf"),
    ({"quality": {"kind": "none", "steps": 5}}, "quality"),
])
def test_numbers_types_and_duplicates_are_refused(overrides, fragment):
    with pytest.raises(TrackError) as e:
        check_track(load_track("debug", overrides))
    assert fragment in str(e.value), str(e.value)


def test_shipped_tracks_pass_and_keep_their_hash():
    for name in ("debug", "tiny"):
        check_track(load_track(name))
    load_track("paper")
    load_track("paper-dry")


@pytest.mark.parametrize("body,fragment", [
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 2.5\nbatch = 16\n', "epochs = 2.5"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16.5\n', "batch = 16.5"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64.0\nepochs = 3\nbatch = 16\n', "imgsz = 64.0"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = inf\nbatch = 16\n', "epochs = inf"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\nthreads = 1.5\n', "threads = 1.5"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\nworkers = 0.5\n', "workers = 0.5"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\nseed = true\n', "seed = True"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\ndevice = 0\n', "device = 0"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nepochs = 0\nbatch = 16\n', "epochs = 0"),
    ('[debug]\nmodel = "yolov8n.yaml"\nimgsz = 64\nbatch = 16\n', "missing field epochs"),
    ("debug = 5\n", "[debug]: expected a table"),
    ('[debug]\nmodel = "yolov99.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\n', "model = 'yolov99.yaml'"),
    ('[debug]\nmodel = "yolov8n-cls.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\n', "model = 'yolov8n-cls.yaml'"),
    ('[debug]\nmodel = "../yolov8n.yaml"\nimgsz = 64\nepochs = 3\nbatch = 16\n', "model = '../yolov8n.yaml'"),
])
def test_scale_fields_are_typed_and_name_the_file(tmp_path, body, fragment):
    path = tmp_path / "scales.toml"
    path.write_text(body)
    with pytest.raises(ScaleError) as e:
        load_scale("debug", path=path)
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)
    for name in ("debug", "cpu", "gpu"):
        load_scale(name)


# 9 and 6: the command line.

@pytest.mark.parametrize("argv,option", [
    (["benchmark", "--jobs", "0"], "--jobs"),
    (["benchmark", "--jobs", "-1"], "--jobs"),
    (["benchmark", "--workers", "-1"], "--workers"),
    (["build", "icd-debug", "--workers", "-1"], "--workers"),
    (["prompts", "icd-debug", "--count", "-5", "--out", "p.csv"], "--count"),
    (["show", "d", "--out", "y.png", "--count", "-3"], "--count"),
    (["score-images", "d", "--out", "o", "--num-prompts", "0"], "--num-prompts"),
    (["benchmark", "--jobs", "two"], "--jobs"),
])
def test_integer_options_are_range_checked(capsys, argv, option):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "expected an integer" in err, err


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("hi")
    (tmp_path / "rj" / "results.json").mkdir(parents=True)
    cases = [
        (["report", str(afile)], f"{afile}: not a run folder"),
        (["report", str(tmp_path / "rj")], f"{tmp_path / 'rj' / 'results.json'}: a folder"),
        (["prompts", "icd-debug", "--count", "2", "--out", str(tmp_path)], f"--out {tmp_path}: a folder"),
        (["prompts", "icd-debug", "--count", "2", "--out", str(afile / "p.csv")], f"--out {afile / 'p.csv'}: cannot be written"),
        (["show", str(tmp_path), "--out", str(tmp_path)], f"--out {tmp_path}: a folder"),
        (["benchmark", "--track", "debug", "--name", "q1", "--runs", str(afile), "--quiet"], f"--runs {afile}: exists and is not a folder"),
        (["benchmark", "--track", "debug", "--name", "q1", "--runs", str(afile / "sub"), "--quiet"], f"--runs {afile / 'sub'}: cannot make"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_main_turns_unexpected_os_errors_into_one_line(monkeypatch, capsys, tmp_path):
    """The safety net under the specific checks: an OSError names its file, a UnicodeDecodeError says so."""
    import benchmark.cli as cli

    parser = cli.build_parser

    def raising(error):
        def command(args):
            raise error

        def patched():
            p = parser()
            p._subparsers._group_actions[0].choices["verify"].set_defaults(func=command)
            return p

        monkeypatch.setattr(cli, "build_parser", patched)

    raising(PermissionError(1, "Operation not permitted", str(tmp_path / "x")))
    assert cli.main(["verify", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"implicit-concept verify: error: {tmp_path / 'x'}: Operation not permitted"
    raising(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_a_test_split_with_fewer_captions_than_num_prompts_is_refused(tmp_path):
    """prompts = "test-split": counted once the dataset is built, before any training (never silently fewer)."""
    from benchmark.stages import _require_test_split

    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 3}))
    with pytest.raises(ValueError, match=r"holds 3 captions, and this track's num_prompts is 5"):
        _require_test_split(tmp_path, {"kind": "procedural", "train": 8, "test": 3}, num_prompts=5)
    _require_test_split(tmp_path, {"kind": "procedural", "train": 8, "test": 3}, num_prompts=3)


# The paper scale: a track whose base comes from disk, and its mixed precision, checked at the start.

def test_a_track_meant_for_a_base_from_disk_run_without_pretrained_says_so(tmp_path):
    """The paper track (no [base] table, 512 px) without --pretrained: the error names the missing
    option, not a size mismatch with an embedded base (or a [base.pipeline] table) it never meant to use."""
    with pytest.raises(TrackError) as e:
        check_track(load_track("paper"))
    message = str(e.value)
    assert "track 'paper' needs --pretrained" in message and "paper.toml" in message, message
    assert "[base.pipeline]" not in message and "\n" not in message
    # the class: any track without a [base] table whose images are not the embedded base's size
    no_base = re.sub(r"^\[base\.(pipeline|scenes|training)\]\n(?:(?!\[).*\n)*", "", DEBUG, flags=re.M)
    assert "[base" not in no_base
    (tmp_path / "mine.toml").write_text(no_base.replace("image_size = 64\nchunk_size", "image_size = 256\nchunk_size"))
    _refused(tmp_path / "mine.toml", "track 'debug' needs --pretrained", "image_size = 256")
    # with --pretrained the same track is fine; a track with an embedded base still gets the size mismatch
    check_track(load_track(tmp_path / "mine.toml"), pretrained=Path("/some/sd"))
    (tmp_path / "sized.toml").write_text(DEBUG.replace("image_size = 64\nchunk_size", "image_size = 256\nchunk_size"))
    message = _refused(tmp_path / "sized.toml", "image_size = 256", "[base.pipeline]", "--pretrained")
    assert "needs --pretrained" not in message


@pytest.mark.parametrize("cuda", [False, True])
def test_fp16_without_a_gpu_is_refused_by_the_track_check(tmp_path, monkeypatch, cuda):
    """accelerate would train "fp16" in fp32 on a CPU, so training refuses it; the track check refuses
    it first, before the dataset and detector stages, naming the table and the field."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    debug = load_track("debug")
    fp16 = load_track("debug", {"finetune": {**debug.finetune, "mixed_precision": "fp16"}})
    base_fp16 = load_track("debug", {"base": {**debug.base, "training": {**debug.base["training"], "mixed_precision": "fp16"}}})
    if cuda:
        check_track(fp16)
        check_track(base_fp16)
        return
    with pytest.raises(TrackError, match=r"debug.toml: \[finetune\]: mixed_precision = 'fp16' needs a GPU.*'bf16'"):
        check_track(fp16)
    with pytest.raises(TrackError, match=r"\[base.training\]: mixed_precision = 'fp16' needs a GPU"):
        check_track(base_fp16)
    check_track(base_fp16, pretrained=Path("/some/sd"))  # the base is not trained when it comes from disk
    paper = load_track("paper", {"quality": {"kind": "none"}})
    with pytest.raises(TrackError, match=r"paper.toml: \[finetune\]: mixed_precision = 'fp16'"):
        check_track(paper, source=str(_tars(tmp_path)), pretrained=Path("/some/sd"))


def test_a_global_batch_the_launchs_processes_cannot_share_is_refused_by_the_track_check(tmp_path, monkeypatch):
    """Under ``accelerate launch --num_processes N`` every process trains the base and the fine-tunes
    on its share of each global batch; a batch_size N does not divide failed at the first fine-tune,
    after the dataset and detector stages (hours at paper scale), without naming the track. The track
    check refuses it first, naming the file, the table and the field; a base from disk is not trained."""
    from benchmark import track_check

    monkeypatch.setattr(track_check, "launched_processes", lambda: 3)
    debug = load_track("debug")  # [base.training] and [finetune] batch_size = 8
    with pytest.raises(TrackError) as e:
        check_track(debug)
    assert re.fullmatch(r".*debug\.toml: \[base\.training\]: batch_size = 8 does not split evenly over the 3 processes .*multiple of 3",
                        str(e.value)), str(e.value)
    with pytest.raises(TrackError, match=r"debug\.toml: \[finetune\]: batch_size = 8 does not split evenly over the 3 processes"):
        check_track(debug, pretrained=Path("/some/sd"))
    dry, source = load_track("paper-dry"), _tars(tmp_path)  # batch_size = 1
    monkeypatch.setattr(track_check, "launched_processes", lambda: 2)
    with pytest.raises(TrackError, match=r"paper-dry\.toml: \[finetune\]: batch_size = 1 does not split evenly over the 2"):
        check_track(dry, source=source, pretrained=Path("/some/sd"))
    check_track(debug)  # 8 over 2
    monkeypatch.setattr(track_check, "launched_processes", lambda: 1)
    check_track(dry, source=source, pretrained=Path("/some/sd"))
    monkeypatch.setattr(track_check, "launched_processes", lambda: 3)
    runs = tmp_path / "runs"
    assert main(["benchmark", "--track", "debug", "--runs", str(runs), "--data", str(tmp_path / "d"), "--cache", str(tmp_path / "c"), "--quiet"]) == 2
    assert not (tmp_path / "d").exists() and not (tmp_path / "c").exists(), "refused before the dataset stage"



def test_training_itself_refuses_a_global_batch_its_processes_cannot_share():
    """Past the track check (a training called directly, a track checked under another launch), each
    process's share of 8 over 3 was 2 examples: 2 of every global batch never trained on, unsaid."""
    from benchmark.training.data import process_share

    assert [process_share(8, 2, i) for i in range(2)] == [slice(0, 4), slice(4, 8)]
    with pytest.raises(ValueError, match=r"^batch_size = 8 does not split evenly over the 3 processes of this launch"):
        process_share(8, 3, 0)

def test_the_launchs_process_count_is_read_without_creating_accelerates_state(monkeypatch):
    """accelerate's state is a process-wide singleton that keeps the device it was first made with:
    the track check, run alone (here with a GPU faked, as the fp16 test fakes one), must not make it,
    or every later training in the process would take that device. Under a launcher (WORLD_SIZE) the
    count is the joined processes', as the protocol's first stage joins them, not the launcher's
    figure (``srun -n 4`` sets PMI_SIZE for processes that each train alone)."""
    from types import SimpleNamespace

    import torch
    from accelerate.state import PartialState

    from benchmark.training import loop

    for name in loop.LAUNCH_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(PartialState, "_shared_state", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_track(load_track("debug"))
    assert loop.launched_processes() == 1 and PartialState._shared_state == {}, "accelerate's state was made"
    monkeypatch.setattr(loop, "processes", lambda: SimpleNamespace(num_processes=2))
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):  # torchrun/accelerate, then MPI's
        monkeypatch.setenv(name, "4")
        assert loop.launched_processes() == 2, name
        monkeypatch.delenv(name)


def test_the_shipped_paper_track_says_how_to_give_it_its_quality_weights(tmp_path, monkeypatch):
    """README's ``benchmark --track paper --pretrained ... --source ...`` is refused on any machine:
    the shipped track leaves its FID and CLIP weights' paths empty (they are never downloaded). The
    refusal names the file, the fields, what each one is and how to give them (a copy of the track);
    the copy so made passes."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the fp16 check, as on a GPU
    source, sd = _tars(tmp_path), Path("/some/sd")
    with pytest.raises(TrackError) as e:
        check_track(load_track("paper"), source=source, pretrained=sd)
    message = str(e.value)
    assert "\n" not in message and str(TRACKS_DIR / "paper.toml") in message, message
    for fragment in ("[quality]", "'fid_weights', 'clip_weights'", "inception", "CLIPModel", "a copy of this track file", "--track",
                     'kind = "none"'):
        assert fragment in message, (fragment, message)
    (tmp_path / "inception.pth").write_bytes(b"")
    (tmp_path / "clip").mkdir()
    mine = tmp_path / "my-paper.toml"
    mine.write_text((TRACKS_DIR / "paper.toml").read_text().replace('fid_weights = ""', f'fid_weights = "{tmp_path / "inception.pth"}"')
                    .replace('clip_weights = ""', f'clip_weights = "{tmp_path / "clip"}"'))
    check_track(load_track(mine), source=source, pretrained=sd)


def _tars(folder: Path) -> str:
    """A --source of two (empty) tars: the track check only sees that they exist."""
    for i in range(2):
        (folder / f"{i:05d}.tar").write_bytes(b"")
    return f"{folder}/{{00000..00001}}.tar"


# Sources given the way labs hold their shards: the refusal says what went wrong.

def test_a_relative_url_in_a_recipe_says_it_is_read_from_the_current_folder(tmp_path, monkeypatch):
    from builders.recipe import RecipeError, load_recipe

    recipe = tmp_path / "lab" / "recipes" / "my-icd.toml"  # its urls name ../shards, beside the recipe's folder
    recipe.parent.mkdir(parents=True)
    recipe.write_text((Path("manifests") / "icd-debug.toml").resolve().read_text().replace(
        'kind = "procedural"\ntrain = 64\ntest = 32', 'kind = "webdataset"\nurls = "../shards/{00000..00001}.tar"'))
    (tmp_path / "lab" / "shards").mkdir()
    for i in range(2):
        (tmp_path / "lab" / "shards" / f"{i:05d}.tar").write_bytes(b"")
    work = tmp_path / "elsewhere" / "run"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    message = str(e.value)
    assert str(recipe) in message and "'../shards/00000.tar'" in message, message
    assert f"read from the current folder, {work}, not from the recipe file's folder" in message, message


def test_a_recipes_own_source_missing_here_says_to_pass_yours_with_source(tmp_path, monkeypatch):
    """icd-v1 (the paper track's recipe) names a placeholder, data/source/{00000..00009}.tar, that no
    lab holds: ``build icd-v1`` or ``benchmark --track paper`` without --source said only that the
    tars do not exist. A recipe's own tars or folder missing here now says how to read one's own; a
    --source missing, or any other recipe error, is said as before."""
    from builders.recipe import RecipeError, load_recipe

    monkeypatch.chdir(tmp_path)
    hint = "; to read your own shards or folder, pass it with --source"
    folder = tmp_path / "folder.toml"
    folder.write_text((Path(RECIPES_DIR) / "icd-debug.toml").read_text().replace(
        'kind = "procedural"\ntrain = 64\ntest = 32', f'kind = "folder"\npath = "{tmp_path / "no-images"}"'))
    for recipe, said in (("icd-v1", "source.urls: 10 of 10 tar files do not exist"), (folder, "source.path: ")):
        with pytest.raises(RecipeError) as e:
            load_recipe(recipe)
        message = str(e.value)
        assert said in message and message.endswith(hint) and "\n" not in message, message
    with pytest.raises(RecipeError) as e:
        load_recipe(folder, {"source": {"kind": "folder", "path": str(tmp_path / "also-missing")}})
    assert "(the source given, in place of folder.toml's)" in str(e.value) and hint not in str(e.value), str(e.value)
    (tmp_path / "no-images").mkdir()
    with pytest.raises(RecipeError) as e:
        load_recipe(folder, {"subsets": []})
    assert hint not in str(e.value), str(e.value)
    wrong = tmp_path / "wrong.toml"  # the source there, another field of the file wrong
    wrong.write_text(folder.read_text().replace("fraction = 0.5", "fraction = 7", 1))
    with pytest.raises(RecipeError) as e:
        load_recipe(wrong)
    assert str(e.value).startswith(f"{wrong}: ") and "fraction" in str(e.value) and hint not in str(e.value), str(e.value)
    assert main(["build", "icd-v1", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert not (tmp_path / "out").exists()


def test_a_glob_or_a_folder_of_tars_as_source_points_at_the_brace_pattern(tmp_path):
    from builders.recipe import RecipeError, load_recipe, source_from_spec

    shards = tmp_path / "img2dataset_output"
    shards.mkdir()
    for i in range(3):
        (shards / f"{i:05d}.tar").write_bytes(b"")
    with pytest.raises(RecipeError, match=r"globs are not expanded: name the tars with a brace pattern"):
        source_from_spec(f"{shards}/*.tar")
    with pytest.raises(RecipeError) as e:
        load_recipe("icd-debug", {"source": source_from_spec(str(shards))})
    assert "no images" in str(e.value) and f"it holds 3 tar files" in str(e.value), str(e.value)
    assert f"'{shards}/{{00000..00002}}.tar'" in str(e.value), str(e.value)
    load_recipe("icd-debug", {"source": source_from_spec(f"{shards}/{{00000..00002}}.tar")})  # the pattern it names is accepted


def test_tars_not_found_name_the_tars_that_are_there(tmp_path):
    """img2dataset leaves out a shard it could not write, and some tools number with 6 digits: a
    brace pattern that misses is answered with the pattern that names the tars there (gaps left
    out, accepted as given), and a folder that is not there is said to be missing."""
    from builders.recipe import RecipeError, load_recipe, source_from_spec

    shards = tmp_path / "laion"
    shards.mkdir()
    for i in (0, 1, 2, 4, 7, 8):
        (shards / f"{i:06d}.tar").write_bytes(b"")
    for given in (f"{shards}/{{00000..00009}}.tar", f"{shards}/{{000000..000009}}.tar", f"{shards}/*.tar"):
        with pytest.raises(RecipeError) as e:
            source_from_spec(given)
        assert f"'{shards}/{{{{000000..000002}},000004,{{000007..000008}}}}.tar'" in str(e.value), str(e.value)
    load_recipe("icd-debug", {"source": source_from_spec(f"{shards}/{{{{000000..000002}},000004,{{000007..000008}}}}.tar")})
    with pytest.raises(RecipeError, match=rf"first '{tmp_path}/lion/00000.tar' \(no folder '{tmp_path}/lion'\)"):
        source_from_spec(f"{tmp_path}/lion/{{00000..00009}}.tar")
    for i in range(10, 100, 3):  # gaps past counting: the first and the last
        (shards / f"{i:06d}.tar").write_bytes(b"")
    with pytest.raises(RecipeError, match=rf"'{shards}/000000.tar' to '{shards}/000097.tar', 36 tars with 32 gaps: list them"):
        source_from_spec(f"{shards}/{{00000..00009}}.tar")


def test_a_quoted_tilde_in_a_source_is_said_not_to_be_expanded(monkeypatch, tmp_path):
    """``--source '~/data/{00000..00009}.tar'``: the shell leaves a quoted ``~`` alone, and so does
    the builder; the error names the path it may mean, not "read from the current folder"."""
    from builders.recipe import RecipeError, source_from_spec
    from builders.sources import make_source

    monkeypatch.setenv("HOME", str(tmp_path))
    for spec, meant in (("~/images", f"{tmp_path}/images"), ("~/laion/{00000..00009}.tar", f"{tmp_path}/laion/00000.tar")):
        with pytest.raises(RecipeError, match=rf"a '~' is not expanded here, only by a shell and outside quotes: .*'{meant}'\?"):
            source_from_spec(spec)
    with pytest.raises(ValueError, match=rf"source.path: '~/images' does not exist .*not expanded here.*'{tmp_path}/images'\?"):
        make_source({"kind": "folder", "path": "~/images"}, image_size=32, shard_size=4, seed=0)


def test_a_list_of_tars_given_as_source_is_said_to_be_one(tmp_path):
    from builders.recipe import RecipeError, source_from_spec

    (tmp_path / "shards.txt").write_text("2024-01-01 10:00:00  1048576 laion/00000.tar\n2024-01-01 10:00:00  1048576 laion/00001.tar\n")
    with pytest.raises(RecipeError, match=r"shards.txt: a list of tars, not a tar shard: name them in a recipe's \[source\] urls"):
        source_from_spec(str(tmp_path / "shards.txt"))
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(RecipeError, match=r"notes.txt: a file, but not a tar shard \(a source is"):
        source_from_spec(str(tmp_path / "notes.txt"))


def test_a_data_folder_of_another_build_names_the_benchmarks_option_too(tmp_path):
    """The builder's refusals reach the benchmark, whose option for the folder is --data."""
    from builders.build import BuildError, build_dataset
    from builders.recipe import load_recipe

    out = tmp_path / "icd-debug"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"recipe": {"name": "icd-debug", "source": {"kind": "folder"}}, "recipe_sha256": "0" * 64}))
    with pytest.raises(ValueError) as e:
        build_dataset(load_recipe("icd-debug"), out, progress=False)
    assert "holds a build of another recipe" in str(e.value) and "choose another --out (the benchmark's --data)" in str(e.value), str(e.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(BuildError, match=r"choose another --out \(the benchmark's --data\)"):
        build_dataset(load_recipe("icd-debug"), tmp_path / "file", progress=False)


@pytest.mark.parametrize("conf", ["0.001", "0.0", "1.0"])
def test_a_conf_scoring_would_refuse_is_refused_before_the_run_folder_is_claimed(tmp_path, capsys, conf):
    """ScoreConfig keeps no clean-image confidence below 0.01: a track below it failed only at scoring,
    after run.json had claimed the folder (and the corrected track was then refused there)."""
    track = _track_file(tmp_path, {'name = "debug"': f'name = "debug"\nconf = {conf}'})
    _refused(track, "conf: expected a number in [0.01, 1)", f"got {conf}")
    runs = tmp_path / "runs"
    argv = ["benchmark", "--track", str(track), "--runs", str(runs), "--data", str(tmp_path / "d"), "--cache", str(tmp_path / "c"), "--quiet"]
    assert main(argv) == 2
    assert "conf: expected a number in [0.01, 1)" in capsys.readouterr().err
    assert not runs.exists() and not (tmp_path / "d").exists()
    assert load_track(track_path := _track_file(tmp_path, {'name = "debug"': 'name = "debug"\nconf = 0.01'}, name="ok.toml")).conf == 0.01
    check_track(load_track(track_path))


def test_a_test_split_one_caption_short_of_num_prompts_is_refused(tmp_path):
    """The rule is "at least num_prompts captions": 4 of 5 is as short as 3 of 5."""
    from benchmark.stages import _require_test_split

    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 4}))
    with pytest.raises(ValueError, match=r"holds 4 captions, and this track's num_prompts is 5"):
        _require_test_split(tmp_path, {"kind": "procedural", "train": 8, "test": 4}, num_prompts=5)


def test_warmup_as_long_as_training_is_allowed_and_one_step_longer_is_refused():
    """warmup_steps = steps warms up over the whole run, which is legitimate; only more than steps never warms up."""
    check_track(load_track("debug", {"finetune": {"steps": 4, "warmup_steps": 4}}))
    with pytest.raises(TrackError, match="warmup_steps = 5 is more than steps = 4"):
        check_track(load_track("debug", {"finetune": {"steps": 4, "warmup_steps": 5}}))


def test_a_prompts_file_one_row_short_of_num_prompts_is_refused(tmp_path):
    """At least num_prompts rows: a file of 3 for num_prompts = 4 is refused as one of 3 for 8 is."""
    csv = tmp_path / "three.csv"
    csv.write_text("case_number,prompt,evaluation_seed\n0,a,1\n1,b,2\n2,c,3\n")
    _refused(_track_file(tmp_path, {'prompts = "icd-tiny-eval"': f'prompts = "{csv}"', "num_prompts = 8": "num_prompts = 4"}),
             "num_prompts = 4", "only 3 prompts")


def test_an_integer_option_takes_its_lowest_allowed_value():
    """--jobs 1, --workers 0, --count 1 are the smallest values allowed, and are taken; one less is refused."""
    args = build_parser().parse_args(["benchmark", "--jobs", "1", "--workers", "0"])
    assert (args.jobs, args.workers) == (1, 0)
    assert build_parser().parse_args(["prompts", "icd-debug", "--out", "p.csv", "--count", "1", "--seed-base", "0"]).count == 1


def test_an_output_file_of_an_unknown_format_is_refused_before_any_work(tmp_path, capsys):
    """show writes an image and prompts a CSV: another suffix is refused at once, naming the suffixes wanted, and nothing is written."""
    cases = [(["prompts", "icd-debug", "--count", "2", "--out", str(tmp_path / "p.txt")], f"--out {tmp_path / 'p.txt'}: want a file path ending in .csv"),
             (["show", str(tmp_path), "--out", str(tmp_path / "s.gif")], f"--out {tmp_path / 's.gif'}: want a file path ending in .png or .jpg or .jpeg or .webp")]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# A user's own track and recipe: what the run reads must be there, and sizes a machine can hold.

def _recipe_file(tmp_path: Path, drop: str = "", replace: dict[str, str] | None = None) -> Path:
    """A copy of icd-debug under another name, without the ``[[subsets]]`` block named ``drop``."""
    text = (RECIPES_DIR / "icd-debug.toml").read_text().replace('name = "icd-debug"', 'name = "icd-mine"')
    if drop:
        start = text.index(f'[[subsets]]\nname = "{drop}"')
        end = text.find("[[subsets]]", start + 1)
        text = text[:start] + (text[end:] if end > 0 else "")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "mine-recipe.toml"
    path.write_text(text)
    return path


def test_a_track_whose_recipe_lacks_a_subset_it_reads_is_refused_before_any_stage(tmp_path, capsys):
    """A recipe without icd-text (or icd-mixed, the detector's) was found once the dataset, base and
    detector stages had run (22 s at the debug scale, the base's training and more at the tiny scale)."""
    for drop, per_subset in (("icd-text", "per-subset"), ("icd-mixed", "per-subset"), ("icd-mixed", "mixed")):
        recipe = _recipe_file(tmp_path, drop=drop)
        track = _track_file(tmp_path, {'recipe = "icd-debug"': f'recipe = "{recipe}"'})
        track.write_text(track.read_text().replace('detector_scale = "debug"', f'detector_scale = "debug"\nprotocol = "{per_subset}"'))
        _refused(track, "recipe:", str(recipe), f"no subset '{drop}'")
    runs = tmp_path / "runs"
    assert main(["benchmark", "--track", str(track), "--runs", str(runs), "--data", str(tmp_path / "data"),
                 "--cache", str(tmp_path / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no subset 'icd-mixed'" in err and len(err.strip().splitlines()) == 1, err
    assert not runs.exists() and not (tmp_path / "data").exists(), "no stage ran, no run folder claimed"


def test_a_subset_read_for_a_concept_it_does_not_draw_is_refused():
    """icd-mixed without text trained a detector blind to text (every method then erased text
    perfectly); icd-qrcode drawing no QR code (fraction 0) gave a fine-tune nothing to erase."""
    recipe = load_recipe("icd-debug")
    mixed = replace(recipe, subsets=tuple(replace(s, concepts=("qrcode", "watermark")) if s.name == "icd-mixed" else s for s in recipe.subsets))
    never = replace(recipe, subsets=tuple(replace(s, fraction=0.0) if s.name == "icd-qrcode" else s for s in recipe.subsets))
    track = load_track("debug")
    with pytest.raises(ValueError, match=r"subset 'icd-mixed' draws \['qrcode', 'watermark'\] .* reads it for \['text'\]"):
        _subsets_read(track, mixed, trains_detector=True)
    with pytest.raises(ValueError, match=r"subset 'icd-qrcode' draws \['qrcode'\] on a fraction 0 .* for \['qrcode'\]"):
        _subsets_read(track, never, trains_detector=True)
    _subsets_read(load_track("debug", {"concepts": ["qrcode", "watermark"]}), mixed, trains_detector=True)
    _subsets_read(track, mixed, trains_detector=False)  # --detector: icd-mixed is not read


def test_more_named_prompts_than_evaluation_prompts_are_refused():
    """The named prompts are the first num_prompts: named_prompts = 100 with num_prompts = 8 scored 8, recorded as 100."""
    with pytest.raises(TrackError, match=r"named_prompts: 9 is more than num_prompts = 8"):
        load_track("debug", {"named_prompts": 9})
    assert load_track("debug", {"named_prompts": 8}).named_prompts == 8


def test_prompts_from_a_recipe_that_is_not_procedural_is_one_line_before_its_files_are_looked_for(tmp_path, capsys):
    """A folder or tar recipe (the shipped icd-v1) was an AttributeError traceback; icd-v1's missing
    tars were named first, though prompts never read them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    recipe = _recipe_file(tmp_path, replace={'kind = "procedural"\ntrain = 64\ntest = 32': f'kind = "folder"\npath = "{folder}"'})
    for name, kind in ((str(recipe), "folder"), ("icd-v1", "webdataset")):
        assert main(["prompts", name, "--count", "2", "--out", str(tmp_path / "p.csv")]) == 2
        err = capsys.readouterr().err
        assert f"{name}: its source is '{kind}'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_a_recipe_seed_past_int64_is_refused_naming_the_field():
    """seed = 2**64 built shards whose KEY.json seed Hugging Face datasets could not read as the int64 it is declared."""
    from builders.recipe import MAX_SEED, RecipeError, parse_recipe

    raw = tomllib.loads((RECIPES_DIR / "icd-debug.toml").read_text())
    with pytest.raises(RecipeError, match=re.escape(f"seed must be in [0, {MAX_SEED}], got {2**64}")):
        parse_recipe({**raw, "seed": 2**64})
    assert MAX_SEED == 2**63 - 1 and parse_recipe({**raw, "seed": MAX_SEED}, check_components=False).seed == MAX_SEED


@pytest.mark.parametrize("overrides,fragment", [
    ({"finetune": {"threads": 100_000}}, "[finetune]: threads: expected an integer in [1, 1024]"),
    ({"generation": {"threads": 100_000}}, "threads: expected an integer in [1, 1024]"),
    ({"quality": {"kind": "scene", "threads": 100_000}}, "threads: expected an integer in [1, 1024]"),
    ({"base": {"training": {"threads": 2**40}}}, "threads: expected an integer in [1, 1024]"),
    ({"base": {"pipeline": {"text_hidden": 10**12, "text_heads": 1}}}, "text_hidden must be at most 65536"),
    ({"base": {"pipeline": {"text_layers": 10**5}}}, "text_layers must be at most 64"),
    ({"base": {"pipeline": {"unet_channels": 64, "unet_attention": True}}}, "unet_channels must be a list"),
    ({"base": {"pipeline": {"unet_channels": [16, 2**20]}}}, "unet_channels must be a non-empty list of multiples of 16 up to 65536"),
    ({"base": {"pipeline": {"num_train_timesteps": 10**10}}}, "num_train_timesteps must be at most 100000"),
    ({"base": {"pipeline": {"text_hidden": 8192, "text_layers": 64, "text_heads": 8}}}, "parameters, over the 2,000,000,000"),
    ({"base": {"seed": 2**64}}, "seed: expected an integer in [0, 4294967295]"),
])
def test_sizes_no_machine_can_hold_are_refused_naming_the_field(overrides, fragment):
    """threads = 100000 segfaulted torch's first matrix product (no message); a text encoder of width
    10**12 overflowed torch's size arithmetic, one of 13 billion parameters was allocated after the
    dataset stage; a [base] seed of 2**64 overflowed torch.manual_seed."""
    with pytest.raises(TrackError) as e:
        check_track(load_track("debug", overrides))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_pipeline_is_sized_without_allocating_it_and_the_shipped_ones_fit(monkeypatch):
    from benchmark.models import pipelines
    from benchmark.models.pipelines import MAX_PARAMETERS, TinyPipelineConfig, check_size, parameter_count

    assert parameter_count(TinyPipelineConfig()) == 9_918_768
    for name in ("debug", "tiny"):
        check_size(load_track(name).base_model_config().pipeline)
    devices = set()
    for builder in ("build_unet", "build_text_encoder"):
        def built(*args, _build=getattr(pipelines, builder), **kwargs):
            model = _build(*args, **kwargs)
            devices.update(p.device.type for p in model.parameters())
            return model
        monkeypatch.setattr(pipelines, builder, built)
    with pytest.raises(ValueError, match="parameters, over the"):
        check_size(TinyPipelineConfig(unet_channels=(65536, 65536), unet_attention=(False, True), image_size=64))
    assert devices == {"meta"}, "the parameters were allocated to be counted"
    assert MAX_PARAMETERS == 2 * 10**9


def test_a_pretrained_tracks_images_are_no_larger_than_a_recipe_makes():
    from benchmark.generation import GenerationSettings
    from benchmark.track_check import _image_size

    with pytest.raises(ValueError, match=r"image_size = 16384: at most 8192"):
        _image_size(GenerationSettings(image_size=16384), None)
    _image_size(GenerationSettings(image_size=8192), None)


def test_too_few_captions_for_the_detectors_background_images_is_refused_once_the_dataset_is_built(tmp_path, monkeypatch):
    """detector_backgrounds + detector_calibration over icd-mixed's train captions was found after
    the base's training; now right after the dataset stage, unless --detector makes them unneeded."""
    from benchmark import stages
    from tests.real_runs import real_run

    monkeypatch.setattr(stages, "build_dataset", lambda recipe, out, **kw: None)
    monkeypatch.setattr(stages, "require_verified", lambda out: None)
    train = tmp_path / "icd-debug" / "icd-mixed" / "train"
    train.mkdir(parents=True)
    (train / "00000_stats.json").write_text(json.dumps({"successes": 10}))
    (train / "00001_stats.json").write_text(json.dumps({"successes": 5}))
    run = real_run(tmp_path / "run", load_track("debug"), source=None, data_root=tmp_path, workers=0, detector=None)
    with pytest.raises(ValueError, match=re.escape(f"{train}: the train split holds 15 captions, and this track's "
                                                   "detector_backgrounds + detector_calibration is 16")):
        stages.dataset(run)
    assert stages.dataset(replace(run, track=load_track("debug", {"detector_calibration": 7}))) == tmp_path / "icd-debug"
    assert stages.dataset(replace(run, detector=tmp_path / "theirs")) == tmp_path / "icd-debug"


@pytest.mark.parametrize("overrides,named,nearest", [
    ({"finetune": {"stpes": 4}}, "finetune.stpes", "steps"),
    ({"base": {"training": {"learning_rte": 1e-3}}}, "base.training.learning_rte", "learning_rate"),
    ({"base": {"pipeline": {"imag_size": 64}}}, "base.pipeline.imag_size", "image_size"),
    ({"base": {"scenes": {"trian": 64}}}, "base.scenes.trian", "train"),
    ({"base": {"named": {"shares": 0.5}}}, "base.named.shares", "share"),
    ({"base": {"sed": 1}}, "base.sed", "seed"),
    ({"geom_erasing": {"aplha": 1.0}}, "geom_erasing.aplha", "alpha"),
    ({"geom_erasing": {"ge-full": {"gird": 4}}}, "geom_erasing.ge-full.gird", "grid"),
    ({"generation": {"guidance": 7.5}}, "generation.guidance", "guidance_scale"),
    ({"num_promtps": 8}, "num_promtps", "num_prompts"),
])
def test_a_typo_in_any_table_names_its_whole_path_and_the_nearest_field(overrides, named, nearest):
    """[finetune], [base.*] and [geom_erasing] typos were "TrainingConfig.__init__() got an unexpected
    keyword argument", naming neither the table nor the fields it takes."""
    with pytest.raises(TrackError) as e:
        check_track(load_track("debug", overrides))
    message = str(e.value)
    assert f"{named}: unknown field; did you mean {nearest!r}? (known: " in message and "__init__" not in message, message


def test_a_recipe_typo_names_the_nearest_field():
    from builders.recipe import RecipeError, parse_recipe

    raw = tomllib.loads((RECIPES_DIR / "icd-debug.toml").read_text())
    with pytest.raises(RecipeError, match=r"^jpg_quality: unknown field; did you mean 'jpeg_quality'\? \(known: "):
        parse_recipe({**raw, "jpg_quality": 90})
    with pytest.raises(RecipeError, match=r"^xyz: unknown field \(known: "):  # nothing near: no guess
        parse_recipe({**raw, "xyz": 90})


@pytest.mark.parametrize("key,value", [("reweight", False), ("geometry", False), ("concept_name", False), ("concepts", ["qrcode"])])
def test_a_methods_own_switch_in_the_shared_geom_erasing_table_is_refused(key, value):
    """[geom_erasing] reweight = false was overridden by every method's own switch, silently: ge-full still re-weighted."""
    with pytest.raises(TrackError, match=rf"geom_erasing\.{key}: .*not (a shared choice|here)"):
        check_track(load_track("debug", {"geom_erasing": {key: value}}))
    check_track(load_track("debug", {"geom_erasing": {"alpha": 0.5, "ge-full": {"grid": 4, "reweight": False}}}))


def test_a_track_file_path_written_relative_to_the_track_file_says_where_it_is_read_from(tmp_path, monkeypatch):
    """recipe = "r.toml" beside the track, run from elsewhere, was "r.toml: recipe file not found",
    though the file was beside the track: a relative path is read from the current folder, as a recipe's are."""
    mine = tmp_path / "my tracks é"
    mine.mkdir()
    (mine / "r.toml").write_text((RECIPES_DIR / "icd-debug.toml").read_text())
    (mine / "p.csv").write_text((TRACKS_DIR.parent / "prompts" / "icd-tiny-eval.csv").read_text())
    for line, new, field, beside in (('recipe = "icd-debug"', 'recipe = "r.toml"', "recipe", mine / "r.toml"),
                                     ('prompts = "icd-tiny-eval"', 'prompts = "p.csv"', "prompts", mine / "p.csv")):
        track = _track_file(mine, {line: new})
        monkeypatch.chdir(tmp_path)
        message = _refused(track, f"{field}: {beside.name}: not in the current folder, {tmp_path}", str(beside))
        assert "give that path" in message
        monkeypatch.chdir(mine)
        check_track(load_track(track))


def test_a_leaderboard_run_that_is_missing_or_a_file_is_named_as_such(tmp_path, capsys):
    """A mistyped run folder was said to "hold neither results.json nor summary.json", as an empty folder is."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for run, said in ((tmp_path / "nope", "does not exist"), (afile, "not a folder")):
        assert main(["leaderboard", "--out", str(tmp_path / "lb"), str(run)]) == 2
        err = capsys.readouterr().err
        assert f"{run}: {said} (a run folder holds results.json" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "lb").exists()


@pytest.mark.parametrize("overrides,fragment", [
    ({"generation": {"steps": 1000}}, "[generation]: steps = 1000: too many"),
    ({"generation": {"steps": 10**12}}, "[generation]: steps = 1000000000000: too many"),
    ({"esd": {"ddim_steps": 5000}}, "[esd]: ddim_steps = 5000: too many"),
    ({"base": {"pipeline": {"num_train_timesteps": 4}}}, "[generation]: steps = 4: too many"),
])
def test_sampling_steps_the_bases_scheduler_cannot_take_are_refused_before_any_stage(overrides, fragment):
    """[generation] steps = 1000 on a base of 1000 timesteps (DDIM's offset puts the last at 1000)
    failed in the first method's sampling, after every fine-tune had trained."""
    with pytest.raises(TrackError) as e:
        check_track(load_track("debug", overrides))
    assert fragment in str(e.value), str(e.value)
    check_track(load_track("debug", {"generation": {"steps": 999}}))
    check_track(load_track("debug", {"base": {"pipeline": {"num_train_timesteps": 10}}}))


@pytest.mark.parametrize("name,runs,data", [("icd-debug", "same", "same"), ("x", "same/icd-debug", "same"), ("data", "same", "same/data/inner")])
def test_a_run_folder_overlapping_the_dataset_folder_is_refused_before_anything_is_written(tmp_path, capsys, name, runs, data):
    """--runs and --data one folder, the run named as the recipe: run.json was written into the
    dataset's folder (a built one then held the run's models and images)."""
    argv = ["benchmark", "--track", "debug", "--name", name, "--runs", str(tmp_path / runs), "--data", str(tmp_path / data),
            "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the run folder (--runs, --name)" in err and "overlaps the dataset folder" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("field", ["learning_rate", "weight_decay", "max_grad_norm", "snr_gamma"])
def test_a_setting_made_in_code_is_refused_when_infinite(field):
    """A fine-tune's settings given in Python (a lab's script, not a track file) took infinity where
    the bound is open (``check_number(..., 0, math.inf)``); a record writes it as null (strict JSON), so
    the run it made could not be resumed or compared. Every validator takes finite numbers only."""
    import math

    from benchmark.training.config import TrainingConfig
    from implicit_concept.validate import check_positive, check_range, check_weights

    with pytest.raises(ValueError, match=field):
        TrainingConfig(**{field: math.inf})
    with pytest.raises(ValueError, match="steps_per_second"):
        check_positive("options", {"steps_per_second": math.inf}, ["steps_per_second"])
    with pytest.raises(ValueError, match="scale"):
        check_range("scale", [0.5, math.inf], 0.0, math.inf)
    with pytest.raises(ValueError, match="weights"):
        check_weights("weights", {"qrcode": math.inf}, ["qrcode"])


def test_a_weight_may_be_zero_a_positive_setting_may_not_and_an_open_bound_is_left_out():
    """A style or layout weighted 0 is one not drawn (not all may be); a rate, size or speed of 0
    would stall or divide by zero; ``(0, 1]`` takes no 0 where ``[0, 1]`` does."""
    from implicit_concept.validate import check_number, check_positive, check_weights

    check_weights("layouts", {"grid": 1.0, "corner": 0}, ["grid", "corner"])
    with pytest.raises(ValueError, match=r"^layouts: expected a mapping .* \(not all 0\)"):
        check_weights("layouts", {"grid": 0, "corner": 0.0}, ["grid", "corner"])
    with pytest.raises(ValueError, match=r"^options\.steps_per_second: expected a number > 0, got 0$"):
        check_positive("options", {"steps_per_second": 0}, ["steps_per_second"])
    check_number("share", 0, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^share: expected a number in \(0, 1\], got 0$"):
        check_number("share", 0, 0.0, 1.0, open_lo=True)
