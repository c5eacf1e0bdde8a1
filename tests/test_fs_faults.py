"""The filesystem, signals and processes against the promises: leftovers of a killed writer never
fail a good build, a full disk names the file and keeps no partial copy, locks follow the real
folder and need no writable parent, Ctrl-C and SIGTERM stop every process quietly."""
import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from builders.build import BuildError, build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe
from builders.verify import verify_dataset
from implicit_concept import files
from implicit_concept.files import LOCK_NAME, FolderBusyError, lock_path, locked, temporary_name
from manifests import RECIPES_DIR

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def dataset(debug_dataset, tmp_path):
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    return out


def _hold(path: Path, inside: bool, seconds: float = 60) -> subprocess.Popen:
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from implicit_concept.files import locked
        with locked(Path(sys.argv[1]), inside=sys.argv[2] == "1"):
            print("held", flush=True)
            time.sleep(float(sys.argv[3]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), "1" if inside else "0", str(seconds)],
                            env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# --- F1: a temporary is never data ------------------------------------------------------------------


def test_a_leftover_temporary_is_a_note_and_the_next_build_removes_it_whatever_its_pid(dataset):
    shard = dataset / "icd-qrcode" / "train"
    # pid 1 always runs: a reused pid, or a writer on another node, looks alive
    left = shard / ".00000.tar.tmp-1"
    left.write_bytes((shard / "00000.tar").read_bytes()[:5000])
    report = verify_dataset(dataset)
    assert report.ok, report.problems
    assert any(str(left) in note and "temporary" in note for note in report.notes), report.notes
    folder = temporary_name(dataset / "icd-qrcode" / "x")  # a killed atomic_dir's folder
    folder.mkdir()
    (folder / "f").write_bytes(b"partial")
    build_dataset(load_recipe("icd-debug"), dataset, progress=False)
    assert not left.exists() and not folder.exists()
    assert (dataset / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-debug.sha256").read_text()


# --- F4, F5: locks follow the real folder, inside it -------------------------------------------------


def test_a_folder_reached_through_a_symlink_takes_the_same_lock(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert lock_path(link, inside=True) == lock_path(real, inside=True) == real.resolve() / LOCK_NAME
    entry = tmp_path / "cache-link" / "entry"
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache-link").symlink_to(tmp_path / "cache")
    assert lock_path(entry) == lock_path(tmp_path / "cache" / "entry")
    holder = _hold(real, inside=True)
    try:
        with pytest.raises(FolderBusyError, match=f"pid {holder.pid}"):
            with locked(link, wait=False, inside=True):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_build_locks_inside_its_folder_and_leaves_nothing_beside_it(dataset):
    before = sorted(p.name for p in dataset.parent.iterdir())
    build_dataset(load_recipe("icd-debug"), dataset, progress=False)
    assert sorted(p.name for p in dataset.parent.iterdir()) == before  # no .icd-debug.lock in the user's folder
    assert (dataset / LOCK_NAME).is_file()
    assert verify_dataset(dataset).ok  # and the lock inside is not data


def test_a_lock_that_cannot_be_written_reads_unlocked(tmp_path, monkeypatch):
    """A read-only cache: the lock file cannot be made, so the block runs (it can only read)."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    entry = tmp_path / "cache" / "entry"
    entry.mkdir(parents=True)
    monkeypatch.setattr(os, "open", read_only)
    ran = []
    with locked(entry):
        ran.append(1)
    assert ran == [1]


def test_a_lock_file_this_process_can_only_read_still_waits_for_its_holder(tmp_path, monkeypatch):
    entry = tmp_path / "cache" / "entry"
    entry.parent.mkdir()
    holder = _hold(entry, inside=False, seconds=1.5)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    start = time.monotonic()
    with locked(entry):
        assert time.monotonic() - start > 1.0
    holder.wait()


# --- F10: verify during a build ----------------------------------------------------------------------


def test_verify_during_a_build_says_so_in_one_line(dataset):
    holder = _hold(dataset, inside=True)
    try:
        report = verify_dataset(dataset)
    finally:
        holder.kill()
        holder.wait()
    assert report.problems == [f"{dataset}: a build is writing it now (pid {holder.pid} holds its lock {LOCK_NAME}); "
                               f"verify it once the build has finished"]
    assert verify_dataset(dataset).ok
