"""A non-editable ``pip install .`` carries everything a user needs: the recipes, tracks, prompts and
detector scales are package data, and ``implicit-concept build icd-debug`` works from any folder."""
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_a_plain_install_builds_the_shipped_recipe(tmp_path):
    # A copy without build leftovers, so only what setup.cfg declares can reach the wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "data", "runs", ".cache", "*.egg-info", "__pycache__", ".pytest_cache",
    ))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # The heavy dependencies come from the test environment (a path entry does not run its
    # editable-install hooks); the project itself is installed from a built wheel, not linked.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
        check=True, cwd=tmp_path,
    )
    installed = subprocess.check_output(
        [python, "-c", "import builders.recipe, manifests; print(builders.recipe.__file__); print(manifests.RECIPES_DIR)"],
        text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""},
    ).split()
    assert all(p.startswith(str(site)) for p in installed), installed

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(
        [env_dir / "bin" / "implicit-concept", "build", "icd-debug", "--out", "built", "--quiet"],
        check=True, cwd=elsewhere, env={**os.environ, "PYTHONPATH": ""},
    )
    built = (elsewhere / "built" / "checksums.sha256").read_text()
    assert built == (REPO / "manifests" / "icd-debug.sha256").read_text()
