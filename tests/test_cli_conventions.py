"""The command line behaves as command-line tools do: a reader that closes the pipe early
(``implicit-concept ... | head``) stops it quietly, and a cache folder it cannot write (the default
one, in a current folder that cannot hold it) is named, with the option that moves it; progress bars
redraw on a terminal, not in a log; the Makefile's variables reach the command as one argument each."""
import importlib.metadata
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

#: A command whose output is far beyond a pipe's buffer, run through the real entry point.
FLOOD = r"""
import sys
import benchmark.cli as cli

def flood(args):
    for i in range(200_000):
        print(f"line {i} " + "x" * 60)
    return 0

cli._prompts = flood  # the command `prompts` names, looked up when the parser is built
sys.exit(cli.main(["prompts", "icd-tiny", "--out", "unused.csv"]))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_reader_that_closes_the_pipe_stops_the_command_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", FLOOD], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"line 0 ")
    proc.stdout.close()  # as `head -1` does
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert stderr == "", stderr[-2000:]
    assert code in (0, 141), code  # 141: 128 + SIGPIPE, as a program the signal stopped


#: A command whose results, a line held in stdout's buffer, meet a reader already gone.
RESULTS_TO_A_GONE_READER = r"""
import sys
import benchmark.cli as cli

def results():
    sys.stdin.readline()  # the reader has closed the pipe
    print("| method | ICR |")
    return 0

cli.main = results
cli.console_main()
"""


def test_results_a_reader_left_before_they_were_flushed_end_the_command_quietly(tmp_path):
    """``implicit-concept benchmark | head -0``: the results, written once the command returned, met a
    closed pipe; left unhandled, Python's exit reported "Exception ignored ... BrokenPipeError" and
    exited 120, as if the run had failed."""
    env = {k: v for k, v in _env().items() if k != "PYTHONUNBUFFERED"}  # the results held in the buffer, as by default
    proc = subprocess.Popen([sys.executable, "-c", RESULTS_TO_A_GONE_READER], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, stderr = proc.communicate(b"go\n", timeout=120)
    assert stderr.decode() == "" and proc.returncode in (0, 141), (proc.returncode, stderr.decode()[-2000:])

def test_what_prints_after_the_results_goes_to_stderr(monkeypatch, capsys):
    """Once a command's results are out, stdout is closed to what prints after them (a plug-in's
    thread's last lines, its exit handler): ``> results.md`` keeps the results alone."""
    from benchmark import process_exit

    results = io.StringIO()
    monkeypatch.setattr(sys, "stdout", results)
    print("| method | ICR |")
    process_exit.results_ended()
    print("lab-metrics-logger: uploaded")
    assert results.getvalue() == "| method | ICR |\n"
    assert capsys.readouterr().err == "lab-metrics-logger: uploaded\n"


def test_a_current_folder_that_cannot_hold_the_default_cache_is_named_with_the_option(tmp_path):
    images, work = tmp_path / "images", tmp_path / "work"
    images.mkdir()
    work.mkdir()
    Image.new("RGB", (64, 64), "white").save(images / "a.png")
    (work / ".cache").write_text("")  # so .cache/implicit-concept cannot be made here, even by root
    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "score", str(images), "--quiet"],
                          cwd=work, env={**_env(), "HOME": str(tmp_path / "home")}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("implicit-concept score: error: "), done.stderr[-3000:]
    assert f"the cache folder {work / '.cache' / 'implicit-concept'} cannot be written" in last and "--cache" in last, last
    assert done.stdout == ""


@pytest.mark.parametrize("argv, command, problem", [
    ([], "implicit-concept", "required"),
    (["build"], "implicit-concept build", "required: recipe"),
    (["build", "icd-debug", "--bogus", "x"], "implicit-concept build", "unrecognized arguments: --bogus x"),
    (["detector", "train", "s", "--out", "o", "--epochs", "3"], "implicit-concept detector train", "unrecognized arguments: --epochs 3"),
    (["show", "d", "--out", "g.png", "--count", "0"], "implicit-concept show", "argument --count"),
    (["export", "d", "--out", "e", "--format", "pdf"], "implicit-concept export", "invalid choice: 'pdf'"),
])
def test_a_usage_error_is_one_line_naming_the_command(capsys, argv, command, problem):
    from benchmark.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    captured = capsys.readouterr()
    assert e.value.code == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith(f"{command}: error: ") and problem in captured.err, captured.err
    assert f"see {command} --help" in captured.err, captured.err


#: A long command through the real entry point: a bar of 40 slow steps, each setting a postfix (as training's loss does).
SLOW_BAR = r"""
import sys, time
import benchmark.cli as cli
from implicit_concept.progress import progress_bar

def slow(args):
    bar = progress_bar(total=40, desc="slow", progress=True)
    for step in range(40):
        time.sleep(0.02)
        bar.set_postfix(loss=f"{step:.4f}")
        bar.update(1)
    bar.close()
    print("done")
    return 0

cli._prompts = slow
sys.exit(cli.main(["prompts", "icd-tiny", "--out", "unused.csv"]))
"""


def _bar_redraws(tmp_path, stderr) -> int:
    done = subprocess.run([sys.executable, "-c", SLOW_BAR], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=stderr, timeout=120)
    assert done.returncode == 0 and done.stdout == b"done\n"
    return done


def test_a_bar_written_to_a_log_file_is_not_redrawn_at_every_step(tmp_path):
    """stderr redirected to a file (a CI log): the bar's first and last lines, not one per step or tenth of a second."""
    log = tmp_path / "log.txt"
    with open(log, "wb") as stderr:
        _bar_redraws(tmp_path, stderr)
    text = log.read_bytes().decode()  # not read_text: its newline translation makes every \r a \n
    assert "slow: 100%" in text and "40/40" in text, text
    assert text.count("\r") <= 3, text.replace("\r", "\\r\n")


def test_a_bar_on_a_terminal_is_redrawn_as_it_goes(tmp_path):
    import fcntl
    import pty
    import struct
    import termios
    import threading

    main_end, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new terminal is 0 columns wide
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(main_end, 65536)
            except OSError:  # the terminal's other end is closed: all read
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _bar_redraws(tmp_path, terminal)
    finally:
        os.close(terminal)
        reader.join(timeout=30)
        os.close(main_end)
    assert bytes(seen).count(b"\r") >= 4, bytes(seen)


def test_tqdm_disable_turns_off_the_bars_a_command_asks_for(debug_dataset, capsys, monkeypatch):
    """On the session's built dataset, which verify only reads."""
    from benchmark.cli import main

    data = debug_dataset
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(["verify", str(data)]) == 0
    captured = capsys.readouterr()
    assert f"verify {data.name}" not in captured.err, captured.err
    assert captured.out.strip().endswith(": OK"), captured.out
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert main(["verify", str(data)]) == 0
    assert f"verify {data.name}" in capsys.readouterr().err


FAKE_CLI = """#!{python}
import json, sys
sys.path.insert(0, {repo!r})
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "recipe-name":
    from benchmark.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def _make(tmp_path: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """``make`` run for real with a venv whose ``implicit-concept`` logs each call (and answers
    ``recipe-name`` as the real one does); returns what make did and the calls, each as its arguments."""
    venv, log = tmp_path / "a venv", tmp_path / "calls.jsonl"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    cli = venv / "bin" / "implicit-concept"
    cli.write_text(FAKE_CLI.format(python=sys.executable, repo=str(REPO), log=str(log)))
    cli.chmod(0o755)
    (venv / ".installed-stamp").touch()
    log.write_text("")
    # Installed, whatever the venv's name holds: a name with a space was two stamps, never found, and
    # every target reinstalled the package (asked with -q, which runs nothing).
    assert subprocess.run(["make", "-q", "install", f"VENV={venv}"], cwd=REPO, capture_output=True, timeout=60).returncode == 0
    done = subprocess.run(["make", *arguments, f"VENV={venv}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    return done, [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_the_makefile_passes_each_variable_as_one_argument_and_names_the_dataset_after_its_recipe(tmp_path):
    """``make dataset DATA='my data'``: one path, not two arguments (and ``make clean`` removing ./my and
    ./data). ``RECIPE=path/to/my.toml`` built into DATA/path/to/my.toml, and its contact sheet was
    drawn from an ``icd-mixed`` subset a lab's recipe need not have; now the folder is the recipe's
    ``name`` and the sheet is drawn from the dataset's first shards (icd-mixed/test's in the shipped ones)."""
    data = str(tmp_path / "my data's")
    recipes = tmp_path / "my recipes"
    recipes.mkdir()
    recipe = recipes / "lab's.toml"
    recipe.write_text('name = "lab-set"\nseed = 1\nimage_size = 32\n[source]\nkind = "procedural"\n'
                      '[[subsets]]\nname = "qr-only"\nconcepts = ["qrcode"]\nfraction = 0.5\n')
    done, calls = _make(tmp_path, "dataset", "benchmark", f"DATA={data}", f"RECIPE={recipe}", "TRACK=my track")
    assert done.returncode == 0, done.stderr
    out = f"{data}/lab-set"
    assert calls == [["recipe-name", str(recipe)], ["build", str(recipe), "--out", out, "--workers", "2"], ["verify", out],
                     ["show", out, "--contaminated", "--out", f"{out}/preview.png"],
                     ["benchmark", "--track", "my track", "--data", data, "--workers", "2", "--jobs", "2"]], calls

    done, calls = _make(tmp_path, "dataset", f"DATA={data}", "RECIPE=icd-debug")
    assert done.returncode == 0 and calls[1] == ["build", "icd-debug", "--out", f"{data}/icd-debug", "--workers", "2"], calls

    done = subprocess.run(["make", "-n", "clean", f"DATA={data}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ["rm", "-rf", "--", data, "runs", ".pytest_cache"] in [shlex.split(line) for line in done.stdout.splitlines()], done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_passes_a_labs_source_and_pretrained_folder_as_one_argument_each(tmp_path):
    """The paper track's recipe reads the lab's own shards (``--source``) and its base from disk
    (``--pretrained``): ``make dataset RECIPE=icd-v1`` had no way to pass them, and built from the
    recipe's placeholder path. A brace pattern stays one argument for the CLI to expand; unset, neither
    flag is passed (the test above)."""
    source, sd = str(tmp_path / "my laion/{00000..00009}.tar"), str(tmp_path / "lab's sd")
    done, calls = _make(tmp_path, "dataset", "benchmark", f"DATA={tmp_path / 'd'}", "RECIPE=icd-v1", "TRACK=paper",
                        f"SOURCE={source}", f"PRETRAINED={sd}")
    assert done.returncode == 0, done.stderr
    out = f"{tmp_path / 'd'}/icd-v1"
    assert calls[1] == ["build", "icd-v1", "--out", out, "--workers", "2", "--source", source], calls
    assert calls[-1] == ["benchmark", "--track", "paper", "--data", str(tmp_path / "d"), "--workers", "2", "--jobs", "2",
                         "--source", source, "--pretrained", sd], calls


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_dataset_with_a_recipe_it_cannot_name_builds_nothing(tmp_path):
    """A recipe that does not exist, or whose name is not a folder name: its error on one line, and no
    build into ``DATA/`` itself."""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "../up"\n')
    for recipe, problem in (("no-such-recipe", "no-such-recipe: no such recipe file"), (str(bad), f"{bad}: ")):
        done, calls = _make(tmp_path, "dataset", f"DATA={tmp_path / 'data'}", f"RECIPE={recipe}")
        assert done.returncode != 0 and calls == [["recipe-name", recipe]], calls
        assert f"implicit-concept recipe-name: error: {problem}" in done.stderr, done.stderr


def test_build_and_verify_give_their_numbers_as_json_for_scripts(tmp_path, capsys, monkeypatch):
    """``--json -``: one JSON object and nothing else on stdout; ``--json FILE``: the file, the text as before."""
    import json

    from benchmark.cli import main

    monkeypatch.chdir(tmp_path)  # a file named - written, not stdout, lands here

    data = tmp_path / "icd-debug"
    assert main(["build", "icd-debug", "--out", str(data), "--quiet", "--json", "-"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built == {"out": str(data), "samples": 384, "shards_built": 12, "shards_already_complete": 0, "skipped_source_items": {}}

    assert main(["verify", str(data), "--quiet", "--json", "-"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["ok"] is True and verified["shards"] == 12 and verified["samples"] == 384 and verified["problems"] == []
    assert verified["environment"]["packages"]["pillow"] == importlib.metadata.version("pillow"), "the versions that checked"

    record = tmp_path / "reports" / "verify.json"
    assert main(["verify", str(data), "--quiet", "--json", str(record)]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")
    assert json.loads(record.read_text()) == verified

    missing = tmp_path / "nothing here"
    assert main(["verify", str(missing), "--json", "-"]) == 1
    captured = capsys.readouterr()
    failed = json.loads(captured.out)
    assert failed["ok"] is False and str(missing) in failed["problems"][0] and str(missing) in captured.err


@pytest.mark.parametrize("command", ["build", "verify"])
@pytest.mark.parametrize("name", ["recipe.json", "train/icd-debug-train-000000_stats.json", "report.json"])
def test_a_json_file_inside_the_dataset_is_refused_before_any_work_and_the_dataset_kept(tmp_path, capsys, command, name):
    """``--json DATA/recipe.json`` replaced the build's own record with the command's numbers (the
    dataset was no longer a build), and any other --json inside the dataset became a stray file of it."""
    from benchmark.cli import main

    data = tmp_path / "icd-debug"
    (data / "train").mkdir(parents=True)
    (data / "recipe.json").write_text('{"the build\'s": "record"}')
    (data / "train" / "icd-debug-train-000000_stats.json").write_text("{}")
    listing = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    argv = ["build", "icd-debug", "--out", str(data)] if command == "build" else ["verify", str(data)]
    assert main(argv + ["--quiet", "--json", str(data / name)]) == 2
    assert capsys.readouterr().err.strip() == (f"implicit-concept {command}: error: --json {data / name}: lies inside the dataset "
                                               f"folder it {command.replace('fy', 'fie')}s, {data}, which it would change; write it outside")
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == listing


def test_score_json_inside_the_images_it_scores_or_the_detectors_folder_is_refused_and_both_kept(tmp_path, capsys):
    """``score IMAGES --json IMAGES/photo.json`` replaced the lab's file of that name among the images
    (and ``--json DETECTOR/detector.json`` would replace the detector's own record)."""
    from benchmark.cli import main

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "photo.png")
    (images / "photo.json").write_text('{"the lab\'s": "labels"}')
    detector = tmp_path / "det"
    detector.mkdir()
    (detector / "detector.json").write_text('{"a detector\'s": "record"}')
    listing = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["score", str(images), "--quiet", "--json", str(images / "photo.json")]) == 2  # the published detector
    assert f"--json {images / 'photo.json'}: lies inside the images it scores" in capsys.readouterr().err
    for dest, what, folder in ((images / "photo.json", "the images it scores", images),
                               (detector / "detector.json", "the detector's folder", detector)):
        assert main(["score", str(images), "--detector", str(detector), "--quiet", "--json", str(dest)]) == 2
        assert capsys.readouterr().err.strip() == (f"implicit-concept score: error: --json {dest}: lies inside {what}, {folder}, "
                                                   "which it would change; write it outside")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == listing


@pytest.mark.parametrize("command", [["verify", "d"], ["build", "icd-debug", "--out", "o"], ["score", "images"]])
def test_a_json_file_that_is_a_folder_is_refused_before_any_work(tmp_path, capsys, command, monkeypatch):
    from benchmark.cli import main

    monkeypatch.chdir(tmp_path)  # what the command would write, had it started, lands here

    with pytest.raises(SystemExit) as e:
        main(command + ["--json", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --json" in err and f"{tmp_path}: a folder" in err, err


@pytest.mark.parametrize("argv, argument, problem", [
    (["score-pipeline", "{missing}", "--out", "{out}"], "pipeline", "{missing}: no such file or folder"),
    (["score-images", "{file}", "--out", "{out}", "--no-quality"], "dir", "{file}: a file, where a folder is expected"),
    (["score-images", "{folder}", "--out", "{out}", "--reference", "{missing}"], "--reference", "{missing}: no such file or folder"),
    (["score", "{folder}", "--clean", "{missing}"], "--clean", "{missing}: no such file or folder"),
    (["score", "{missing}"], "dir", "{missing}: no such file or folder"),
    (["score", "{folder}", "--detector", "{link}"], "--detector", "{link}: a broken symbolic link"),
    (["detector", "train", "{missing}", "--out", "{out}"], "shards", "{missing}: no such folder"),
    (["detector", "train", "{folder}", "--out", "{out}", "--calibration", "{file}"], "--calibration", "{file}: a file, where a folder is expected"),
    (["export", "{file}", "--out", "{out}"], "shards", "{file}: a file, where a folder is expected"),
    (["benchmark", "--pretrained", "{missing}", "--runs", "{out}"], "--pretrained", "{missing}: no such file or folder"),
    (["show", "{missing}", "--out", "{out}.png"], "dir", "{missing}: no such file or folder"),
])
def test_a_path_argument_that_cannot_be_what_it_names_is_refused_naming_it_before_any_work(tmp_path, capsys, argv, argument, problem):
    from benchmark.cli import main

    names = {"missing": tmp_path / "no such", "file": tmp_path / "a file.txt", "folder": tmp_path / "a folder",
             "link": tmp_path / "dangling", "out": tmp_path / "out"}
    names["file"].write_text("x")
    names["folder"].mkdir()
    names["link"].symlink_to(tmp_path / "gone")
    command = " ".join(argv[:2] if argv[0] == "detector" else argv[:1])
    code = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"implicit-concept {command}: error: argument {argument}: {problem.format(**names)}"), err
    assert not names["out"].exists() and not Path(f"{names['out']}.png").exists()


def test_a_shard_pattern_or_stream_is_left_to_the_reader():
    from benchmark.cli import path_problem

    for source in ("data/{00000..00009}.tar", "pipe:cat a.tar", "https://host/a.tar"):
        assert path_problem(source, "source") is None
        assert path_problem(source, "folder") is not None


def test_a_path_that_is_a_fifo_where_a_folder_is_expected_is_named_as_one(tmp_path):
    """The path check says what stands there in the project's one wording (bounded_reads.file_kind)."""
    from benchmark.cli import path_problem

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "plain").write_text("x")
    assert path_problem(str(tmp_path / "pipe"), "folder") == f"{tmp_path / 'pipe'}: a FIFO (named pipe), where a folder is expected"
    assert path_problem(str(tmp_path / "plain"), "folder") == f"{tmp_path / 'plain'}: a file, where a folder is expected"


def test_discarded_output_takes_writes_a_reader_gone_would_refuse():
    """What `| head` and a hangup leave behind (files.discard_output): a pipe whose reader left fails
    every write with EPIPE, the interpreter's flush at exit included; discarded, it takes them."""
    from implicit_concept.files import discard_output

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        with pytest.raises(BrokenPipeError):
            os.write(write_end, b"lost")
        discard_output(write_end)
        assert os.write(write_end, b"taken") == 5
        assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    finally:
        os.close(write_end)


LEFT_RUNNING = '''
import atexit, multiprocessing, sys, threading, time
from pathlib import Path
from benchmark import cli

def lab_run():
    """A command whose plug-in started threads and processes: a logger that never ends, an upload
    that ends soon, a prefetching process that never ends (cleaning up on SIGTERM, or ignoring it), one
    that ends soon, and daemon ones. The prefetcher runs a command of its own."""
    atexit.register(lambda: Path(sys.argv[1]).write_text("atexit ran"))
    if "threads" in sys.argv[3]:
        threading.Thread(target=time.sleep, args=(3600,), name="lab-metrics-logger").start()
    threading.Thread(target=lambda: (time.sleep(0.5), Path(sys.argv[2]).write_text("sent")), name="lab-upload").start()
    threading.Thread(target=time.sleep, args=(3600,), name="lab-daemon", daemon=True).start()
    if "process" in sys.argv[3]:
        spawn = multiprocessing.get_context("spawn")
        on_term = ("signal.SIG_IGN" if "SIGTERM" in sys.argv[3]
                   else f"lambda *_: (Path({sys.argv[1] + '.ended'!r}).write_text('cleaned up'), sys.exit())")
        prefetch = (f"import signal, subprocess, sys, time; from pathlib import Path; signal.signal(signal.SIGTERM, {on_term}); "
                    f"Path({sys.argv[1] + '.decoder'!r}).write_text(str(subprocess.Popen(['sleep', '3600']).pid)); time.sleep(3600)")
        child = spawn.Process(target=exec, args=(prefetch, {}), name="lab-prefetcher")
        child.start()
        spawn.Process(target=time.sleep, args=(0.5,), name="lab-last-batch").start()
        spawn.Process(target=time.sleep, args=(3600,), name="lab-daemon-child", daemon=True).start()
        Path(sys.argv[1] + ".pid").write_text(str(child.pid))
    print("results")
    return 3

cli.main = lab_run
from benchmark import process_exit
process_exit.LEFT_RUNNING_GRACE_S = 3.0
cli.console_main()
'''


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.mark.parametrize("left", ["threads", "threads and a process", "a process", "a process ignoring SIGTERM", "nothing"])
def test_a_finished_command_exits_past_threads_and_processes_a_plug_in_left_running(tmp_path, left):
    """A method whose build started a non-daemon thread or ``multiprocessing`` child that never ends
    (a lab's metrics logger, a data prefetcher) kept `implicit-concept benchmark --method` from ever
    exiting: measured, a debug run still alive 4 minutes after writing results.json. It exits with
    the command's status, naming what was left; a child is ended with it; a thread that ends within
    the grace is waited for (a process too), daemon ones are not named, a child is asked to end
    (SIGTERM: its cleanup runs) and killed if it ignores that, and exit handlers still run; with
    nothing left, the command exits with its status, silent."""
    done = subprocess.run([sys.executable, "-c", LEFT_RUNNING, str(tmp_path / "atexit"), str(tmp_path / "upload"), left],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "results\n"
    assert len(done.stderr.splitlines()) == (left != "nothing"), done.stderr
    assert ("thread lab-metrics-logger" in done.stderr) == ("threads" in left), done.stderr
    assert ("; ended, and not waited for" in done.stderr) == ("process" in left), done.stderr
    assert "lab-upload" not in done.stderr and "lab-daemon" not in done.stderr and "lab-last-batch" not in done.stderr
    assert (tmp_path / "upload").read_text() == "sent"
    assert (tmp_path / "atexit").read_text() == "atexit ran"
    if "process" in left:
        pid = int((tmp_path / "atexit.pid").read_text())
        assert f"process lab-prefetcher ({pid})" in done.stderr
        assert not _pid_running(pid), "the child was left running"
        decoder = int((tmp_path / "atexit.decoder").read_text())  # the child's own child (a decoder it ran)
        assert not _pid_running(decoder), "the child's own child was left running, re-parented"
        assert (tmp_path / "atexit.ended").exists() == ("SIGTERM" not in left), "the child was killed before it was asked"


class Left:
    """A thread or child left running that never ends, its joins timed on a fake clock."""

    def __init__(self, clock, daemon=False, stop=False):
        self.clock, self.daemon, self.stop, self.waits = clock, daemon, stop, []

    def join(self, timeout):
        self.waits.append(timeout)
        if self.stop:
            raise KeyboardInterrupt
        self.clock[0] += timeout

    def is_alive(self):
        return True


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_the_grace_is_one_wait_for_all_left_running_and_a_ctrl_c_ends_it(monkeypatch, ctrl_c):
    """Ten threads left running wait the grace in all, not ten times over; daemon ones are not waited
    for; a Ctrl-C during the wait ends it, with no traceback, and what is still running is named."""
    import threading

    from benchmark import process_exit

    clock = [100.0]
    threads = [Left(clock, stop=ctrl_c), Left(clock), Left(clock, daemon=True)]
    children = [Left(clock), Left(clock, daemon=True)]
    with monkeypatch.context() as m:
        m.setattr(process_exit.threading, "enumerate", lambda: [threading.current_thread(), *threads])
        m.setattr(process_exit.multiprocessing, "active_children", lambda: children)
        m.setattr(process_exit.time, "monotonic", lambda: clock[0])
        left = process_exit.left_running(10.0)
    assert left == (threads[:2], children[:1])
    assert [x.waits for x in threads + children] == ([[10.0], [], [], [], []] if ctrl_c else [[10.0], [0.0], [], [0.0], []])


def test_an_error_no_command_caught_exits_1_with_its_traceback_past_what_a_plug_in_left_running(tmp_path):
    """A bug escaping every command's handlers after a plug-in started a thread that never ends hung
    at exit as a finished run did: its traceback is shown as Python shows it, exit handlers run, and
    the process exits 1 past the thread."""
    script = LEFT_RUNNING.replace('    print("results")\n    return 3', '    raise RuntimeError("a bug in the toolkit")')
    assert script != LEFT_RUNNING
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "atexit"), str(tmp_path / "upload"), "threads"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Traceback (most recent call last):"), done.stderr
    assert "RuntimeError: a bug in the toolkit" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("implicit-concept: 1 left running") and "lab-metrics-logger" in done.stderr
    assert (tmp_path / "atexit").read_text() == "atexit ran"


def test_a_command_that_leaves_nothing_running_exits_as_before():
    quiet = subprocess.run([sys.executable, "-m", "benchmark.cli", "--version"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.startswith("implicit-concept ")


def test_python_dash_m_benchmark_is_the_command():
    """``python -m benchmark`` runs what the console script runs, for a venv not on ``PATH``."""
    ran = subprocess.run([sys.executable, "-m", "benchmark", "build", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("usage: implicit-concept build"), ran.stdout
    wrong = subprocess.run([sys.executable, "-m", "benchmark", "no-such-command"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 2 and "implicit-concept" in wrong.stderr and "no-such-command" in wrong.stderr, wrong.stderr
