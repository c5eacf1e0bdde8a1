"""The distributed paths as a lab walks them: a Ray build's errors said as a local build says them, and a
launch of several processes refusing what it would drop.

- A Ray worker that raises (a shard it cannot write) reached the command as Ray's ``RayTaskError``,
  whose text is the remote traceback: one "line" of escaped newlines and colour codes, the file's
  name lost from it. It is now the worker's own exception, as from a local worker
  (``test_a_ray_workers_error_is_its_own_one_line_naming_the_file``, real Ray, slow;
  ``test_what_a_ray_worker_raised_reaches_the_caller_as_itself``, Ray's own exception classes).
- A builder actor that dies (killed, out of memory, its node lost) is one line saying so and how to resume
  (``test_a_ray_builder_actor_that_died_is_one_line``).
- A cluster of token authentication (``ray start``'s default) refuses a build that does not set
  ``RAY_AUTH_MODE=token``; Ray says only that it found no cluster: the error now names the variable
  (``test_joining_a_cluster_that_refuses_the_build_names_ray_auth_mode``).
- A node with other package versions than the command wrote shards of its own versions' bytes under
  a recipe.json crediting the command's: it is now refused at its first build, one line naming each
  package (``test_a_ray_node_with_other_package_versions_than_the_command_is_refused``).
- ``--workers`` above a Ray cluster's CPUs made actors that never started, and the build hung at its
  last shards; actors are now at most the cluster's CPUs
  (``test_ray_actors_are_no_more_than_the_clusters_cpus``;
  ``test_more_ray_workers_than_cpus_in_the_callers_session_builds_the_same_bytes``, real Ray, slow).
- ``--jobs 2`` under a launch of several processes was dropped silently (the launch's branch of the
  protocol won) while every row recorded ``jobs: 2``: refused before any stage
  (``test_jobs_under_a_launch_of_several_processes_is_refused``).
- What making a builder raises in an actor (a source its node cannot see) was folded by Ray into an
  ``ActorDiedError``'s text; the builder is now made at the actor's first build, so that error is the
  worker's own too (``test_a_ray_builder_is_made_at_its_first_build``).
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from builders.distributor import RayNodeVersions, RayWorkerLost, _ray, _RayBuilder, restored_after_ray
from builders.recipe import load_recipe
from implicit_concept.provenance import package_versions

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def ray_exceptions():
    """Ray's own exception classes (importing ray sets its excepthook and environment: put back after)."""
    with restored_after_ray():
        yield pytest.importorskip("ray.exceptions")


def _ray_raising(monkeypatch, error):
    """A Ray whose session is the caller's and whose actor pool raises ``error`` as results are taken."""
    def map_unordered(f, groups):
        raise error
        yield

    ray = SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 1}, remote=lambda **k: (lambda cls: SimpleNamespace(remote=lambda *args: None)))
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=lambda actors: SimpleNamespace(map_unordered=map_unordered)))


def _some_units():
    from builders.shard_builder import ShardBuilder

    return ShardBuilder(load_recipe("icd-debug")).plan()[:1]


def test_what_a_ray_worker_raised_reaches_the_caller_as_itself(tmp_path, monkeypatch, ray_exceptions):
    cause = IsADirectoryError(21, "Is a directory", str(tmp_path / "icd-qrcode" / "train" / "00000.tar"))
    wrapped = ray_exceptions.RayTaskError("_RayBuilder.build", "Traceback (most recent call last):\n  ...\n", cause).as_instanceof_cause()
    _ray_raising(monkeypatch, wrapped)
    with pytest.raises(IsADirectoryError) as raised:
        list(_ray(load_recipe("icd-debug"), _some_units(), tmp_path, 1, None))
    assert raised.value is cause
    assert not isinstance(raised.value, ray_exceptions.RayError)
    assert raised.value.filename == cause.filename and "Traceback" not in str(raised.value)


def test_a_ray_builder_actor_that_died_is_one_line(tmp_path, monkeypatch, ray_exceptions):
    """Measured with real Ray too: a kill -9 of a builder actor mid-build, exit 2 and this line."""
    memory = ray_exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.\nMemory on the node ...")
    for lost, words in ((ray_exceptions.ActorDiedError(), "died unexpectedly"), (memory, "OutOfMemoryError: Task was killed")):
        _ray_raising(monkeypatch, lost)
        with pytest.raises(RayWorkerLost) as raised:
            list(_ray(load_recipe("icd-debug"), _some_units(), tmp_path, 1, None))
        said = str(raised.value)
        assert len(said.splitlines()) == 1 and words in said and "rerun the same command to resume" in said, said


def test_other_errors_of_a_ray_build_are_left_as_they_are(tmp_path, monkeypatch, ray_exceptions):
    error = RuntimeError("a bug")
    _ray_raising(monkeypatch, error)
    with pytest.raises(RuntimeError) as raised:
        list(_ray(load_recipe("icd-debug"), _some_units(), tmp_path, 1, None))
    assert raised.value is error


def test_a_ray_builder_is_made_at_its_first_build(tmp_path, monkeypatch):
    """An error of making the builder is raised by ``build`` (Ray unwraps it), not by ``__init__`` (Ray folds it into text)."""
    from builders import distributor

    monkeypatch.setattr(distributor, "_worker", None)

    def refuse(recipe, builder=None):
        raise FileNotFoundError(2, "No such file or directory", "/data/laion/00000.tar")

    monkeypatch.setattr(distributor, "_init_worker", refuse)
    actor = _RayBuilder(load_recipe("icd-debug"), package_versions())  # makes nothing yet
    with pytest.raises(FileNotFoundError, match="/data/laion/00000.tar"):
        actor.build(tuple(_some_units()), tmp_path)


def test_a_ray_node_with_other_package_versions_than_the_command_is_refused(tmp_path, monkeypatch):
    """A node with another Pillow wrote its shards with its own JPEG encoder, while recipe.json and
    the card credited the command's versions: one dataset of two, which a local resume refuses."""
    from builders import distributor

    monkeypatch.setattr(distributor, "_worker", None)
    command = {**package_versions(), "pillow": "9.0.0"}
    actor = _RayBuilder(load_recipe("icd-debug"), command)
    with pytest.raises(RayNodeVersions) as raised:
        actor.build(tuple(_some_units()), tmp_path)
    said = str(raised.value)
    assert len(said.splitlines()) == 1 and "pillow 9.0.0 then" in said and "pip install pillow==9.0.0" in said, said
    assert distributor._worker is None and list(tmp_path.iterdir()) == [], "nothing was built"
    from builders.shard_builder import shard_dir

    units = tuple(_some_units())
    shard_dir(tmp_path, units[0]).mkdir(parents=True)
    stats = _RayBuilder(load_recipe("icd-debug"), package_versions()).build(units, tmp_path)  # the command's versions: built
    assert len(stats) == 1 and stats[0]["successes"] > 0


@pytest.mark.slow
def test_a_ray_workers_error_is_its_own_one_line_naming_the_file(debug_dataset, tmp_path):
    """A shard's place taken by a folder: the Ray build fails as the local one does, one line naming the file."""
    said = {}
    for distributor in ("multiprocessing", "ray"):
        out = tmp_path / distributor
        shutil.copytree(debug_dataset, out)
        for subset in ("icd-qrcode", "icd-text"):  # two source shards' units, so that two workers run
            for path in (out / subset / "train").glob("00000*"):
                path.unlink()
            (out / subset / "train" / "00000.tar").mkdir()
        cmd = [sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--out", str(out), "--workers", "2",
               "--distributor", distributor, "--quiet"]
        done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        errors = [line for line in done.stderr.splitlines() if line.startswith("implicit-concept build: error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "\\n" not in errors[0] and "\\x1b" not in errors[0], done.stderr[-3000:]
        assert "Is a directory" in errors[0] and f"{out}/icd-" in errors[0], errors[0]
        said[distributor] = errors[0].replace(str(out), "OUT")
    assert said["ray"].split(".tar.tmp-")[0] == said["multiprocessing"].split(".tar.tmp-")[0]


def test_joining_a_cluster_that_refuses_the_build_names_ray_auth_mode(tmp_path, monkeypatch, capsys):
    """`ray start --head` turns token authentication on; a build without RAY_AUTH_MODE=token was told
    there was no cluster at the address (Ray's own words, after 30 s of its retries), nothing else."""
    from benchmark.cli import main

    def init(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: False, init=init))
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=None))
    assert main(["build", "icd-debug", "--out", str(tmp_path / "out"), "--distributor", "ray", "--ray-address", "auto", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "RAY_AUTH_MODE=token" in err, err


def test_jobs_under_a_launch_of_several_processes_is_refused(tmp_path, monkeypatch):
    """Under ``accelerate launch --num_processes 2`` (or torchrun) the protocol's launch branch won and
    ``--jobs 2`` was dropped without a word, while every row recorded ``jobs: 2`` beside its timings."""
    from tests.real_runs import real_run

    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    real_run(tmp_path / "runs" / "alone", jobs=2, data_root=tmp_path / "data").check_start()  # one process: --jobs is what runs side by side
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"^--jobs 2: this command is one of the 2 processes of a launch") as raised:
        real_run(tmp_path / "runs" / "launched", jobs=2, data_root=tmp_path / "data").check_start()
    assert len(str(raised.value).splitlines()) == 1


def test_ray_actors_are_no_more_than_the_clusters_cpus(tmp_path, monkeypatch):
    """Each actor takes a CPU: ``--workers 4`` on a 2-CPU cluster made 2 actors that never started, and
    the source shards handed to them waited for ever (measured: 8 of icd-debug's 12 shards, then a hang)."""
    made = []

    def pool(actors):
        made.append(len(actors))
        return SimpleNamespace(map_unordered=lambda f, groups: iter(()))

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"CPU": 2.0},
                                                            remote=lambda **k: (lambda cls: SimpleNamespace(remote=lambda *a: None))))
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=pool))
    from builders.shard_builder import ShardBuilder

    units = ShardBuilder(load_recipe("icd-debug")).plan()  # 3 source shards
    for workers in (4, 0, 1):
        list(_ray(load_recipe("icd-debug"), units, tmp_path, workers, None))
    assert made == [2, 2, 1]  # of 3 groups
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {},
                                                            remote=lambda **k: (lambda cls: cls)))
    with pytest.raises(ValueError, match="no CPU"):
        list(_ray(load_recipe("icd-debug"), units, tmp_path, 1, None))


@pytest.mark.slow
def test_more_ray_workers_than_cpus_in_the_callers_session_builds_the_same_bytes(debug_dataset, tmp_path):
    """A lab's own 1-CPU Ray session, joined with workers=2: built (it hung), same bytes as one process."""
    script = (
        "import sys, ray\n"
        "from pathlib import Path\n"
        "from builders.build import build_dataset\n"
        "from builders.recipe import load_recipe\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "build_dataset(load_recipe('icd-debug'), Path(sys.argv[1]), workers=2, progress=False, distributor='ray')\n"
        "assert ray.is_initialized(), 'the session of the caller is left running'\n"
        "ray.shutdown()\n"
    )
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=REPO, env=ENV, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session's Ray processes too
        proc.communicate()
        pytest.fail("the build hung")
    assert proc.returncode == 0, err[-3000:]
    assert (out / "checksums.sha256").read_text() == (debug_dataset / "checksums.sha256").read_text()
