"""The suite's own guards (``tests/conftest.py``) catch a test that leaves the process changed: the
test after it would run under what it left, and pass or fail by the order the suite runs in."""
import os
import subprocess
import sys
from pathlib import Path

from implicit_concept.files import current_umask

REPO = Path(__file__).resolve().parents[1]

LEAKY = '''
import os, signal, torch

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

def test_tidy(monkeypatch, tmp_path):
    monkeypatch.setenv("SET_FOR_A_TEST", "1")
    monkeypatch.chdir(tmp_path)
    os.umask(os.umask(0o077))

def test_after_all_of_them():
    assert os.umask(os.umask(0o022)) == START_UMASK and "LEFT_BEHIND" not in os.environ
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
                       ("test_signal_handler", "SIGTERM"), ("test_working_folder", "cwd:"), ("test_torch_threads", "threads: 1 -> 2")):
        line = next((l for l in out.splitlines() if f"test_leaky.py::{name} " in l and "left" in l), "")
        assert what in line, (name, out[-3000:])
    assert "5 errors" in out and "7 passed" in out, out[-3000:]
