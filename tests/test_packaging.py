"""A non-editable ``pip install .`` carries everything a user needs, and the sdist everything a
source install and the tests need.

Every file the code opens by a package-relative path (``Path(__file__)...``,
``importlib.resources.files(...)``) is found in the source, not listed by hand, and must be in the
wheel; the shipped tracks and their prompts load from an installed copy outside the repository; the
sdist holds every file the repository tracks. The slow test installs the wheel into a fresh
environment and builds the shipped recipe from another folder."""
import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The distribution's top-level packages (setup.cfg's ``packages.find`` include).
PACKAGES = ("implicit_concept", "builders", "benchmark", "manifests")
#: Build leftovers and local state: never part of a distribution.
LEFTOVERS = (".git", ".venv", "build", "dist", "data", "runs", ".cache", "*.egg-info", "__pycache__", ".pytest_cache")


def _clean_copy(tmp: Path) -> Path:
    """A copy without build leftovers, so only what setup.cfg and MANIFEST.in declare can reach a distribution."""
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*LEFTOVERS))
    return source


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    return _clean_copy(tmp_path_factory.mktemp("packaging"))


@pytest.fixture(scope="module")
def wheel(source_copy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source_copy)],
        cwd=out, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return built


def _anchor_path(node: ast.AST, source: Path) -> Path | None:
    """The path an anchor of a package-relative path stands for: ``Path(__file__)`` is the module's
    own file, ``files("pkg")`` / ``importlib.resources.files("pkg")`` the package's folder."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Name) and func.id == "Path" and len(node.args) == 1 and isinstance(node.args[0], ast.Name) \
            and node.args[0].id == "__file__":
        return source
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name == "files" and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return REPO.joinpath(*node.args[0].value.split("."))
    return None


def package_relative_paths() -> list[tuple[str, Path]]:
    """Every package-relative path in the packages' code, each with where it is written: the anchor
    and the chain of ``.parent``, ``.resolve()``, ``.with_name(...)``, ``/ "name"``, ``.parents[i]`` after it."""
    found = []
    for py in sorted(p for top in PACKAGES for p in (REPO / top).rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"), str(py))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in list(ast.walk(tree)):
            anchor = _anchor_path(node, py)
            if anchor is None:
                continue
            expr = node
            while True:
                up = parents.get(expr)
                if (isinstance(up, ast.Attribute) and up.value is expr) or (isinstance(up, ast.Call) and up.func is expr) \
                        or (isinstance(up, ast.Subscript) and up.value is expr) \
                        or (isinstance(up, ast.BinOp) and isinstance(up.op, ast.Div) and up.left is expr):
                    expr = up
                else:
                    break
            where = f"{py.relative_to(REPO)}:{node.lineno}"
            text = ast.unparse(expr).replace(ast.unparse(node), "ANCHOR", 1)
            try:
                path = eval(compile(ast.Expression(ast.parse(text, mode="eval").body), where, "eval"), {"ANCHOR": anchor, "Path": Path})
            except Exception as e:  # noqa: BLE001  (a path this test cannot work out must be looked at, not skipped)
                pytest.fail(f"{where}: cannot tell which file `{ast.unparse(expr)}` names ({e!r}); teach this test")
            found.append((where, Path(os.path.normpath(path))))
    return found


def _data_files(path: Path) -> list[Path]:
    """The files a package-relative path reaches: itself, or a folder's files other than code."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def test_every_data_file_the_code_reads_by_package_relative_path_is_in_the_wheel(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing, checked = [], []
    for where, path in package_relative_paths():
        if path == REPO:  # the repository root as a working folder (a perf script's cwd), not data
            continue
        assert any(path.is_relative_to(REPO / top) for top in PACKAGES), f"{where}: reads {path}, outside the packages: no install has it"
        files = _data_files(path)
        assert files, f"{where}: {path} holds no file"
        for file in files:
            name = file.relative_to(REPO).as_posix()
            checked.append(name)
            if name not in shipped:
                missing.append(f"{name} (read at {where})")
    # The scan found what it must: a guard against a scan that silently finds nothing.
    for expected in ("benchmark/tracks/debug.toml", "benchmark/prompts/icd-tiny-eval.csv", "manifests/icd-debug.toml",
                     "implicit_concept/detector/scales.toml", "benchmark/published/detector-tiny/detector.safetensors"):
        assert expected in checked, expected
    assert missing == [], f"not in the wheel: {missing}"


def test_the_wheel_carries_the_reference_run_and_the_license(wheel):
    """The README compares a run with ``benchmark/reference/tiny``; an install has it in the package."""
    shipped = set(zipfile.ZipFile(wheel).namelist())
    reference = [p.relative_to(REPO).as_posix() for p in _data_files(REPO / "benchmark" / "reference")]
    assert "benchmark/reference/tiny/results.json" in reference
    assert sorted(set(reference) - shipped) == []
    assert any(name.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in name for name in shipped), sorted(shipped)[-10:]


INSTALLED_USE = r"""
import sys
from pathlib import Path
import benchmark
from benchmark.prompts import read_prompts
from benchmark.track import TRACKS_DIR, load_track

assert Path(benchmark.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), benchmark.__file__
names = sorted(p.stem for p in TRACKS_DIR.glob("*.toml"))
assert names, "no shipped track"
for name in names:
    track = load_track(name)
    if track.prompts != "test-split":  # a built dataset's test captions, not a shipped file
        assert len(read_prompts(track.prompts)) >= track.num_prompts, name
print(" ".join(names))
"""


def test_the_shipped_tracks_and_prompts_load_from_an_installed_copy(wheel, tmp_path):
    """A pure wheel installs by unpacking: the unpacked copy, first on the path, is what runs."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", INSTALLED_USE, str(site)], cwd=elsewhere, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(done.stdout.split()) >= {"debug", "tiny", "paper"}, done.stdout


def test_the_sdist_holds_every_file_the_repository_tracks(source_copy, tmp_path):
    """What a source install and the tests need (tracks, prompts, reference run, ARCHITECTURE.md,
    Makefile, LICENSE, every test and its helpers) is what the repository tracks."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: nothing to compare the sdist with")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    tracked = {name for name in tracked if name and (REPO / name).is_file()}
    assert {"LICENSE", "MANIFEST.in", "tests/conftest.py", "benchmark/tracks/debug.toml"} <= tracked
    out = tmp_path / "sdist"
    done = subprocess.run([sys.executable, "-c", f"import setuptools.build_meta as b; b.build_sdist({str(out)!r})"],
                          cwd=source_copy, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        held = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert sorted(tracked - held) == []


@pytest.mark.slow
def test_a_plain_install_builds_the_shipped_recipe(tmp_path):
    source = _clean_copy(tmp_path)
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
