"""The suite's own guards (``tests/conftest.py``) catch a test that leaves the process changed: the
test after it would run under what it left, and pass or fail by the order the suite runs in."""
import os
import subprocess
import sys
from pathlib import Path

from implicit_concept.files import current_umask

REPO = Path(__file__).resolve().parents[1]

LEAKY = '''
import logging, os, signal, subprocess, sys, threading, numpy as np, torch

RELEASE = threading.Event()
LIBRARY = logging.getLogger("a.library")  # made at import, as a library's is

def test_umask():
    os.umask(0o077)

def test_environment():
    os.environ["LEFT_BEHIND"] = "1"

def test_signal_handler():
    signal.signal(signal.SIGTERM, lambda *a: None)

def test_working_folder(tmp_path):
    os.chdir(tmp_path)

def test_torch_threads():
    torch.set_num_threads(2)

def test_root_handler():
    logging.root.addHandler(logging.StreamHandler())
    logging.root.setLevel(logging.DEBUG)

def test_logger_level():
    LIBRARY.setLevel(logging.ERROR)

def test_module_search_path():
    sys.path.append("/a/lab/folder")

def test_numpy_errors():
    np.seterr(all="raise")

def test_thread():
    threading.Thread(target=RELEASE.wait, name="left-running").start()

def test_child():
    subprocess.Popen(["sleep", "600"])

def test_tidy(monkeypatch, tmp_path, caplog, capsys):
    monkeypatch.setenv("SET_FOR_A_TEST", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.DEBUG, logger="a.library")
    logging.getLogger("made.by.this.test").setLevel(logging.ERROR)
    print("captured")
    os.umask(os.umask(0o077))
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    subprocess.run(["true"], check=True)

def test_after_all_of_them():
    RELEASE.set()
    assert os.umask(os.umask(0o022)) == START_UMASK and "LEFT_BEHIND" not in os.environ
    assert logging.root.level == logging.WARNING and logging.getLogger("a.library").level == logging.NOTSET
    assert logging.root.handlers == [h for h in logging.root.handlers if type(h).__module__.startswith("_pytest")]
    assert "/a/lab/folder" not in sys.path and np.geterr()["over"] == "warn"
    assert not [l for l in open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
                if open(f"/proc/{l}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
'''


def test_a_test_leaving_the_process_changed_fails_and_the_next_one_starts_clean(tmp_path):
    umask = current_umask()
    (tmp_path / "test_leaky.py").write_text(LEAKY + f"\nSTART_UMASK = {umask}\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_leaky.py")],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 1, out[-3000:]
    for name, what in (("test_umask", f"umask: {umask} -> 63"), ("test_environment", "$LEFT_BEHIND: None -> '1'"),
                       ("test_signal_handler", "SIGTERM"), ("test_working_folder", "cwd:"), ("test_torch_threads", "threads: 1 -> 2"),
                       ("test_root_handler", "logger root: (30, []) -> (10, [<StreamHandler"),
                       ("test_logger_level", "logger a.library: (0, True, False, False) -> (40, True, False, False)"),
                       ("test_module_search_path", "sys.path:"),
                       ("test_numpy_errors", "numpy errors:"), ("test_thread", "threads: set() -> {<Thread(left-running"),
                       ("test_child", "children: set() -> {")):
        line = next((l for l in out.splitlines() if f"test_leaky.py::{name} " in l and "left" in l), "")
        assert what in line, (name, out[-3000:])
    assert "11 errors" in out and "13 passed" in out, out[-3000:]
