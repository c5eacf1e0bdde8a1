"""The test suite writes only into temporary folders: what it starts (torchrun, Ray) puts its
temporaries and home-folder files into the scratch folder the conftest removes at the end."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from builders.distributor import restored_after_ray
from implicit_concept.worker_processes import keeping_signal_handlers

SYSTEM_TEMP = Path("/tmp")


def _scratch() -> Path:
    scratch = Path(os.environ.get("TMPDIR", SYSTEM_TEMP))
    assert scratch != SYSTEM_TEMP and Path(tempfile.gettempdir()) == scratch, "the tests' temporary folder is the system's"
    assert Path.home().parent == scratch, "the tests' home folder is the real one"
    return scratch


def test_torchrun_writes_its_temporaries_into_the_scratch_folder():
    scratch = _scratch()
    before = set(scratch.glob("torchelastic_*"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "--no-python", "true"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(scratch.glob("torchelastic_*")) - before, "torchrun's log folder went elsewhere"


@pytest.mark.slow
def test_ray_writes_its_session_and_token_into_the_scratch_folder():
    scratch = _scratch()
    with restored_after_ray():  # import ray sets RAY_CLIENT_MODE and its excepthook: put back too
        ray = pytest.importorskip("ray")
        with keeping_signal_handlers():
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
        finally:
            ray.shutdown()
    assert scratch in session.parents, session
