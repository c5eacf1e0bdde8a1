"""README re-walk, round 5: promises README makes that a walk through it found broken."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: A command whose Ctrl-C lands in code that swallows the ``KeyboardInterrupt`` and fails on what it
#: left half done (a library's import: ``module 'numpy' has no attribute 'minimum'``, seen walking README).
SWALLOWED_STOP = """
import os, signal, sys, time
from benchmark import cli

def command(args):
    try:
        os.kill(os.getpid(), signal.{signal})
        time.sleep(30)
    except KeyboardInterrupt:
        pass
    raise {error}

cli._verify = command
sys.exit(cli.main(["verify", sys.argv[1]]))
"""


@pytest.mark.parametrize("stop, status, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
@pytest.mark.parametrize("error", ["AttributeError(\"module 'numpy' has no attribute 'minimum'\")",
                                   "OSError(5, 'Input/output error')", "ValueError('half a config')"])
def test_an_error_after_a_stop_is_the_stop(tmp_path, stop, status, said, error):
    """README: Ctrl-C stops every command with one line and exit 130 (SIGTERM 143). An error the stop
    caused after something swallowed its exception is the stop, not a traceback and exit 1 (nor a
    bad-input exit 2)."""
    script = SWALLOWED_STOP.format(signal=stop, error=error)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == status, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"implicit-concept verify: {said}; rerun the same command to resume"]
