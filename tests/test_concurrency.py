"""Several processes on one out folder, run folder or cache: one makes each thing, the others wait
and reuse it, and a second run of one name is refused at once."""
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from builders.build import build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe
from builders.verify import verify_dataset
from implicit_concept.file_locks import FolderBusyError, locked
from implicit_concept.files import temporary_name
from manifests import RECIPES_DIR

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

HOLD = """
import sys, time
from pathlib import Path
from implicit_concept.file_locks import locked
with locked(Path(sys.argv[1])):
    print("held", flush=True)
    if len(sys.argv) > 3:  # until the file argv[3] appears, or argv[2] seconds
        deadline = time.monotonic() + float(sys.argv[2])
        while not Path(sys.argv[3]).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(float(sys.argv[2]))
    Path(sys.argv[1]).mkdir()
"""


#: The command line, imported first and run when the file argv[1] appears: two commands that start together.
ON_CUE = """
import sys, time
from pathlib import Path
from benchmark.cli import main
print("ready", flush=True)
while not Path(sys.argv[1]).exists():
    time.sleep(0.002)
sys.exit(main(sys.argv[2:]))
"""


def _holder(path: Path, seconds: float, until: Path | None = None) -> subprocess.Popen:
    """Another process that holds ``path``'s lock for ``seconds`` (or until the file ``until``
    appears, if sooner), then makes the folder."""
    cue = [str(until)] if until is not None else []
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds), *cue], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_maker_waits_for_the_first_then_finds_what_it_made(tmp_path, caplog):
    """The holder lets go once this process has said it waits (or after 120 s), not after a fixed
    time that a stall of this process could outlast."""
    entry, go = tmp_path / "cache" / "entry", tmp_path / "go"
    holder = _holder(entry, 120, until=go)
    waiting = f"{entry}: in use by another process (pid {holder.pid}); waiting"

    def release_once_waiting():
        deadline = time.monotonic() + 120
        while waiting not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()

    threading.Thread(target=release_once_waiting, daemon=True).start()
    try:
        with locked(entry):
            assert entry.is_dir(), "the block ran while the holder still held the lock"
        assert holder.wait() == 0
        assert waiting in caplog.text
    finally:
        go.touch()
        holder.wait()


def test_without_waiting_a_busy_folder_is_refused_naming_it_and_its_holder(tmp_path):
    run = tmp_path / "runs" / "debug"
    holder = _holder(run, 30)
    try:
        with pytest.raises(FolderBusyError, match=re.escape(f"{run}: in use by another process (pid {holder.pid}); use another --name")):
            with locked(run, wait=False, refusal="use another --name"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with locked(run, wait=False):  # a killed holder's lock is gone with it
        pass


def test_a_holder_that_waited_for_the_lock_is_the_one_a_refusal_names(tmp_path):
    entry = tmp_path / "cache" / "entry"
    first = _holder(entry, 1.5)
    second = subprocess.Popen([sys.executable, "-c", HOLD, str(entry), "30"], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert second.stdout.readline().strip() == "held"  # after waiting for the first
        assert first.wait() == 0
        with pytest.raises(FolderBusyError, match=re.escape(f"(pid {second.pid})")):
            with locked(entry, wait=False):
                pass
    finally:
        second.kill()
        second.wait()


def test_a_build_holding_the_lock_removes_every_temporary_whatever_its_pid(debug_dataset, tmp_path):
    """Every writer of the folder writes under the lock this build now holds, so no temporary in it
    is a live writer's, even one whose pid runs (reused, or a pid of another node)."""
    import shutil

    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    shard = out / "icd-qrcode" / "train"
    reused = shard / f".00000.tar.tmp-{live.pid}"
    left = shard / f".00001.tar.tmp-{dead}"
    try:
        reused.write_bytes(b"a killed writer's shard, its pid reused")
        left.write_bytes(b"a killed writer's shard")
        build_dataset(load_recipe("icd-debug"), out, progress=False)
        assert not reused.exists() and not left.exists()
    finally:
        live.kill()
        live.wait()
    assert temporary_name(shard / "x").name == f".x.tmp-{os.getpid()}"


def test_two_builds_into_one_out_end_with_one_correct_build(tmp_path):
    """The second starts while the first writes a shard: it waits, then finds every shard finished."""
    out = tmp_path / "icd-debug"
    args = ["build", "icd-debug", "--out", str(out), "--quiet", "--workers", "1"]
    first, second = (subprocess.Popen([sys.executable, "-c", ON_CUE, str(tmp_path / f"go-{n}"), *args], cwd=REPO, env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (1, 2))
    for proc in (first, second):
        assert proc.stdout.readline().strip() == "ready"
    (tmp_path / "go-1").touch()
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.rglob(".*.tar.tmp-*")):
        time.sleep(0.005)
    (tmp_path / "go-2").touch()
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert (out / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()
    assert verify_dataset(out).ok
    assert not list(out.rglob(".*.tmp-*"))


def test_a_second_run_of_one_name_is_refused_at_once(tmp_path, monkeypatch, capsys):
    from benchmark import stages
    from benchmark.cli import main

    def went_on(*args, **kwargs):
        raise AssertionError("a second run of one name went on into the first one's folder")

    monkeypatch.setattr(stages, "dataset", went_on)
    run = tmp_path / "runs" / "debug"
    run.mkdir(parents=True)
    args = ["benchmark", "--track", "debug", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
            "--cache", str(tmp_path / "cache"), "--quiet"]
    with locked(run, inside=True):  # held by this process through another file description, as another run would
        assert main(args) == 2
    assert f"{run}: in use by another process (pid {os.getpid()}); wait for it to finish or use another --name" in capsys.readouterr().err


def test_a_folder_made_with_another_config_is_refused_naming_what_differs(tmp_path):
    """``claim``: the same record again reuses the folder; another config is refused, naming the field
    and ending with the caller's advice; with ``keys``, only those fields decide."""
    from implicit_concept.files import FolderClaimError, claim

    record = tmp_path / "run" / "run.json"
    claim(record, {"a": 1, "note": "first"}, "use another --name")
    claim(record, {"a": 1, "note": "first"}, "use another --name")
    with pytest.raises(FolderClaimError, match=r"run: was made with another config \(run\.json differs in a\); use another --name$"):
        claim(record, {"a": 2, "note": "first"}, "use another --name")
    claim(record, {"a": 1, "note": "second"}, "use another --name", keys=["a"])
    assert json.loads(record.read_text()) == {"a": 1, "note": "first"}


@pytest.mark.slow
def test_two_runs_on_one_empty_cache_both_succeed_with_the_same_results(tmp_path):
    """Two debug runs of other names into one runs folder, data folder and cache, started together:
    each dataset, detector, base and scene-feature entry is made once, and both report the same."""
    common = ["--track", "debug", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
              "--cache", str(tmp_path / "cache"), "--quiet", "--method", "sd", "--method", "ge-full"]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmark.cli", "benchmark", *common, "--name", name],
                              cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    a, b = (json.loads((tmp_path / "runs" / name / "results.json").read_text()) for name in ("a", "b"))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("timings", "model")} for r in rs]  # noqa: E731  (model: each run's own folders)
    assert strip(a["rows"]) == strip(b["rows"]) and {r["status"] for r in a["rows"]} == {"ok"}
    assert len(list((tmp_path / "cache" / "detectors").glob("*/detector.safetensors"))) == 1
    assert len(list((tmp_path / "cache" / "bases").glob("base-*/base.json"))) == 1
    assert (tmp_path / "data" / "icd-debug" / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()
