"""The toolkit used as a library in someone else's process: after ``Detector.load``, ``detect`` and
``score_images`` return, torch's thread count, the environment, the warnings filters and numpy's
print options are as the caller left them, nothing is written into the caller's current folder,
and ultralytics' own messages go to stderr (stdout is the caller's), without colour codes there.

Each runs in a fresh process: ultralytics changes the process when it is first imported."""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_detector_files import _random_detector

REPO = Path(__file__).resolve().parents[1]

LIBRARY_USER = r"""
import json, os, sys, warnings
import numpy as np
import torch

torch.set_num_threads(9)  # a count ultralytics would not choose itself (min(8, cores - 1))

def state():
    return {"threads": torch.get_num_threads(), "environ": dict(os.environ),
            "filters": [repr(f) for f in warnings.filters], "numpy": repr(np.get_printoptions())}

from PIL import Image
from implicit_concept import Detector, score_images

# After the imports: OpenCV's own import (the QR checker's) adds its folder to LD_LIBRARY_PATH.
before = state()

detector = Detector.load(sys.argv[1])
detector.detect(Image.new("RGB", (48, 40), "white"))
score_images([("a", Image.new("RGB", (64, 64), "white")), ("b", Image.new("RGB", (32, 32), "red"))], detector,
             clean=[("c", Image.new("RGB", (40, 40), "gray"))])
after = state()
print(json.dumps({"before": before, "after": after}))
"""


def _run_as_library_user(tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, Path]:
    detector = _random_detector(tmp_path / "det")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", LIBRARY_USER, str(detector)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, work


def _library_env(home: Path) -> dict:
    drop = ("MPLCONFIGDIR", "YOLO_CONFIG_DIR", "IMPLICIT_CONCEPT_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
            "OMP_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG", "NUMEXPR_MAX_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO)}


def test_scoring_as_a_library_leaves_the_process_and_the_current_folder_as_they_were(tmp_path):
    home = tmp_path / "home"
    done, work = _run_as_library_user(tmp_path, _library_env(home))
    result = json.loads(done.stdout.splitlines()[-1])
    before, after = result["before"], result["after"]
    assert after["threads"] == before["threads"] == 9
    changed = {k: v for k, v in after["environ"].items() if before["environ"].get(k) != v}
    removed = sorted(set(before["environ"]) - set(after["environ"]))
    assert changed == {} and removed == [], f"environment changed: {changed}, removed {removed}"
    assert after["filters"] == before["filters"], "warnings filters changed"
    assert after["numpy"] == before["numpy"], "numpy's print options changed"
    assert sorted(p.name for p in work.iterdir()) == [], "written into the caller's current folder"
    # Where nothing was named, ultralytics' settings and font go to the user's cache folder.
    assert (home / ".cache" / "implicit-concept" / "ultralytics" / "Ultralytics" / "Arial.ttf").is_file()


ULTRALYTICS_TALKS = r"""
from implicit_concept.detector.yolo_env import import_ultralytics
utils = import_ultralytics("ultralytics.utils")
utils.LOGGER.info(utils.colorstr("bold", "blue", "a coloured message"))
for _ in utils.TQDM(range(3), desc="a progress bar"):
    pass
print("the caller's result")
"""


def test_ultralytics_messages_and_bars_go_to_stderr_without_colour_codes(tmp_path):
    """stdout holds only what the caller printed; ultralytics' logged messages and its progress bars
    go to stderr, which is not a terminal here, so without ANSI codes. Its first-run settings notice
    (``yolo settings``, which the toolkit sets) is not shown."""
    done = subprocess.run([sys.executable, "-c", ULTRALYTICS_TALKS], cwd=tmp_path, env=_library_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "the caller's result\n"
    for said in ("a coloured message", "a progress bar"):
        assert said in done.stderr, done.stderr[-2000:]
    assert "Ultralytics Settings" not in done.stderr and "yolo settings" not in done.stderr, done.stderr[-2000:]
    assert "\x1b[" not in done.stderr


ULTRALYTICS_BAR_STEPS = r"""
import itertools, sys, types
from implicit_concept.detector.yolo_env import import_ultralytics

class Terminal:  # stderr as a terminal shows it: isatty() true
    def __init__(self, stream): self.stream = stream
    def write(self, text): return self.stream.write(text)
    def flush(self): self.stream.flush()
    def isatty(self): return True

how = sys.argv[1] if len(sys.argv) > 1 else "plain"
if how == "terminal":
    sys.stderr = Terminal(sys.stderr)
bars = import_ultralytics("ultralytics.utils.tqdm")
clock = itertools.count(0.0, 1.0)  # each reading of the clock one second later: 40 steps take 40 s
bars.time = types.SimpleNamespace(time=lambda: next(clock))
if how == "asks":  # a caller asking for its bar
    bar = bars.TQDM(total=40, desc="epoch", disable=False)
elif how == "own-interval":  # a caller's own redraw interval
    bar = bars.TQDM(total=40, desc="epoch", mininterval=0.0)
elif how == "positional":  # iterable, desc, total, leave, file, mininterval, disable: all by position
    bar = bars.TQDM(None, "epoch", 40, True, None, 0.0, False)
elif how == "terminal-file":  # a terminal handed as its file, by position
    bar = bars.TQDM(None, "epoch", 40, True, Terminal(sys.stderr))
else:
    bar = bars.TQDM(total=40, desc="epoch")  # as ultralytics' trainer steps its bar
for step in range(40):
    bar.set_description(f"epoch loss {step}")
    bar.update()
bar.close()
"""


def test_ultralytics_bars_follow_the_toolkits_rules_off_a_terminal_and_under_tqdm_disable(tmp_path):
    """A detector training's bars are ultralytics' own: off a terminal (a log) they redraw once a
    minute, as every toolkit bar does, not at each step; ``TQDM_DISABLE=1`` turns them off."""
    def redraws(*args: str, **extra: str) -> int:
        env = {k: v for k, v in _library_env(tmp_path / "home").items() if k != "TQDM_DISABLE"}
        done = subprocess.run([sys.executable, "-c", ULTRALYTICS_BAR_STEPS, *args], cwd=tmp_path, env={**env, **extra},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr.count("epoch")

    assert 1 <= redraws() <= 3  # its first and last lines: 40 simulated seconds hold no minute
    assert redraws("terminal") >= 40  # on a terminal, as it goes
    assert redraws(TQDM_DISABLE="1") == redraws("terminal", TQDM_DISABLE="1") == 0


def test_ultralytics_bars_keep_what_their_caller_says_and_tqdm_disable_wins_however_it_is_said(tmp_path):
    """A caller's own redraw interval is kept (by keyword or position) and a terminal handed as the
    bar's file is a terminal; TQDM_DISABLE turns off even a bar its caller asks for, by keyword or by
    position (given by position, disable=False showed the bar and mininterval was refused as given twice)."""
    def redraws(how: str, **extra: str) -> int:
        env = {k: v for k, v in _library_env(tmp_path / "home").items() if k != "TQDM_DISABLE"}
        done = subprocess.run([sys.executable, "-c", ULTRALYTICS_BAR_STEPS, how], cwd=tmp_path, env={**env, **extra},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "epoch" not in done.stdout  # a file=None given by position is stderr too, not ultralytics' stdout
        return done.stderr.count("epoch")

    assert redraws("own-interval") >= 40 and redraws("positional") >= 40  # off a terminal, at the caller's interval
    assert redraws("terminal-file") >= 40
    assert redraws("asks", TQDM_DISABLE="1") == redraws("positional", TQDM_DISABLE="1") == 0


def test_an_unwritable_cache_folder_is_named_with_the_option_that_moves_it(tmp_path):
    """A cache folder that cannot be made (here under a file, which even root cannot do) is named,
    with how to name another: the command's --cache, or IMPLICIT_CONCEPT_CACHE for a library user."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**_library_env(tmp_path / "home"), "IMPLICIT_CONCEPT_CACHE": str(blocker / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", "from implicit_concept.detector.yolo_env import import_ultralytics; import_ultralytics()"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0
    assert f"{blocker / 'cache'} cannot be written" in done.stderr and "--cache" in done.stderr, done.stderr[-2000:]
