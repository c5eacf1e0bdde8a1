"""``implicit_concept``'s public API: every advertised name resolves, and importing the package is cheap."""
import re
import subprocess
import sys
from pathlib import Path

import implicit_concept


def test_every_public_name_resolves_to_what_its_module_defines():
    import importlib

    for name in implicit_concept.__all__:
        module = importlib.import_module(implicit_concept._API[name])
        assert getattr(implicit_concept, name) is getattr(module, name), name


def test_the_version_is_the_installed_distributions():
    from importlib import metadata

    assert implicit_concept.__version__ == metadata.version("implicit-concept")


def test_importing_a_core_module_does_not_import_torch_or_ultralytics():
    code = "import sys, implicit_concept.sample, implicit_concept; print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_python_imports_and_inline_calls_resolve():
    """Every import in the README's Python blocks imports, and every name its "In Python" lines call
    (``score_images(...)``, ``load_scale("cpu")`` ...) is public API: importable from ``implicit_concept``."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    imports = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
               if re.match(r"\s*(from \S+ import |import )", line)]
    assert any("benchmark.methods.interface" in line for line in imports), "the README's blocks were found"
    done = subprocess.run([sys.executable, "-c", "\n".join(imports)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    inline = re.findall(r"In Python[^`]*`([^`]+)`", text)
    called = {name for code in inline for name in re.findall(r"(?<![.\w])([A-Za-z_]\w*)\s*[(.]", code)}
    assert {"score_images", "train_detector"} <= called, inline
    assert sorted(called - set(implicit_concept.__all__)) == []


def test_the_readme_says_what_score_images_returns_as_it_is():
    """The README said score_images "returns the same report", and a lab indexed it as the dict
    ``score --json`` writes (``report["concepts"]``: TypeError, a ScoreReport is not subscriptable).
    The sentence names the class and its attributes; each one named is there."""
    from dataclasses import fields

    sentence = next(s for s in re.split(r"(?<=\.)\s+(?=[A-Z])", README.read_text(encoding="utf-8")) if "score_images(" in s)
    returned = sentence.split("returns", 1)[1]
    assert "`ScoreReport`" in returned, sentence
    named = re.findall(r"`\.(\w+)(?:\(\))?`", returned)
    assert {"concepts", "images", "to_json"} <= set(named), sentence
    has = {f.name for f in fields(implicit_concept.ScoreReport)} | set(dir(implicit_concept.ScoreReport))
    assert sorted(set(named) - has) == []


def test_the_readmes_plug_in_example_is_the_one_the_tests_run():
    """The README calls its WordyNegative "a complete example (tests/plugin_method.py, exercised by
    the tests)": the block must be that file's code, or an edit to one leaves the other untested."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S) if "class WordyNegative" in b)
    assert block.strip() in (Path(__file__).parent / "plugin_method.py").read_text(encoding="utf-8")
