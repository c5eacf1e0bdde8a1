"""``implicit_concept``'s public API: every advertised name resolves, and importing the package is cheap."""
import subprocess
import sys

import implicit_concept


def test_every_public_name_resolves_to_what_its_module_defines():
    import importlib

    for name in implicit_concept.__all__:
        module = importlib.import_module(implicit_concept._API[name])
        assert getattr(implicit_concept, name) is getattr(module, name), name


def test_importing_a_core_module_does_not_import_torch_or_ultralytics():
    code = "import sys, implicit_concept.sample, implicit_concept; print(sorted(m for m in ('torch', 'ultralytics') if m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
