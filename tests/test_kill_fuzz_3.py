"""Kill fuzz, round 3: a ``--distributor ray`` build stopped by SIGTERM while it wrote its card (its
shards all built) ended with -15 and no word, where a stopped build says ``terminated`` and exits 143:
``ray.shutdown`` sets SIGTERM's C-level handler to the default while Python still names the command's
own. And a detector's test grids differed between a run and its rerun: ultralytics drew two of
them at once in threads racing on one image array. Otherwise every stop of the fuzz (SIGKILL to the
group or the driver alone, SIGTERM, Ctrl-C, one Ray worker SIGKILLed), of the other labs' scoring
commands and of ``export`` resumed to the uninterrupted run's files."""
import subprocess
import sys
import threading

import pytest

from builders.dataset_card import CHECKSUMS
from tests.process_table import left_in_session
from tests.test_stop_signals import ENV, REPO

#: A Ray build of no shards whose ``ray.shutdown`` does what Ray 2.60's does to the signals (SIGTERM's
#: C-level handler set to the default, Python's record of the handler left as it was), then a SIGTERM.
SIGTERM_AFTER_A_RAY_BUILD = """
import ctypes, os, signal, sys
from pathlib import Path
from types import SimpleNamespace
from builders.distributor import _ray
from builders.recipe import load_recipe

libc = ctypes.CDLL(None)
libc.signal.argtypes, libc.signal.restype = (ctypes.c_int, ctypes.c_void_p), ctypes.c_void_p
ray = SimpleNamespace(is_initialized=lambda: False, init=lambda **k: None, cluster_resources=lambda: {"CPU": 1},
                      shutdown=lambda: libc.signal(signal.SIGTERM, 0), remote=lambda **k: (lambda cls: cls))
sys.modules["ray"] = ray
sys.modules["ray.util"] = SimpleNamespace(ActorPool=lambda actors: SimpleNamespace(map_unordered=lambda f, g: iter(())))
signal.signal(signal.SIGTERM, lambda *a: print("the command's handler ran", flush=True))
list(_ray(load_recipe("icd-debug"), [], Path(sys.argv[1]), 1, None))
os.kill(os.getpid(), signal.SIGTERM)
"""


def test_a_sigterm_after_a_ray_session_the_build_started_reaches_the_commands_handler(tmp_path):
    done = subprocess.run([sys.executable, "-c", SIGTERM_AFTER_A_RAY_BUILD, str(tmp_path)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "the command's handler ran\n"), done.stderr[-2000:]


#: The icd-debug build on two Ray actors, SIGTERMed (the driver alone, as a scheduler does) once the
#: build's last shard is written, from inside: the moment the fuzz hit at random.
SIGTERM_ONCE_THE_SHARDS_ARE_BUILT = """
import os, signal, sys
from benchmark import cli
from builders import build

units = build.run_units

def run_units(*args, **kwargs):
    stats = units(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return stats

build.run_units = run_units
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_ray_build_sigtermed_once_its_shards_are_built_says_terminated_and_resumes(debug_dataset, tmp_path):
    out = tmp_path / "ray"
    args = ["build", "icd-debug", "--out", str(out), "--quiet", "--workers", "2", "--distributor", "ray"]
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_ONCE_THE_SHARDS_ARE_BUILT, *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]  # before the fix: -15, no line
    assert err.rstrip().endswith("implicit-concept build: terminated; rerun the same command to resume"), err[-3000:]
    assert left_in_session(proc.pid, 30) == []
    assert not (out / CHECKSUMS).exists()
    rerun = subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / CHECKSUMS).read_text() == (debug_dataset / CHECKSUMS).read_text()


def test_a_detectors_test_grids_are_drawn_one_after_the_other_in_the_evaluating_thread(tmp_path):
    """The plug-in benchmark's fuzz found an uninterrupted run's ``val_batch0_pred.jpg`` (the detector's
    test folder) with 7 of its 16 tiles black, the resumed run's whole: ultralytics drew the labels' and
    the predictions' grids in two threads, each scaling the batch's one image array in place. As the
    toolkit imports it, its validator draws a grid before the call returns, in the calling thread."""
    import torch

    from implicit_concept.detector.yolo_env import import_ultralytics

    validator = import_ultralytics("ultralytics.models.yolo.detect.val")
    import_ultralytics()  # prepared once: a second call leaves the validator's drawing as it is
    labels = {"cls": torch.zeros(0), "bboxes": torch.zeros(0, 4), "batch_idx": torch.zeros(0)}
    drawn = validator.plot_images(labels=labels, images=torch.zeros(1, 3, 32, 32), fname=tmp_path / "grid.jpg", names={0: "qrcode"})
    assert not isinstance(drawn, threading.Thread)  # before the fix: a Thread, the file not yet there
    assert (tmp_path / "grid.jpg").is_file()
