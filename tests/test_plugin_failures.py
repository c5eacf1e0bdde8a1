"""How a plug-in's own failures are reported: naming the method, with its traceback, never a bare
traceback from the benchmark; and what a plug-in does to torch's settings stays its own."""
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.failures import MethodFailed
from benchmark.methods import NotImplementedMethod, get_method
from tests.real_runs import real_run


BASE = "from benchmark.methods.interface import Generator, Method\n"


def test_a_plug_in_whose_name_is_a_read_only_property_or_frozen_dataclass_field_is_taken_or_refused_by_name(lab):
    lab("propname_ok", BASE + "class P(Method):\n    @property\n    def name(self):\n        return 'prop-ok'\n    def build(self, ctx):\n        pass\n")
    assert get_method("propname_ok:P").name == "prop-ok"
    lab("propname_empty", BASE + "class P(Method):\n    @property\n    def name(self):\n        return ''\n    def build(self, ctx):\n        pass\n")
    with pytest.raises(ValueError, match=r"^--method propname_empty:P: its name is '' and cannot be set to 'P' \(a read-only property\)"):
        get_method("propname_empty:P")
    lab("frozen_nameless", BASE + "from dataclasses import dataclass\n@dataclass(frozen=True)\nclass F(Method):\n"
        "    strength: float = 1.0\n    def build(self, ctx):\n        pass\n")
    with pytest.raises(ValueError, match=r"^--method frozen_nameless:F: its name is '' and cannot be set to 'F' \(a frozen dataclass\)"):
        get_method("frozen_nameless:F")
    lab("frozen_named", BASE + "from dataclasses import dataclass\n@dataclass(frozen=True)\nclass F(Method):\n"
        "    name: str = 'frozen-ok'\n    strength: float = 1.0\n    def build(self, ctx):\n        pass\n")
    assert get_method("frozen_named:F").name == "frozen-ok"


@pytest.mark.parametrize("text, error", [("class Broken(\n    pass\n", "SyntaxError"), ("x = CONFIG['a']\n", "NameError"),
                                         ("import not_installed_dependency_xyz\n", "ModuleNotFoundError")])
def test_a_plug_in_module_that_fails_to_import_is_named_with_its_own_traceback(lab, text, error):
    name = lab(f"broken_{error.lower()}", text)
    with pytest.raises(MethodFailed, match=rf"^--method {name}:X: importing {name} raised {error}") as failed:
        get_method(f"{name}:X")
    assert f"{name}.py" in failed.value.cause_traceback


def test_a_plug_in_constructor_that_fails_is_named_and_an_arguments_problem_is_told_apart(lab):
    lab("ctor", BASE + "class Opens(Method):\n    def __init__(self):\n        open('/nonexistent/cfg.json')\n    def build(self, ctx):\n        pass\n"
        "class Body(Method):\n    def __init__(self):\n        len(None)\n    def build(self, ctx):\n        pass\n"
        "class Args(Method):\n    def __init__(self, strength):\n        pass\n    def build(self, ctx):\n        pass\n")
    with pytest.raises(MethodFailed, match=r"^--method ctor:Opens: Opens\(\) raised FileNotFoundError: .*/nonexistent/cfg.json"):
        get_method("ctor:Opens")
    with pytest.raises(MethodFailed, match=r"^--method ctor:Body: Body\(\) raised TypeError: object of type 'NoneType' has no len"):
        get_method("ctor:Body")
    with pytest.raises(ValueError, match=r"^--method ctor:Args: Args\(\) cannot be made without arguments"):
        get_method("ctor:Args")
    for spec in (":A", "ctor:", ".rel:A"):
        with pytest.raises(ValueError, match=rf"^--method {spec}: expected package.module:Class"):
            get_method(spec)


def test_a_class_missing_from_the_imported_module_names_the_file_imported_and_the_one_it_shadowed(lab):
    lab("json", "class Mine:\n    pass\n")  # the standard library's json comes first
    with pytest.raises(ValueError, match=r"module 'json' has no attribute 'Mine'; 'json' was imported from .*json.*, not .*json.py in the working folder"):
        get_method("json:Mine")


def test_what_a_plug_in_module_does_to_torch_at_import_is_undone(lab):
    lab("inference_only", BASE + "import torch\ntorch.set_grad_enabled(False)\ntorch.set_default_dtype(torch.float64)\n"
        "torch.set_default_device('meta')\nclass Mine(Method):\n    def build(self, ctx):\n        pass\n")
    get_method("inference_only:Mine")
    assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float32
    assert torch.empty(1).device.type == "cpu", "a default device set at import (cuda, say) met the next method's loading"


def test_the_fine_tuning_service_runs_under_the_toolkits_settings_whatever_build_set(monkeypatch, tmp_path):
    from benchmark import method_evaluation, stages

    seen = []
    settings = lambda: (torch.is_grad_enabled(), torch.get_default_dtype(), torch.empty(1).device.type)  # noqa: E731
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: seen.append(settings()) or tmp_path)
    monkeypatch.setattr(stages, "load_pipeline", lambda p: seen.append(settings()))
    run = real_run(tmp_path, track={"seed": 0, "esd": {}, "fmn": {}, "geom_erasing": {}, "finetune": {}})
    ctx = method_evaluation.method_context(run, tmp_path, tmp_path / "icd-qrcode", ("qrcode",), None)
    try:
        with torch.no_grad():
            torch.set_default_dtype(torch.float64)
            torch.set_default_device("meta")
            ctx.load_pipeline(ctx.finetune(None))
            assert settings() == (False, torch.float64, "meta"), "the plug-in's own are put back"
    finally:
        torch.set_default_dtype(torch.float32)
        torch.set_default_device(None)
    assert seen == [(True, torch.float32, "cpu"), (True, torch.float32, "cpu")]


def test_not_implemented_while_sampling_is_missing_and_a_function_returning_images_is_a_pipeline(tmp_path):
    from benchmark.generation import GenerationError, GenerationSettings, diffusers_generate_fn, generate_images
    from benchmark.prompts import Prompt

    settings = GenerationSettings()
    prompts = [Prompt(0, "a", 1)]

    def not_ported(**kwargs):
        raise NotImplementedMethod("sampler not ported yet")

    with pytest.raises(NotImplementedMethod, match="sampler not ported yet"):
        generate_images(diffusers_generate_fn(not_ported, settings), prompts, tmp_path / "a", progress=False, desc="icd-qrcode/x")

    def returns_list(**kwargs):
        return [Image.new("RGB", (64, 64))] * len(kwargs["prompt"])

    paths = generate_images(diffusers_generate_fn(returns_list, settings), prompts, tmp_path / "b", progress=False, desc="icd-qrcode/x")
    assert [p.name for p in paths] == ["0_0.png"]

    def returns_dict(**kwargs):
        return {"latents": np.zeros(3)}

    with pytest.raises(GenerationError, match=r"^icd-qrcode/func: function returned a dict with no \.images"):
        generate_images(diffusers_generate_fn(returns_dict, settings), prompts, tmp_path / "c", progress=False, desc="icd-qrcode/func")


def test_a_value_error_in_a_plug_ins_build_keeps_its_traceback(monkeypatch, capsys):
    """A ValueError deep in a lab's code is not the benchmark's one-line story: its traceback is
    printed, from a --jobs worker too (the failure crosses a pickle)."""
    import pickle

    from benchmark import cli

    def lab_code():
        np.zeros(12).reshape(5, 5)

    def command(args):
        try:
            lab_code()
        except ValueError as error:
            raise pickle.loads(pickle.dumps(MethodFailed("icd-qrcode/x", "build(ctx)", error))) from None

    monkeypatch.setattr(cli, "_verify", command)
    assert cli.main(["verify", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert "in lab_code" in err and "np.zeros(12).reshape(5, 5)" in err
    assert err.rstrip().endswith("icd-qrcode/x: build(ctx) raised ValueError: cannot reshape array of size 12 into shape (5,5)")


def test_not_implemented_from_finetunes_declares_none_so_the_method_is_missing(lab):
    from benchmark.methods.interface import declared_finetunes

    lab("notimpl_ft", BASE + "from benchmark.methods import NotImplementedMethod\nclass M(Method):\n"
        "    def finetunes(self, ctx):\n        raise NotImplementedMethod('later')\n    def build(self, ctx):\n        raise NotImplementedMethod('later')\n")
    assert declared_finetunes(get_method("notimpl_ft:M"), None) == []


@contextmanager
def _forgetting(*modules: str):
    """The labs' modules taken out of ``sys.modules`` after the block, whatever it raised: the next
    test imports its own files of those names afresh."""
    try:
        yield
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def _second_lab_refused(first: str, second: str, held: str, beside: str) -> None:
    """``first`` loads; ``second``, whose ``helpers`` lies in ``beside``, is refused, naming the one
    in ``held`` (the first lab's) that an import would give it."""
    get_method(first)
    with pytest.raises(ValueError, match=rf"^--method {re.escape(second)}: imports 'helpers' as \S+{held}/helpers\S*, "
                                         rf"imported first \(by another --method\), not \S+{beside}/helpers\S* beside it"):
        get_method(second)


@pytest.fixture
def lab_package(tmp_path, monkeypatch):
    """A lab's working folder holding a package of its own (``filelab/methods.py`` importing a helper
    beside it) and a loose plug-in file elsewhere; sys.path and sys.modules are put back after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "filelab").mkdir()
    (tmp_path / "filelab" / "__init__.py").write_text("")
    (tmp_path / "filelab" / "helpers.py").write_text("NEGATIVE = 'logo'\n")
    (tmp_path / "filelab" / "methods.py").write_text(BASE + "from filelab.helpers import NEGATIVE\n"
                                                     "class Mine(Method):\n    name = 'mine'\n    def build(self, ctx):\n        pass\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "loose_plugin.py").write_text(BASE + "class Loose(Method):\n    def build(self, ctx):\n        pass\n")
    (tmp_path / "elsewhere" / "json.py").write_text(BASE + "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] in ("filelab", "loose_plugin")]:
        sys.modules.pop(name)


def test_a_plug_in_named_by_its_file_is_imported_as_its_module_and_keyed_by_the_same_code(lab_package):
    from benchmark.methods.plugins import method_sources

    method = get_method("filelab/methods.py:Mine")
    assert method.name == "mine" and type(method).__module__ == "filelab.methods"
    assert type(get_method("filelab.methods:Mine")) is type(method)  # the same module, whichever way it is named
    assert [name for name, _ in method_sources(method) if name.startswith("filelab")] == [
        "filelab/__init__.py", "filelab/helpers.py", "filelab/methods.py"]
    loose = get_method(f"{lab_package / 'elsewhere' / 'loose_plugin.py'}:Loose")
    assert loose.name == "Loose" and [name for name, _ in method_sources(loose)] [-1:] == ["loose_plugin.py"]


@pytest.mark.parametrize("spec, problem", [
    ("filelab/methods:Mine", r"filelab/methods: not a \.py file; name a plug-in as path/to/file\.py:Class, or as package\.module:Class"),
    ("filelab/nothing.py:Mine", r"filelab/nothing\.py: no such file; name a plug-in as path/to/file\.py:Class"),
    ("elsewhere/json.py:Mine", r"imports as module 'json', which is .*json.*, not this file \(an installed module of that name comes first\): rename yours"),
])
def test_a_plug_in_file_that_cannot_be_imported_says_how_to_name_it(lab_package, spec, problem):
    with pytest.raises(ValueError, match=rf"^--method {spec}: {problem}"):
        get_method(spec)


def test_two_labs_plug_in_files_of_one_module_name_are_told_apart_from_an_installed_module(lab_package):
    """Two labs' methods.py in one run: the second was said to be shadowed by "an installed module"."""
    for lab in ("lab_a", "lab_b"):
        (lab_package / lab).mkdir()
        (lab_package / lab / "their_methods.py").write_text(BASE + f"class Mine(Method):\n    name = '{lab}'\n    def build(self, ctx):\n        pass\n")
    with _forgetting("their_methods"):
        assert get_method("lab_a/their_methods.py:Mine").name == "lab_a"
        with pytest.raises(ValueError, match=r"^--method lab_b/their_methods.py:Mine: imports as module 'their_methods', as \S+lab_a/their_methods.py "
                                             r"does, imported first \(by another --method\): .*rename one file, or give each a package folder"):
            get_method("lab_b/their_methods.py:Mine")


def test_a_helper_module_beside_a_plug_in_that_another_labs_of_the_same_name_holds_is_refused(lab_package):
    """Two labs' loose plug-ins, each with a helpers.py beside it: the second's ``from helpers import
    STRENGTH`` ran the first lab's helpers (its folder came first on sys.path, its module was in
    sys.modules), so the second method's results changed with which method was named first, and its
    images were keyed on its own helpers.py, which never ran."""
    for lab, strength in (("lab_a", 0.5), ("lab_b", 1.0)):
        (lab_package / lab).mkdir()
        (lab_package / lab / "helpers.py").write_text(f"STRENGTH = {strength}\n")
        (lab_package / lab / f"{lab}_method.py").write_text(BASE + "from helpers import STRENGTH\n"
                                                            "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
    with _forgetting("helpers", "lab_a_method", "lab_b_method"):
        get_method("lab_a/lab_a_method.py:Mine")
        assert sys.modules["lab_a_method"].STRENGTH == 0.5
        with pytest.raises(ValueError, match=r"^--method lab_b/lab_b_method.py:Mine: imports 'helpers' as \S+lab_a/helpers.py, "
                                             r"imported first \(by another --method\), not \S+lab_b/helpers.py beside it: .*rename one"):
            get_method("lab_b/lab_b_method.py:Mine")


def test_a_helper_beside_a_plug_in_that_an_installed_module_already_imported_holds_is_refused(lab_package):
    """A lab's ``json.py`` beside its plug-in, imported as ``import json``: the standard library's,
    already imported, is what its ``build`` would call (an AttributeError there, or another module's
    code run); the clash is named before the plug-in runs."""
    (lab_package / "lab_c").mkdir()
    (lab_package / "lab_c" / "json.py").write_text("STRENGTH = 0.5\n")
    (lab_package / "lab_c" / "lab_c_method.py").write_text(BASE + "import json\n"
                                                          "class Mine(Method):\n    def build(self, ctx):\n        return json.STRENGTH\n")
    with _forgetting("lab_c_method"):
        with pytest.raises(ValueError, match=r"^--method lab_c/lab_c_method.py:Mine: imports 'json' as \S+json\S*, an installed "
                                             r"module already imported, not \S+lab_c/json.py beside it: rename yours$"):
            get_method("lab_c/lab_c_method.py:Mine")


@pytest.mark.parametrize("named", ["by its file", "by its module"])
def test_a_package_plug_in_whose_helper_beside_its_package_another_lab_holds_is_refused(lab_package, named):
    """Two labs' package plug-ins (``root_a/pkg_a/methods.py``), each importing a helper that lies
    beside its package, not in it: the helpers are looked for beside the outermost package, where
    the import finds them, so the second lab's is named as the first's. Named as ``pkg_b.methods:Mine``
    (found on PYTHONPATH), not by its file, the second lab's plug-in ran the first lab's helpers all
    the same: the clash is refused however it is named."""
    for lab, strength in (("a", 0.5), ("b", 1.0)):
        root = lab_package / f"root_{lab}"
        (root / f"pkg_{lab}").mkdir(parents=True)
        (root / f"pkg_{lab}" / "__init__.py").write_text("")
        (root / "helpers.py").write_text(f"STRENGTH = {strength}\n")
        (root / f"pkg_{lab}" / "methods.py").write_text(BASE + "from helpers import STRENGTH\n"
                                                       "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
        if named == "by its module":
            sys.path.append(str(root))
    spec = {"by its file": "root_{}/pkg_{}/methods.py:Mine", "by its module": "pkg_{}.methods:Mine"}[named]
    with _forgetting("helpers", "pkg_a", "pkg_a.methods", "pkg_b", "pkg_b.methods"):
        _second_lab_refused(spec.format("a", "a"), spec.format("b", "b"), "root_a", "root_b")
        assert sys.modules["pkg_a.methods"].STRENGTH == 0.5


@pytest.mark.parametrize("layout", ["a package", "imported by another helper", "imported by a helper package"])
def test_a_helper_another_lab_holds_is_refused_as_a_package_or_behind_a_helper_of_its_own(lab_package, layout):
    """The shared name was missed when it was a package folder (``helpers/__init__.py``), or when the
    plug-in reached it through a helper of its own (``lab_b_tools.py`` importing ``helpers``): the
    second lab's method ran the first lab's code all the same."""
    for lab, strength in (("lab_a", 0.5), ("lab_b", 1.0)):
        folder = lab_package / lab
        folder.mkdir()
        if layout == "a package":
            (folder / "helpers").mkdir()
            (folder / "helpers" / "__init__.py").write_text(f"STRENGTH = {strength}\n")
            imported = "helpers"
        elif layout == "imported by another helper":
            (folder / "helpers.py").write_text(f"STRENGTH = {strength}\n")
            (folder / f"{lab}_tools.py").write_text("from helpers import STRENGTH\n")
            imported = f"{lab}_tools"
        else:
            (folder / "helpers.py").write_text(f"STRENGTH = {strength}\n")
            (folder / f"{lab}_tools").mkdir()
            (folder / f"{lab}_tools" / "__init__.py").write_text("from helpers import STRENGTH\n")
            imported = f"{lab}_tools"
        (folder / f"{lab}_method.py").write_text(BASE + f"from {imported} import STRENGTH\n"
                                                 "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
    with _forgetting("helpers", "lab_a_method", "lab_b_method", "lab_a_tools", "lab_b_tools"):
        _second_lab_refused("lab_a/lab_a_method.py:Mine", "lab_b/lab_b_method.py:Mine", "lab_a", "lab_b")


def test_a_package_plug_ins_relative_import_is_its_own_package_s_not_a_module_beside_it(lab_package):
    """``from .helpers import X`` in ``pkg_b/methods.py`` imports ``pkg_b.helpers``: another lab's
    top-level ``helpers``, imported first, is no clash, even where a ``helpers.py`` lies beside ``pkg_b``."""
    (lab_package / "lab_a").mkdir()
    (lab_package / "lab_a" / "helpers.py").write_text("STRENGTH = 0.5\n")
    (lab_package / "lab_a" / "lab_a_method.py").write_text(BASE + "from helpers import STRENGTH\n"
                                                          "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
    root = lab_package / "root_b"
    (root / "pkg_b").mkdir(parents=True)
    (root / "pkg_b" / "__init__.py").write_text("")
    (root / "helpers.py").write_text("STRENGTH = 2.0\n")
    (root / "pkg_b" / "helpers.py").write_text("STRENGTH = 1.0\n")
    (root / "pkg_b" / "methods.py").write_text(BASE + "from .helpers import STRENGTH\n"
                                               "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
    with _forgetting("helpers", "lab_a_method", "pkg_b", "pkg_b.methods", "pkg_b.helpers"):
        get_method("lab_a/lab_a_method.py:Mine")
        get_method("root_b/pkg_b/methods.py:Mine")
        assert sys.modules["pkg_b.methods"].STRENGTH == 1.0


def test_an_installed_plug_in_is_not_held_to_the_installed_modules_beside_it(lab_package):
    """A lab's plug-in package installed with pip lies in site-packages beside every other installed
    module, stale backports among them (PyPI's ``dataclasses.py``, which the standard library's own
    module shadows): those are not its helpers, and it runs as the import finds them."""
    site = lab_package / "site-packages"
    (site / "labpkg").mkdir(parents=True)
    (site / "labpkg" / "__init__.py").write_text("")
    (site / "labpkg" / "methods.py").write_text(BASE + "import dataclasses\n"
                                                "class Mine(Method):\n    def build(self, ctx):\n        pass\n")
    (site / "dataclasses.py").write_text("raise ImportError('a backport for Python 3.6')\n")
    sys.path.append(str(site))
    with _forgetting("labpkg", "labpkg.methods"):
        assert get_method("labpkg.methods:Mine").name == "Mine"


def test_helpers_beside_a_plug_in_that_import_each_other_are_read_once(lab_package):
    """Two helpers importing each other (``models.py`` and ``utils.py``, research code's habit) are
    each read once by the helper check: walked again at every import, the plug-in never loaded. A
    helper imported only inside ``build`` is not held by any module yet, and passes."""
    lab = lab_package / "cyclic"
    lab.mkdir()
    (lab / "cyclic_models.py").write_text("import cyclic_utils\nSTRENGTH = 0.5\n")
    (lab / "cyclic_utils.py").write_text("def strength():\n    import cyclic_models\n    return cyclic_models.STRENGTH\n")
    (lab / "cyclic_lazy.py").write_text("STEPS = 10\n")  # imported only when build runs: not in sys.modules yet
    (lab / "cyclic_method.py").write_text(BASE + "from cyclic_models import STRENGTH\n"
                                          "class Mine(Method):\n    def build(self, ctx):\n        import cyclic_lazy\n")
    with _forgetting("cyclic_models", "cyclic_utils", "cyclic_method", "cyclic_lazy"):
        assert get_method("cyclic/cyclic_method.py:Mine").name == "Mine"
        assert "cyclic_lazy" not in sys.modules


def test_a_method_flag_problem_is_not_said_to_be_the_track_files(lab_package):
    from benchmark.track import TrackError, load_track
    from benchmark.track_check import check_track

    with pytest.raises(TrackError) as refused:
        check_track(load_track("debug"), ["filelab/nothing.py:Mine"])
    assert str(refused.value).startswith("--method: filelab/nothing.py:Mine: filelab/nothing.py: no such file")
    assert "debug.toml" not in str(refused.value)
    with pytest.raises(TrackError, match=r"^--method: unknown method 'nope'"):
        check_track(load_track("debug"), ["nope"])


def test_a_plug_in_that_changes_the_working_folder_or_warnings_filters_leaves_the_run_as_it_was(lab, tmp_path, monkeypatch):
    """A build that ran ``os.chdir`` (to call a lab's own scripts) sent the run's images, and the
    fine-tunes it asked for after, under the other folder: the run's paths are relative. One that
    turned warnings into errors failed the next method on a library's deprecation warning."""
    import os
    import warnings
    from benchmark import method_evaluation, stages
    from benchmark.methods.interface import declared_finetunes
    from benchmark.prompts import Prompt

    (tmp_path / "elsewhere").mkdir()
    filters = list(warnings.filters)
    lab("wanders", BASE + "import os, warnings\nos.chdir('elsewhere')\nwarnings.simplefilter('error')\n"
        "class Wanders(Method):\n"
        "    def finetunes(self, ctx):\n        os.chdir('elsewhere')\n        return []\n"
        "    def build(self, ctx):\n        os.chdir('elsewhere')\n        warnings.simplefilter('error')\n        folder = ctx.finetune(None)\n"
        "        def sample(**kw):\n            os.chdir('/')\n"
        "            return [__import__('PIL.Image').Image.new('RGB', (8, 8))] * len(kw['prompt'])\n"
        "        return Generator(sample)\n")
    asked_in = []
    monkeypatch.setattr(stages, "finetune", lambda *a: asked_in.append(os.getcwd()) or Path("models/ft"))
    method = get_method("wanders:Wanders")  # its import changes folder
    assert os.getcwd() == str(tmp_path)
    run = real_run(Path("run"), track={"seed": 0, "esd": {}, "fmn": {}, "geom_erasing": {}, "finetune": {}})
    ctx = method_evaluation.method_context(run, Path("base"), Path("icd-qrcode"), ("qrcode",), None)
    declared_finetunes(method, ctx)
    assert os.getcwd() == str(tmp_path)
    evaluation = method_evaluation.Evaluation("icd-qrcode", [Prompt(0, "a", 1), Prompt(1, "b", 2)],
                                              method_evaluation.GenerationSettings(image_size=8, steps=1), None, [])
    _, paths, _, _ = method_evaluation._draw(run, method, ctx, evaluation, "")
    assert os.getcwd() == str(tmp_path) and asked_in == [str(tmp_path)], "the fine-tune is asked for in the run's folder"
    assert [p.resolve() for p in paths] == [tmp_path / "run" / "images" / "icd-qrcode" / "Wanders" / f"{i}_0.png" for i in (0, 1)]
    assert all(p.resolve().is_file() for p in paths) and not list((tmp_path / "elsewhere").iterdir())
    assert warnings.filters == filters


def test_a_plug_in_subclassing_a_built_in_method_is_keyed_by_its_code_and_not_described_as_it(lab):
    """The built-in's sampler or edit draws the plug-in's images: a toolkit upgrade that changes it
    draws them anew. And a row of np's subclass sampled with another negative prompt does not say
    "the concept's name as negative prompt"."""
    from benchmark.method_evaluation import _description
    from benchmark.methods.plugins import method_sources

    lab("sublab", "from benchmark.methods.negative_prompt import NegativePrompt\nfrom benchmark.methods.sld import SafeLatentDiffusion\n"
        "class Wordier(NegativePrompt):\n    name = 'np-wordier'\n"
        "class Gentler(SafeLatentDiffusion):\n    '''SLD at a gentler preset.'''\n    name = 'sld-gentle'\n"
        "class Said(SafeLatentDiffusion):\n    name, description = 'sld-said', 'its own words'\n")
    wordier, gentler = get_method("sublab:Wordier"), get_method("sublab:Gentler")
    assert {"sublab.py", "benchmark.methods.negative_prompt"} <= set(dict(method_sources(wordier)))
    assert {"sublab.py", "benchmark.methods.sld"} <= set(dict(method_sources(gentler)))
    assert "benchmark.methods.interface" not in dict(method_sources(gentler))
    assert _description(wordier) == f"Wordier, a subclass of np: {get_method('np').description}"
    assert _description(gentler) == "SLD at a gentler preset."
    assert _description(get_method("sublab:Said")) == "its own words"
    assert _description(get_method("np")) == get_method("np").description
