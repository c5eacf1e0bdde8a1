"""A lab's shared data and runs folders: readers of a dataset a build is writing, a filesystem without
locks, and read-only copies of finished datasets and caches handed to the commands that only read."""
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from builders.build import build_dataset
from builders.recipe import load_recipe
from implicit_concept import file_locks

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

#: A build resuming ``argv[1]``: holds its lock, says so, and when the file ``argv[3]`` appears (or
#: after 120 s) puts the shard ``argv[2]`` back whole (renamed into place, as a build does), then ends.
RESUMING = """
import os, sys, time
from pathlib import Path
from implicit_concept.file_locks import locked
with locked(Path(sys.argv[1]), inside=True):
    print("held", flush=True)
    deadline = time.monotonic() + 120
    while not Path(sys.argv[3]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    shard = Path(sys.argv[2])
    os.replace(shard.with_name("stash"), shard)
"""


@pytest.fixture
def dataset(debug_dataset, tmp_path):
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    return out


def _resuming(dataset: Path, shard: Path, go: Path) -> subprocess.Popen:
    """Another process resuming ``dataset``'s build: ``shard`` is not written yet."""
    shard.rename(shard.with_name("stash"))
    proc = subprocess.Popen([sys.executable, "-c", RESUMING, str(dataset), str(shard), str(go)], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _go_once_waited_for(caplog, dataset: Path, go: Path) -> None:
    """Lets the build finish once this process has said it waits for it (or after 120 s)."""
    def release():
        deadline = time.monotonic() + 120
        while f"{dataset}: in use by another process" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()

    threading.Thread(target=release, daemon=True).start()


@pytest.mark.parametrize("command", ["export", "show", "detector-data"])
def test_a_reader_of_a_dataset_a_build_is_writing_waits_and_reads_every_shard(dataset, tmp_path, caplog, capsys, command):
    """`export`, `show` and a detector's training listed the shards finished so far and went on with
    part of the data, saying nothing: here `export` wrote a YOLO set of 32 training images of 64."""
    from PIL import ExifTags, Image

    from implicit_concept.detector.export import export_detection_dataset

    subset = dataset / "icd-qrcode"
    shard = subset / "train" / "00001.tar"
    go = tmp_path / "go"
    resuming = _resuming(dataset, shard, go)
    try:
        _go_once_waited_for(caplog, dataset, go)
        if command == "export":
            assert main(["export", str(subset), "--out", str(tmp_path / "yolo"), "--quiet"]) == 0
            assert "train: 57 images" in capsys.readouterr().out  # 64 training images, 7 of them validation
        elif command == "show":
            assert main(["show", str(subset / "train"), "--out", str(tmp_path / "sheet.png"), "--count", "64"]) == 0
            with Image.open(tmp_path / "sheet.png") as sheet:
                shown = json.loads(sheet.getexif()[ExifTags.Base.ImageDescription])["keys"]
            assert len(shown) == 64
        else:
            exported = export_detection_dataset(subset, tmp_path / "detector-data")
            assert exported.counts["train"]["images"] + exported.counts["val"]["images"] == 64
        assert resuming.wait() == 0
        assert f"{dataset}: in use by another process (pid {resuming.pid}); waiting for it" in caplog.text
    finally:
        go.touch()
        resuming.wait()


def test_a_reader_in_a_folder_that_is_no_dataset_does_not_wait_for_its_lock(tmp_path, debug_dataset):
    """Only a dataset's lock (its folder holds recipe.json) is waited for: a run folder's, held for the
    whole run, is not, so a run reading shards it keeps does not wait for itself."""
    from implicit_concept.shard_reader import list_shards

    run = tmp_path / "run"
    shutil.copytree(debug_dataset / "icd-qrcode" / "test", run / "shards")
    with file_locks.locked(run, inside=True):
        assert [p.name for p in list_shards(run / "shards")] == ["00000.tar"]


def _no_flock(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


@pytest.mark.parametrize("command", ["build", "detector train"])
def test_a_filesystem_without_locks_is_one_line_naming_the_lock_file_and_where_to_work(dataset, tmp_path, monkeypatch, capsys, command):
    """An NFS mount without its lock service: `detector train` and `benchmark` said only "No locks
    available", naming no file and no way forward."""
    monkeypatch.setattr(file_locks.fcntl, "flock", _no_flock)
    if command == "build":
        folder = tmp_path / "new"
        assert main(["build", "icd-debug", "--out", str(folder), "--quiet"]) == 2
    else:
        folder = tmp_path / "det"
        assert main(["detector", "train", str(dataset / "icd-qrcode"), "--out", str(folder), "--scale", "debug"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"implicit-concept {command}: error: {folder / file_locks.LOCK_NAME}: cannot be locked: its filesystem "
                          f"keeps no file locks (flock: {os.strerror(errno.ENOLCK)})"), err
    assert "use a folder on a local disk, or mount this one with locking" in err


def test_without_locks_a_finished_dataset_is_still_read(dataset, monkeypatch, capsys):
    monkeypatch.setattr(file_locks.fcntl, "flock", _no_flock)
    assert main(["verify", str(dataset), "--quiet"]) == 0
    assert main(["show", str(dataset / "icd-text"), "--out", str(dataset.parent / "sheet.png")]) == 0
    assert capsys.readouterr().err == ""


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file but the lock (which a writable folder's holder records its pid in) by inode and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and p.name != file_locks.LOCK_NAME}


def test_a_finished_build_rerun_writes_nothing_even_on_another_machine(dataset):
    """The benchmark builds its --data (a finished build resumed): on a read-only copy of a finished
    dataset it failed, writing the manifest, card and recipe.json again: the same bytes, but for the
    card's package order once the environment was read back, or another machine's Python version."""
    from implicit_concept.json_records import json_text

    before = _files(dataset)
    assert build_dataset(load_recipe("icd-debug"), dataset, progress=False).built == 0
    assert _files(dataset) == before
    record = json.loads((dataset / "recipe.json").read_text())
    ours, record["environment"]["python"] = record["environment"]["python"], "3.0.0"  # built on another machine
    (dataset / "recipe.json").write_text(json_text(record))
    card = (dataset / "README.md").read_text()
    assert f"- python {ours}; " in card
    (dataset / "README.md").write_text(card.replace(f"- python {ours}; ", "- python 3.0.0; "))
    before = _files(dataset)
    assert build_dataset(load_recipe("icd-debug"), dataset, progress=False).built == 0
    assert _files(dataset) == before


def test_a_resealed_copy_whose_seal_cannot_be_written_is_still_used(tmp_path, monkeypatch):
    """A cached base or fine-tune copied without its times (``cp -r``) onto a read-only share: its
    bytes checked out, then rewriting its seal failed the run ("Permission denied")."""
    from benchmark.models import folder_seal

    folder = tmp_path / "model" / "diffusion"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"weights")
    record = tmp_path / "model" / "sealed.json"
    folder_seal.seal(folder, record)
    os.utime(folder / "weights.bin", ns=(1, 1))

    def read_only(path, obj):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(folder_seal, "atomic_write_json", read_only)
    folder_seal.check_seal(folder, record, "delete it")
    (folder / "weights.bin").write_bytes(b"changed")
    with pytest.raises(folder_seal.FolderChanged, match="weights.bin: changed since the folder was made"):
        folder_seal.check_seal(folder, record, "delete it")


def _unprivileged() -> list[str] | None:
    """A command prefix under which ``chmod a-w`` binds, as it does not bind root: root's files seen
    from a user namespace as owned by an unprivileged user; None where none can be made."""
    if os.getuid() != 0:
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "--user", "--map-user=1000", "--map-group=1000", "true"], capture_output=True)
    return ["unshare", "--user", "--map-user=1000", "--map-group=1000"] if probe.returncode == 0 else None


def test_every_read_only_command_works_on_a_read_only_copy_of_a_finished_dataset(dataset, tmp_path):
    """``chmod -R a-w`` of a finished dataset, handed to verify, show, export, and to build (what the
    benchmark runs on its --data): none writes a lock, cache or record beside it."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("needs a user namespace to run as a user chmod binds")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["chmod", "-R", "a-w", str(dataset)], check=True)
    before = _files(dataset)
    try:
        for args in (["verify", str(dataset), "--quiet"], ["show", str(dataset / "icd-mixed"), "--out", str(out / "sheet.png")],
                     ["export", str(dataset / "icd-qrcode"), "--out", str(out / "yolo"), "--quiet"],
                     ["build", "icd-debug", "--out", str(dataset), "--quiet"]):
            done = subprocess.run([*prefix, sys.executable, "-m", "benchmark.cli", *args], cwd=REPO, capture_output=True, text=True,
                                  env={**ENV, "HOME": str(out)})
            assert done.returncode == 0, (args, done.stderr[-2000:])
        assert _files(dataset) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(dataset)], check=True)


#: A run being written: holds ``argv[1]``'s lock (as the benchmark holds its run folder's) until killed.
WRITING = """
import sys, time
from pathlib import Path
from implicit_concept.file_locks import locked
with locked(Path(sys.argv[1]), inside=True):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_leaderboard_of_a_run_still_being_written_is_refused_naming_it_and_its_writer(tmp_path, capsys):
    """The benchmark rewrites results.json after each method: a board built meanwhile ranked the
    methods run so far as the run's results, saying nothing."""
    from tests.test_results_page import fake_run

    done, running = fake_run(tmp_path / "runs" / "done"), fake_run(tmp_path / "runs" / "running")
    writer = subprocess.Popen([sys.executable, "-c", WRITING, str(running)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "held"
        assert main(["leaderboard", str(done), str(running), "--out", str(tmp_path / "board")]) == 2
        assert capsys.readouterr().err == (f"implicit-concept leaderboard: error: {running}: a command is writing it now (pid {writer.pid} "
                                           f"holds its lock {file_locks.LOCK_NAME}); leave it out, or build the leaderboard once it has finished\n")
        assert not (tmp_path / "board" / "leaderboard.md").exists()
    finally:
        writer.kill()
        writer.wait()
    assert main(["leaderboard", str(done), str(running), "--out", str(tmp_path / "board")]) == 0  # its writer gone


#: A holder on another node of a cluster (its host name another), holding ``argv[1]``'s lock until killed.
ON_ANOTHER_HOST = """
import socket, sys, time
from pathlib import Path
from implicit_concept.file_locks import locked
socket.gethostname = lambda: "node-7"
with locked(Path(sys.argv[1]), inside=True):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_holder_on_another_host_is_named_with_its_host(tmp_path):
    """Its pid alone sent a user to ``ps`` on this machine, which finds nothing (or another process)
    and suggests a stale lock file to delete, which would let a second writer in."""
    run = tmp_path / "runs" / "debug"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", ON_ANOTHER_HOST, str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(file_locks.FolderBusyError, match=rf"^{run}: in use by another process \(pid {holder.pid} on node-7\); "):
            with file_locks.locked(run, wait=False, inside=True):
                pass
        with file_locks.read_locked(run, wait=False) as writer:
            assert writer == f"{holder.pid} on node-7"
    finally:
        holder.kill()
        holder.wait()
    with file_locks.locked(run, inside=True):  # this host's holder: its pid alone, as before
        with pytest.raises(file_locks.FolderBusyError, match=rf"\(pid {os.getpid()}\); "):
            with file_locks.locked(run, wait=False, inside=True):
                pass


def test_a_read_only_cache_leaves_matplotlib_its_own_folder_without_a_warning(tmp_path):
    """A finished cache on a read-only share: each command printed matplotlib's two lines ("mkdir -p
    failed ... created a temporary cache directory ...") for the folder set beside it."""
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("needs a user namespace to run as a user chmod binds")
    cache, home = tmp_path / "cache", tmp_path / "home"
    cache.mkdir()
    home.mkdir()
    os.chmod(cache, 0o555)
    code = "from implicit_concept.detector.yolo_env import use_cache; use_cache(__import__('sys').argv[1]); import matplotlib.font_manager"
    env = {k: v for k, v in ENV.items() if k != "MPLCONFIGDIR"}
    done = subprocess.run([*prefix, sys.executable, "-c", code, str(cache)], cwd=REPO, capture_output=True, text=True,
                          env={**env, "HOME": str(home)})
    assert (done.returncode, done.stderr) == (0, "")
    assert list(cache.iterdir()) == []


def test_a_file_that_cannot_be_written_is_named_not_its_hidden_temporary(tmp_path, monkeypatch):
    """`report` on a read-only run said `.results.html.tmp-8480: ... Permission denied`, a build on a
    read-only --out `(.manifest.parquet.tmp-8583)`: names the user never wrote, nor finds."""
    from implicit_concept import files

    def refused(path, mode):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files, "open", refused, raising=False)
    target = tmp_path / "results.html"
    with pytest.raises(PermissionError) as e:
        files.atomic_write_bytes(target, b"<html>")
    assert (e.value.filename, e.value.strerror) == (str(target), "Permission denied")


def test_a_lock_file_has_the_mode_the_umask_grants_so_a_group_sharing_the_folder_records_its_holder(tmp_path):
    """Made 0644 whatever the umask, a lock file in a group's shared data folder (umask 002) could
    not record another member's pid: their refusals named the maker's old pid, long ended."""
    folder = tmp_path / "shared"
    folder.mkdir()
    old = os.umask(0o002)
    try:
        with file_locks.locked(folder, inside=True):
            pass
    finally:
        os.umask(old)
    assert (folder / file_locks.LOCK_NAME).stat().st_mode & 0o777 == 0o664
