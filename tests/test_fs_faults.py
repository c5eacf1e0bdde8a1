"""The filesystem, signals and processes against the promises: leftovers of a killed writer never
fail a good build, a full disk names the file and keeps no partial copy, locks follow the real
folder and need no writable parent, Ctrl-C and SIGTERM stop every process quietly."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from builders.build import BuildError, build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe
from builders.verify import verify_dataset
from implicit_concept import disk_space, files
from implicit_concept.file_locks import LOCK_NAME, FolderBusyError, lock_path, locked
from implicit_concept.files import atomic_write_bytes, temporary_name
from implicit_concept.shard_writer import TarShardWriter
from manifests import RECIPES_DIR
from tests.child_output import read_line
from tests.process_table import alive_in_group, left_in_group

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def dataset(debug_dataset, tmp_path):
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    return out


def _hold(path: Path, inside: bool, seconds: float = 60, done: Path | None = None) -> subprocess.Popen:
    """Another process holding ``path``'s lock for ``seconds``; it makes the file ``done`` (if any)
    last, while it still holds the lock."""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from implicit_concept.file_locks import locked
        with locked(Path(sys.argv[1]), inside=sys.argv[2] == "1"):
            print("held", flush=True)
            time.sleep(float(sys.argv[3]))
            if sys.argv[4]:
                Path(sys.argv[4]).touch()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), "1" if inside else "0", str(seconds), str(done or "")],
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
    done = tmp_path / "holder-done"
    holder = _hold(entry, inside=False, seconds=1.5, done=done)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with locked(entry):  # what the holder did last, not a time: this process may stall past the holder's sleep
        assert done.exists(), "the block ran while the holder still held the lock"
    holder.wait()


# --- F6: a full disk names the file, keeps no partial copy -------------------------------------------


def test_a_full_disk_while_writing_a_shard_names_it_and_leaves_no_temporary(tmp_path, monkeypatch):
    calls = []
    real_addfile = tarfile.TarFile.addfile

    def full(self, info, fileobj=None):
        calls.append(info.name)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_addfile(self, info, fileobj)

    def also_full(self):  # the end-of-archive blocks fail on the full disk too
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", full)
    monkeypatch.setattr(tarfile.TarFile, "close", also_full)
    out = tmp_path / "d"
    with pytest.raises(BuildError) as e:
        build_dataset(load_recipe("icd-debug"), out, progress=False)
    message = str(e.value)
    assert "the disk is full" in message and ".tar" in message and "choose another" not in message, message
    assert "rerun the same command to resume" in message
    assert not [p for p in out.rglob("*") if files.TEMPORARY_MARK in p.name]


def test_abort_removes_the_temporary_even_when_closing_fails(tmp_path, monkeypatch):
    writer = TarShardWriter(tmp_path / "00000.tar")
    writer.write("k", {"txt": b"x" * 1000})

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "close", full)
    writer.abort()
    assert not writer.tmp.exists()


def test_an_atomic_write_that_fails_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "manifest.parquet"
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"x" * 100)
    assert e.value.filename == str(target) and e.value.errno == errno.EFBIG
    assert disk_space.out_of_space(e.value) == "the file size limit was hit (ulimit -f)"
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_in_a_real_build_names_the_file(tmp_path):
    import resource

    out = tmp_path / "fb"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    done = subprocess.run([sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--out", str(out), "--quiet",
                           "--workers", "2"], cwd=REPO, env=ENV, capture_output=True, text=True, preexec_fn=limit, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "the file size limit was hit" in done.stderr and str(out) in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not [p for p in out.rglob("*") if files.TEMPORARY_MARK in p.name]


# --- F8, F9: --out spellings -------------------------------------------------------------------------


def test_out_dot_builds_into_the_current_folder(dataset, monkeypatch, capsys):
    from benchmark.cli import main

    monkeypatch.chdir(dataset)
    for spelling in (".", "./"):
        assert main(["build", "icd-debug", "--out", spelling, "--quiet"]) == 0, capsys.readouterr().err
    assert "12 already complete" in capsys.readouterr().out


def test_an_out_name_that_is_not_utf8_is_refused_before_any_work(tmp_path, capsys):
    from benchmark.cli import main

    out = tmp_path / os.fsdecode(b"bad\xffname")
    assert main(["build", "icd-debug", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad\\xffname: the folder's name is not valid UTF-8" in err, err
    assert not os.path.lexists(out)
    out.mkdir()
    report = verify_dataset(out)
    assert len(report.problems) == 1 and "bad\\xffname: the folder's name is not valid UTF-8" in report.problems[0], report.problems


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


# --- F11: a file where a folder goes -----------------------------------------------------------------


def test_a_file_where_a_folder_goes_is_named_as_such(tmp_path, monkeypatch, capsys):
    from benchmark import cli

    taken = tmp_path / "images" / "sd"
    taken.parent.mkdir()
    taken.write_text("not a folder")
    monkeypatch.setattr(cli, "_verify", lambda args: (taken / "x").parent.mkdir(parents=True, exist_ok=True))
    assert cli.main(["verify", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (f"implicit-concept verify: error: {taken}: is a file, where a folder is expected; "
                                               f"move it away or choose another path")
    monkeypatch.setattr(cli, "_verify", lambda args: (taken / "below").mkdir(parents=True, exist_ok=True))
    assert cli.main(["verify", str(tmp_path)]) == 1
    assert f"{taken / 'below'}: cannot be made below {taken}, which is a file" in capsys.readouterr().err


# --- F2, F3: interrupts ------------------------------------------------------------------------------


def test_an_interrupt_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    from benchmark import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_verify", interrupted)
    assert cli.main(["verify", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "implicit-concept verify: interrupted; rerun the same command to resume\n"


def test_sigterm_is_one_line_and_exit_143(tmp_path, monkeypatch, capsys):
    """SIGTERM (a scheduler, ``timeout``) exits as a process killed by it would, 128 + 15, and says so; Ctrl-C is 130."""
    from benchmark import cli
    from implicit_concept.worker_processes import Interrupted

    def terminated(args):
        raise Interrupted("SIGTERM")

    monkeypatch.setattr(cli, "_verify", terminated)
    assert cli.main(["verify", str(tmp_path)]) == 143
    assert capsys.readouterr().err == "implicit-concept verify: terminated; rerun the same command to resume\n"


def test_a_hangup_is_one_line_that_names_nohup_and_exit_129(tmp_path, monkeypatch, capsys):
    """A closed terminal's SIGHUP exits as a process killed by it would, 128 + 1, saying what stopped it
    and how a command outlives its terminal: a run left overnight has a log, and only that line in it."""
    from benchmark import cli
    from implicit_concept.worker_processes import Interrupted

    def hung_up(args):
        raise Interrupted("SIGHUP")

    monkeypatch.setattr(cli, "_verify", hung_up)
    assert cli.main(["verify", str(tmp_path)]) == 129
    assert capsys.readouterr().err == ("implicit-concept verify: hung up; rerun the same command to resume "
                                       "(nohup keeps a command running when its terminal closes)\n")

def test_ctrl_c_during_a_parallel_build_prints_one_line_from_one_process(tmp_path):
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--out", str(out), "--workers", "2"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.rglob(".*.tar.tmp-*")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.rstrip().endswith("implicit-concept build: interrupted; rerun the same command to resume"), err[-3000:]
    assert alive_in_group(proc.pid) == []


POOL = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from implicit_concept.worker_processes import interrupts, start_worker, stopping_workers

def pid_then_sleep(i):
    os.write(1, f"{os.getpid()}\\n".encode())  # one write: two workers' lines never interleave
    time.sleep(120)

if __name__ == "__main__":
    try:
        with interrupts():
            with stopping_workers(ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker)) as pool:
                list(pool.map(pid_then_sleep, range(2)))
    except KeyboardInterrupt:
        sys.exit(143)
"""


def _spawned_workers(pgid: int, count: int, seconds: float = 30) -> list[int]:
    """The spawned pool workers of group ``pgid``, once ``count`` of them have started (a worker is
    forked, then execs its interpreter: until then its command line is its parent's)."""
    deadline = time.monotonic() + seconds
    while True:
        found = []
        for pid in alive_in_group(pgid):
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_do_not_outlive_their_parent(tmp_path, sig):
    """SIGTERM to the parent alone (a scheduler, ``timeout``): it stops its pool; SIGKILL (nothing
    runs in it): each worker sees its parent gone and ends."""
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    proc = subprocess.Popen([sys.executable, str(script)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    workers = [int(proc.stdout.readline()) for _ in range(2)]
    os.kill(proc.pid, sig)  # the main process only
    proc.wait(timeout=30)
    left = left_in_group(proc.pid, 60)  # each worker looks at its parent once a second
    assert left == [], f"workers {workers}: still running {left}"
    assert "Traceback" not in proc.stderr.read()


SPAWNED = """
import os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from implicit_concept.worker_processes import interrupts, start_worker, stopping_workers, workers_starting

if __name__ == "__mp_main__":
    time.sleep(float(os.environ["IMPORT_S"]))  # a spawned worker's imports, before its initializer runs

def done(i):  # and whether Ctrl-C is still held back in the worker (what it starts would inherit that)
    return i, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, ())

if __name__ == "__main__":
    try:
        with interrupts():
            with stopping_workers(ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker)) as pool:
                with workers_starting():
                    results = pool.map(done, range(2))
                os.write(1, b"started\\n")
                print(sorted(results), flush=True)
    except KeyboardInterrupt:
        sys.exit(130)
"""


def test_a_ctrl_c_that_reaches_spawned_workers_while_they_import_neither_kills_them_nor_prints(tmp_path):
    """The terminal's Ctrl-C reaches every process of the group; a spawned worker still importing
    (seconds, for torch) holds it until start_worker ignores it. Here it reaches the workers alone
    (a parent slow to stop them): they live on, quietly, and finish their tasks with Ctrl-C no longer held."""
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED)
    proc = subprocess.Popen([sys.executable, str(script)], env={**ENV, "IMPORT_S": "2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert read_line(proc) == "started\n"
    workers = _spawned_workers(proc.pid, 2)  # in their imports (2 s)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert (proc.returncode, out) == (0, "[(0, False), (1, False)]\n")


ORPHANED = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from implicit_concept.worker_processes import start_worker, workers_starting

if __name__ == "__mp_main__":
    time.sleep(float(os.environ["IMPORT_S"]))  # a spawned worker's imports, before its initializer runs

def sleep(i):
    time.sleep(120)

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker)
    with workers_starting():
        pool.submit(sleep, 0)
        pool.submit(sleep, 1)
    os.write(1, b"started\\n")
    time.sleep(120)
"""


def test_workers_whose_parent_is_killed_while_they_import_end_too(tmp_path):
    """A benchmark --jobs 2 killed (SIGKILL to the main process) seconds after starting its pool: its
    spawned workers, still importing torch, reached start_worker after the parent was gone, took
    init (their parent by then) for the parent to watch, and idled on forever, a gigabyte each. The
    parent watched is the one that made the worker, as multiprocessing recorded it."""
    script = tmp_path / "orphaned.py"
    script.write_text(ORPHANED)
    proc = subprocess.Popen([sys.executable, str(script)], env={**ENV, "IMPORT_S": "3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline() == "started\n"
    workers = _spawned_workers(proc.pid, 2)
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, while its workers import
    proc.wait(timeout=30)
    assert len(workers) == 2
    left = left_in_group(proc.pid, 30)  # 3 s of imports, then a look at the parent each second
    assert left == [], f"workers {workers}: still running {left} after their parent was killed"


OWN_HANDLER = """
import os, signal, sys, time
from benchmark import cli
from implicit_concept.worker_processes import keeping_signal_handlers

def library_init():  # what ray.init does: its own SIGTERM handler, then seconds of starting a cluster
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    if sys.argv[1] == "during":
        os.write(1, b"ready\\n")
        time.sleep(60)

def command(args):
    with keeping_signal_handlers():
        library_init()
    os.write(1, b"ready\\n")
    try:
        time.sleep(60)
    except KeyboardInterrupt:  # a library's own in place of the one raised (Ray's get does this)
        raise KeyboardInterrupt from None

cli._verify = command
sys.exit(cli.main(["verify", "."]))
"""


@pytest.mark.parametrize("moment", ["during", "after"])
def test_sigterm_stops_a_command_whose_library_installed_its_own_handler(tmp_path, moment):
    """``build --distributor ray`` sent SIGTERM (a scheduler): ray.init had put its own handler in
    place, so the command ended with status 1 after a C++ stack dump, no word of resuming; and Ray's
    ``get`` raised a plain KeyboardInterrupt where the SIGTERM was, read as a Ctrl-C (130)."""
    proc = subprocess.Popen([sys.executable, "-c", OWN_HANDLER, moment], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline() == "ready\n"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (143, "implicit-concept verify: terminated; rerun the same command to resume\n")


def test_a_librarys_own_exit_is_not_taken_for_a_signal():
    """sys.exit(2) (argparse's status) or sys.exit(15) from a library that replaced no handler is its own."""
    from implicit_concept.worker_processes import keeping_signal_handlers

    for code in (2, 15):
        with pytest.raises(SystemExit) as e, keeping_signal_handlers():
            sys.exit(code)
        assert type(e.value) is SystemExit and e.value.code == code


@pytest.mark.slow
def test_sigterm_to_a_ray_build_stops_it_quietly_and_the_rerun_gives_the_same_bytes(debug_dataset, tmp_path):
    out = tmp_path / "ray"
    cmd = [sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--out", str(out), "--workers", "2", "--distributor", "ray"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.rglob(".*.tar.tmp-*")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)  # the main process only, as a scheduler does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM received" not in err and "Traceback" not in err, err[-3000:]
    assert err.rstrip().endswith("implicit-concept build: terminated; rerun the same command to resume"), err[-3000:]
    assert left_in_group(proc.pid, 30) == []
    assert subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True).returncode == 0
    assert (out / CHECKSUMS).read_text() == (debug_dataset / CHECKSUMS).read_text()


# --- F7: the toolkit's own I/O errors are not the method's -------------------------------------------


def test_a_full_disk_in_the_toolkits_finetune_is_not_blamed_on_the_method(monkeypatch, tmp_path):
    from benchmark import method_evaluation, stages
    from benchmark.failures import MethodFailed, ToolkitIOError
    from tests.real_runs import real_run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "models" / "x"))

    monkeypatch.setattr(stages, "finetune", full)
    run = real_run(tmp_path, track={"seed": 0, "esd": {}, "fmn": {}, "geom_erasing": {}, "finetune": {}})
    ctx = method_evaluation.method_context(run, tmp_path, tmp_path / "icd-qrcode", ("qrcode",), detector=None)
    evaluation = method_evaluation.Evaluation("icd-qrcode", [], method_evaluation.GenerationSettings(), None, [])

    class UsesFinetune:
        name = "uses-finetune"

        def build(self, ctx):
            return ctx.finetune(None)

    class OwnError:
        name = "own-error"

        def build(self, ctx):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ToolkitIOError) as e:
        method_evaluation._draw(run, UsesFinetune(), ctx, evaluation, "")
    assert e.value.filename == str(tmp_path / "models" / "x") and isinstance(e.value, OSError)
    with pytest.raises(MethodFailed):  # the method's own code: still the method's failure
        method_evaluation._draw(run, OwnError(), ctx, evaluation, "")


def test_saving_a_pipeline_on_a_full_disk_raises_an_oserror_naming_the_folder(tmp_path):
    from safetensors import SafetensorError

    from benchmark.models.pipelines import save_portable_pipeline

    class FullDisk:
        def save_pretrained(self, directory):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError) as e:
        save_portable_pipeline(FullDisk(), tmp_path / "pipeline")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "pipeline")


def test_a_full_disk_saving_an_edited_sd_is_the_toolkits_error(tmp_path, monkeypatch):
    """ESD and FMN edit ``sd`` through ctx.edited_sd: the edit is the method's, the saving the toolkit's."""
    from benchmark.failures import ToolkitIOError
    from benchmark.methods import interface
    from benchmark.methods.interface import MethodContext

    def full(pipe, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "unet"))

    monkeypatch.setattr(interface, "save_portable_pipeline", full)
    ctx = MethodContext(concepts=("qrcode",), work_dir=tmp_path, seed=0, finetune=lambda ft: tmp_path / "sd",
                        load_pipeline=lambda path: object(), train_shards=tmp_path)
    with pytest.raises(ToolkitIOError, match="No space left on device"):
        ctx.edited_sd("esd", {"a": 1}, lambda pipe: None)

    def own_error(pipe):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:  # the method's own edit: not marked as the toolkit's
        ctx.edited_sd("esd", {"a": 2}, own_error)
    assert not isinstance(e.value, ToolkitIOError)
