"""The arrows point one way: source -> shards -> detector -> training -> generation -> scores.

``implicit_concept`` (the library others import) imports neither ``builders`` nor ``benchmark``;
``builders`` does not import ``benchmark``. Imports inside functions count too.
"""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"implicit_concept": ("builders", "benchmark"), "builders": ("benchmark",)}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_the_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from benchmark.protocol import run_benchmark\n    import builders.build\n")
    assert imported_packages(module) == [(1, "os"), (4, "benchmark"), (5, "builders")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_back_up_the_data_path(package):
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    wrong = [
        f"{m.relative_to(REPO)}:{line} imports {target}"
        for m in modules
        for line, target in imported_packages(m)
        if target in FORBIDDEN[package]
    ]
    assert not wrong, "imports against the data's direction:\n" + "\n".join(wrong)


def test_architecture_names_every_module_and_only_modules_that_exist():
    """ARCHITECTURE.md's tables are where a reader looks a module up: a new module is named there,
    and a module named there exists (the shipped pipelines' ``vae/patch_autoencoder.py`` copies are
    data, not modules)."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    shipped = ("published", "reference")
    modules = [m for package in ("implicit_concept", "builders", "benchmark") for m in (REPO / package).rglob("*.py")
               if not set(m.relative_to(REPO).parts) & set(shipped)]
    unnamed = [str(m.relative_to(REPO)) for m in modules
               if m.name != "__init__.py" and not re.search(rf"[`/]{re.escape(m.name)}`", text)]
    assert not unnamed, "modules ARCHITECTURE.md does not name: " + ", ".join(sorted(unnamed))
    files = [m.relative_to(REPO).as_posix() for m in modules] + [t.relative_to(REPO).as_posix() for t in (REPO / "tests").glob("*.py")]
    named = set(re.findall(r"`([\w./-]+\.py)`", text))
    gone = [n for n in named if not any(f == n or f.endswith("/" + n) for f in files)]
    assert not gone, "ARCHITECTURE.md names modules that do not exist: " + ", ".join(sorted(gone))
