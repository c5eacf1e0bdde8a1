"""Other labs' methods written in the styles of published erasure code: a closed-form edit installed
as an entry point (a typo in its registration, a class that needs arguments), training code's
signal handlers, loggers and environment, asyncio's and a lab's own ``BaseException``s. Each is
judged as a built-in method is, or refused in one line naming the method and the fix."""
import asyncio
import logging
import os
import signal
import sys

import pytest

from benchmark.failures import MethodFailed
from benchmark.methods import get_method
from tests.test_plugin_ports import base, evaluate  # noqa: F401 (fixtures)

UCE = '''
import torch
from benchmark.methods.interface import FineTune, Generator, Method


class Uce(Method):
    """UCE: each cross-attention K and V remapped in closed form so the concept's words read as ''."""

    def build(self, ctx):
        pipe = ctx.load_pipeline(ctx.finetune(FineTune()))
        ids = pipe.tokenizer([ctx.phrase, ""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            old, new = pipe.text_encoder(ids)[0]
            keep = torch.eye(old.shape[-1])
            for name, layer in pipe.unet.named_modules():
                if name.endswith(("attn2.to_k", "attn2.to_v")):
                    w = layer.weight
                    layer.weight.copy_((w @ new.T @ old + w @ keep) @ torch.linalg.inv(old.T @ old + keep))
        return Generator(pipe)


class NeedsStrength(Uce):
    def __init__(self, strength):
        self.strength = strength
'''


@pytest.fixture
def installed(lab, tmp_path):
    """``lab_uce``'s methods installed as a lab's package registers them: entry points in its metadata."""
    lab("lab_uce", UCE)
    info = tmp_path / "lab_uce-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-uce\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[implicit_concept.methods]\nlab-uce = lab_uce:Uce\nlab-typo = lab_uce:Uec\n"
                                           "lab-gone = lab_old.methods:Uce\nlab-args = lab_uce:NeedsStrength\n"
                                           "lab-nested = lab_uce:Uce.Bulid\n")


def test_an_entry_point_method_is_judged_and_one_registered_wrong_is_refused_naming_its_package(installed, evaluate):
    """A typo in a lab's pyproject.toml read as the method's failure ('entry point lab_uce:Uec raised
    AttributeError' and a traceback); a class needing arguments, refused in one line when named by
    module:Class, was a TypeError traceback; a misspelt name listed the built-in methods alone."""
    rows = evaluate("lab-uce")
    assert rows[0]["status"] == "ok" and rows[0]["method"] == "lab-uce" and rows[0]["method_code_sha256"]
    fix = r"fix it in that package's \[project.entry-points.\"implicit_concept.methods\"\] and reinstall it$"
    with pytest.raises(ValueError, match=r"^--method lab-typo: the entry point 'lab-typo = lab_uce:Uec' of package lab-uce 0.1 "
                                         r"cannot be loaded \(.*'Uec'.*\); " + fix):
        get_method("lab-typo")
    with pytest.raises(ValueError, match=r"^--method lab-gone: the entry point 'lab-gone = lab_old.methods:Uce' of package "
                                         r"lab-uce 0.1 cannot be loaded \(No module named 'lab_old'\); " + fix):
        get_method("lab-gone")
    with pytest.raises(ValueError, match=r"^--method lab-nested: the entry point 'lab-nested = lab_uce:Uce.Bulid' of package "
                                         r"lab-uce 0.1 cannot be loaded \(.*'Bulid'.*\); " + fix):
        get_method("lab-nested")  # a typo below its class: as much the registration's as one in the class's name
    with pytest.raises(ValueError, match=r"^--method lab-args: NeedsStrength\(\) cannot be made without arguments"):
        get_method("lab-args")
    with pytest.raises(ValueError, match=r"^unknown method 'lab-ucee' \(did you mean 'lab-uce'\?\) .*installed plug-ins "
                                         r"\(implicit_concept.methods entry points\): lab-args, lab-gone, lab-nested, lab-typo, lab-uce;"):
        get_method("lab-ucee")
    with pytest.raises(ValueError, match=r"^unknown method 'Lab-Uce'"):
        get_method("Lab-Uce")  # an entry point's name is matched as a built-in's is, exactly



@pytest.fixture
def installed_failing(lab, tmp_path):
    """A lab's package whose registered modules are there but fail as they import: a dependency not
    installed, a bug, an exit, the user's Ctrl-C."""
    lab("lab_needs", "import lab_cuda_kernels\nfrom benchmark.methods.interface import Method\nclass M(Method):\n"
                     "    def build(self, ctx):\n        pass\n")
    lab("lab_buggy", "import torch\nLAYER = torch.nn.Lienar\n")
    lab("lab_exits", "import sys\nsys.exit('lab_exits: --config is required')\n")
    lab("lab_stops", "raise KeyboardInterrupt\n")
    info = tmp_path / "lab_failing-0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-failing\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[implicit_concept.methods]\nlab-needs = lab_needs:M\nlab-buggy = lab_buggy:M\n"
                                           "lab-exits = lab_exits:M\nlab-stops = lab_stops:M\n")


def test_an_entry_point_whose_module_is_there_but_fails_to_import_is_the_methods_failure(installed_failing):
    """Only a module or class that is not there is the entry point's registration fault; a module that
    is there and fails (a dependency of its own missing, an AttributeError in its code, sys.exit) is the
    method's failure naming the step, with its traceback; Ctrl-C while it imports stops the run."""
    with pytest.raises(MethodFailed, match=r"^--method lab-needs: importing lab_needs raised ModuleNotFoundError: "
                                           r"No module named 'lab_cuda_kernels'$"):
        get_method("lab-needs")
    with pytest.raises(MethodFailed, match=r"^--method lab-buggy: importing lab_buggy raised AttributeError: .*'Lienar'"):
        get_method("lab-buggy")
    with pytest.raises(MethodFailed, match=r"^--method lab-exits: importing lab_exits raised SystemExit: "
                                           r"lab_exits: --config is required$"):
        get_method("lab-exits")
    with pytest.raises(KeyboardInterrupt):
        get_method("lab-stops")


#: A training script's stderr logger, as the plug-ins below each define it.
TEE = '''

class Tee:
    """A training script's logger: what is written to stderr goes to its log file too."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()
'''

HABITS = '''
import logging, os, signal, sys
from benchmark.methods.interface import FineTune, Generator, Method

logging.basicConfig(level=logging.DEBUG, force=True)
os.environ["TQDM_DISABLE"] = "1"
signal.signal(signal.SIGTERM, signal.SIG_IGN)
''' + TEE + '''

class Habits(Method):
    name = "habits"

    def build(self, ctx):
        self.stop = False
        signal.signal(signal.SIGINT, lambda signum, frame: setattr(self, "stop", True))  # save the run on Ctrl-C
        sys.stdout = sys.stderr = Tee(sys.stderr)
        os.environ["IMPLICIT_CONCEPT_CACHE"] = "/data/lab/cache"
        os.environ.pop("HOME", None)
        logging.getLogger("diffusers").setLevel(logging.INFO)
        pipe = ctx.load_pipeline(ctx.finetune(FineTune()))

        def sample(**kwargs):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.environ["HF_HUB_OFFLINE"] = "0"
            logging.disable(logging.CRITICAL)
            return pipe(**kwargs)

        return Generator(sample)
'''


def _logging():
    root = logging.getLogger()
    return root.level, list(root.handlers), logging.root.manager.disable, logging.getLogger("diffusers").level


def test_signal_handlers_loggers_and_environment_a_plug_in_sets_are_undone_after_its_code(lab, evaluate):
    """A handler that saves a lab's training on Ctrl-C, left installed, took the run's every later
    Ctrl-C and SIGTERM (nothing stopped it); its logger replaced sys.stderr for the progress bars and
    errors of every later stage; the environment it set was every later stage's and --jobs worker's;
    its logging.basicConfig(level=DEBUG) printed every library's debug lines for the rest of the run."""
    logging.getLogger("diffusers")
    before = ({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
              sys.stdout, sys.stderr, dict(os.environ), _logging())
    try:
        rows = evaluate(f"{lab('habits', HABITS)}:Habits")
        after = ({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)},
                 sys.stdout, sys.stderr, dict(os.environ), _logging())
    finally:
        logging.getLogger().handlers[:] = before[4][1]
        logging.getLogger().setLevel(before[4][0])
        logging.disable(before[4][2])
        logging.getLogger("diffusers").setLevel(before[4][3])
        for sig, handler in before[0].items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = before[1:3]
        os.environ.clear()
        os.environ.update(before[3])
    assert rows[0]["status"] == "ok"
    assert after[0] == before[0]
    assert after[1] is before[1] and after[2] is before[2]
    assert after[3] == before[3]
    assert after[4] == before[4]


DECLARING_HABITS = HABITS + '''

class Declares(Habits):
    name = "declares"

    def finetunes(self, ctx):
        signal.signal(signal.SIGINT, lambda signum, frame: setattr(self, "stop", True))
        sys.stderr = Tee(sys.stderr)
        os.environ["WANDB_MODE"] = "offline"
        logging.getLogger().setLevel(logging.DEBUG)
        return [FineTune()]
'''


def test_what_a_plug_ins_finetunes_sets_is_put_back(lab):
    """``finetunes(ctx)`` is the plug-in's code as much as its build: its handler, stream, environment
    and logging level were every later stage's (what it did at import is put back by loading)."""
    from benchmark.methods.interface import declared_finetunes

    logging.getLogger("diffusers")
    method = get_method(f"{lab('declaring', DECLARING_HABITS)}:Declares")
    before = (signal.getsignal(signal.SIGINT), sys.stderr, dict(os.environ), _logging())
    try:
        declared = declared_finetunes(method, None)
        after = (signal.getsignal(signal.SIGINT), sys.stderr, dict(os.environ), _logging())
    finally:
        signal.signal(signal.SIGINT, before[0])
        sys.stderr = before[1]
        os.environ.clear()
        os.environ.update(before[2])
        logging.getLogger().setLevel(before[3][0])
    assert len(declared) == 1
    assert after[0] == before[0] and after[1] is before[1] and after[2] == before[2] and after[3] == before[3]

class LabStop(BaseException):
    """A lab's own stop, raised past ``except Exception`` on purpose."""


def _raises(error):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


@pytest.mark.parametrize("error", [asyncio.CancelledError("sampler task cancelled"), LabStop("budget spent"), GeneratorExit()])
def test_a_base_exception_a_plug_in_raises_is_its_failure_and_a_keyboard_interrupt_stops_the_run(lab, tmp_path, error):
    """asyncio's CancelledError (a sampler run on an event loop), or a lab's BaseException, ended the run
    with a bare traceback naming neither the method nor the step."""
    from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images
    from benchmark.method_evaluation import Evaluation, _draw
    from benchmark.methods.interface import declared_finetunes
    from benchmark.prompts import Prompt

    kind = type(error).__name__
    sys.modules["lab_errors"] = type(sys)("lab_errors")
    sys.modules["lab_errors"].error = error
    try:
        name = lab("raising", "from benchmark.methods.interface import Method\nimport lab_errors\nclass M(Method):\n"
                              "    def finetunes(self, ctx):\n        raise lab_errors.error\n"
                              "    def build(self, ctx):\n        raise lab_errors.error\n")
        method = get_method(f"{name}:M")
        with pytest.raises(MethodFailed, match=rf"^method M: finetunes\(ctx\) raised {kind}"):
            declared_finetunes(method, None)
        with pytest.raises(MethodFailed, match=rf"^icd-qrcode/M: build\(ctx\) raised {kind}"):
            _draw(None, method, None, Evaluation("icd-qrcode", [], GenerationSettings(), None, []), "")
        with pytest.raises(MethodFailed, match=rf"^icd-qrcode/M: the pipeline raised {kind}"):
            generate_images(diffusers_generate_fn(_raises(error), GenerationSettings(steps=1, image_size=16)),
                            [Prompt(0, "a", 1)], tmp_path / "images", progress=False, desc="icd-qrcode/M")
        name = lab("raising_at_import", "import lab_errors\nraise lab_errors.error\n")
        with pytest.raises(MethodFailed, match=rf"^--method {name}:M: importing {name} raised {kind}"):
            get_method(f"{name}:M")
        sys.modules["lab_errors"].error = KeyboardInterrupt()
        with pytest.raises(KeyboardInterrupt):
            _draw(None, method, None, Evaluation("icd-qrcode", [], GenerationSettings(), None, []), "")
        with pytest.raises(KeyboardInterrupt):
            declared_finetunes(method, None)
    finally:
        sys.modules.pop("lab_errors", None)


STOPPING_SITES = {
    "import": "import lab_errors\nraise lab_errors.error\n",
    "constructor": "import lab_errors\nfrom benchmark.methods.interface import Method\nclass M(Method):\n"
                   "    def __init__(self):\n        raise lab_errors.error\n    def build(self, ctx):\n        pass\n",
    "name": "import lab_errors\nfrom benchmark.methods.interface import Method\nclass M(Method):\n"
            "    @property\n    def name(self):\n        raise lab_errors.error\n    def build(self, ctx):\n        pass\n",
    "build attribute": "import lab_errors\nfrom benchmark.methods.interface import Method\nclass M(Method):\n"
                       "    @property\n    def build(self):\n        raise lab_errors.error\n",
    "description": "import lab_errors\nfrom benchmark.methods.interface import Method\nclass M(Method):\n"
                   "    @property\n    def description(self):\n        raise lab_errors.error\n    def build(self, ctx):\n        pass\n",
}


@pytest.mark.parametrize("site", sorted(STOPPING_SITES) + ["finetunes", "build", "pipeline"])
@pytest.mark.parametrize("stop", ["KeyboardInterrupt", "Interrupted"])
def test_the_users_stop_inside_a_plug_in_stops_the_run_at_every_step(lab, tmp_path, site, stop):
    """Ctrl-C (KeyboardInterrupt), or SIGTERM and SIGHUP (the toolkit's Interrupted), arriving while a
    plug-in's code runs is the user's stop, not the plug-in's failure: reported as MethodFailed the run
    would go on to the next method instead of stopping."""
    from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images
    from benchmark.method_evaluation import Evaluation, _draw
    from benchmark.methods.interface import declared_finetunes
    from benchmark.prompts import Prompt
    from implicit_concept.worker_processes import Interrupted

    error = KeyboardInterrupt() if stop == "KeyboardInterrupt" else Interrupted("SIGTERM")
    sys.modules["lab_errors"] = type(sys)("lab_errors")
    sys.modules["lab_errors"].error = error
    try:
        if site in STOPPING_SITES:
            name = lab(f"stopping_{site.replace(' ', '_')}", STOPPING_SITES[site])
            with pytest.raises(type(error)) as raised:
                get_method(f"{name}:M")
        elif site == "pipeline":
            with pytest.raises(type(error)) as raised:
                generate_images(diffusers_generate_fn(_raises(error), GenerationSettings(steps=1, image_size=16)),
                                [Prompt(0, "a", 1)], tmp_path / "images", progress=False, desc="icd-qrcode/M")
        else:
            name = lab(f"stopping_{site}", "from benchmark.methods.interface import Method\nimport lab_errors\n"
                                          "class M(Method):\n    def finetunes(self, ctx):\n        raise lab_errors.error\n"
                                          "    def build(self, ctx):\n        raise lab_errors.error\n")
            method = get_method(f"{name}:M")
            with pytest.raises(type(error)) as raised:
                if site == "finetunes":
                    declared_finetunes(method, None)
                else:
                    _draw(None, method, None, Evaluation("icd-qrcode", [], GenerationSettings(), None, []), "")
        assert raised.value is error
    finally:
        sys.modules.pop("lab_errors", None)


def test_a_duck_typed_plug_in_whose_attributes_raise_is_its_failure(lab):
    """A plug-in that is not a Method subclass, its attributes computed by ``__getattr__`` (a config
    object's style), raising while the benchmark looked for its ``build``: a bare traceback naming
    neither the method nor the step."""
    name = lab("computed_attributes", "class M:\n    def __getattr__(self, attr):\n"
                                      "        raise RuntimeError(f'no config key {attr}')\n")
    with pytest.raises(MethodFailed, match=rf"^--method {name}:M: reading its build raised RuntimeError: no config key build"):
        get_method(f"{name}:M")

READ_SITES = {
    "name": "class M(Method):\n    @property\n    def name(self):\n        raise lab_errors.error\n"
            "    def build(self, ctx):\n        pass\n",
    "build": "class M(Method):\n    @property\n    def build(self):\n        raise lab_errors.error\n",
    "finetunes": "class M(Method):\n    @property\n    def finetunes(self):\n        raise lab_errors.error\n"
                 "    def build(self, ctx):\n        pass\n",
    "description": "class M(Method):\n    @property\n    def description(self):\n        raise lab_errors.error\n"
                   "    def build(self, ctx):\n        pass\n",
    "duck-typed build": "class M:\n    def __getattr__(self, attr):\n        raise lab_errors.error\n",
}


@pytest.mark.parametrize("site", sorted(READ_SITES))
@pytest.mark.parametrize("error", [RuntimeError("no config key"), LabStop("budget spent")])
def test_a_plug_ins_attribute_that_raises_when_read_is_its_failure_naming_the_attribute(lab, site, error):
    """Its name, build, finetunes or description computed by a property (or ``__getattr__``) that
    raises, an exception or a lab's own BaseException, while the benchmark checks the plug-in before
    any stage: the plug-in's failure naming what was read, not a bare traceback."""
    sys.modules["lab_errors"] = type(sys)("lab_errors")
    sys.modules["lab_errors"].error = error
    try:
        name = lab(f"reading_{site.replace(' ', '_').replace('-', '_')}",
                   "import lab_errors\nfrom benchmark.methods.interface import Method\n" + READ_SITES[site])
        with pytest.raises(MethodFailed, match=rf"^--method {name}:M: reading its {site.split()[-1]} raised "
                                               rf"{type(error).__name__}: {error}$"):
            get_method(f"{name}:M")
    finally:
        sys.modules.pop("lab_errors", None)


@pytest.mark.parametrize("error", [SystemExit("no GPU found"), LabStop("budget spent")])
def test_a_plug_ins_constructor_that_raises_a_base_exception_is_its_failure(lab, error):
    """``sys.exit`` in a lab's constructor (its check for a GPU), or its own BaseException: the run
    ended with the plug-in's exit status, or a bare traceback."""
    sys.modules["lab_errors"] = type(sys)("lab_errors")
    sys.modules["lab_errors"].error = error
    try:
        name = lab("constructing", "import lab_errors\nfrom benchmark.methods.interface import Method\nclass M(Method):\n"
                                   "    def __init__(self):\n        raise lab_errors.error\n    def build(self, ctx):\n        pass\n")
        with pytest.raises(MethodFailed, match=rf"^--method {name}:M: M\(\) raised {type(error).__name__}: {error}$"):
            get_method(f"{name}:M")
    finally:
        sys.modules.pop("lab_errors", None)


OWN_PIPELINE = '''
import numpy as np
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method


class OwnPipeline:
    """A lab's own sampler, not a diffusers pipeline: the arguments its paper's script passes."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, prompt, negative_prompt=None, generator=None, num_inference_steps=50, guidance_scale=7.5):
        return self.pipe(prompt=prompt, negative_prompt=negative_prompt, generator=generator, guidance_scale=guidance_scale,
                         num_inference_steps=num_inference_steps, height=16, width=16).images


class Own(Method):
    name = "own-pipeline"

    def build(self, ctx):
        return Generator(OwnPipeline(ctx.load_pipeline(ctx.finetune(FineTune()))))


class Takes(OwnPipeline):
    def __call__(self, prompt, negative_prompt=None, generator=None, num_inference_steps=50, guidance_scale=7.5, **unused):
        return super().__call__(prompt, negative_prompt, generator, num_inference_steps, guidance_scale)


class OwnTaking(Method):
    name = "own-taking"

    def build(self, ctx):
        return Generator(Takes(ctx.load_pipeline(ctx.finetune(FineTune()))))


class OwnArgument(Method):
    """A plain function as its pipeline, taking every argument the benchmark passes but not the
    extra one its own Generator asks for."""
    name = "own-argument"

    def build(self, ctx):
        pipe = ctx.load_pipeline(ctx.finetune(FineTune()))

        def sample(prompt, negative_prompt=None, generator=None, num_inference_steps=50, guidance_scale=7.5,
                   height=512, width=512, output_type="pil"):
            return pipe(prompt=prompt, negative_prompt=negative_prompt, generator=generator, height=height, width=width,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type=output_type)

        return Generator(sample, call_kwargs={"eta": 0.5})


class OwnImageToImage(Method):
    """An image-to-image sampler, whose image no call gives."""
    name = "own-img2img"

    def build(self, ctx):
        pipe = ctx.load_pipeline(ctx.finetune(FineTune()))

        def sample(prompt, image, **kwargs):
            return pipe(prompt=prompt, **kwargs)

        return Generator(sample)
'''


def test_a_pipeline_of_a_labs_own_whose_call_cannot_take_the_benchmarks_arguments_is_refused_before_sampling(lab, evaluate):
    """Its build ran, then sampling failed with 'the pipeline raised TypeError: __call__() got an
    unexpected keyword argument' and a traceback into the benchmark's sampling loop."""
    name = lab("own_pipeline", OWN_PIPELINE)
    with pytest.raises(ValueError, match=r"^icd-qrcode/own-pipeline: the pipeline build\(ctx\) returned cannot be sampled: "
                                         r"calling it as OwnPipeline\(prompt, negative_prompt=None, .*\) with prompt, "
                                         r"negative_prompt, generator, num_inference_steps, guidance_scale, height, width, "
                                         r"output_type fails \(got an unexpected keyword argument 'height'\); .*take them"):
        evaluate(f"{name}:Own")
    assert evaluate.images("own-pipeline") == []
    assert evaluate(f"{name}:OwnTaking")[0]["status"] == "ok"
    assert len(evaluate.images("own-taking")) == 2


def test_a_pipeline_that_cannot_take_its_own_generators_call_arguments_is_refused_naming_them(lab, evaluate):
    """What build's Generator adds (call_kwargs) is checked with the benchmark's own arguments: a
    function that takes the benchmark's but not ``eta`` failed in the sampling loop instead, and is
    named by its qualified name, not as 'function'; one that needs an argument no call gives, alike."""
    name = lab("own_argument", OWN_PIPELINE)
    with pytest.raises(ValueError, match=r"^icd-qrcode/own-argument: the pipeline build\(ctx\) returned cannot be sampled: "
                                         r"calling it as OwnArgument\.build\.<locals>\.sample\(prompt, .*\) with prompt, "
                                         r"negative_prompt, generator, num_inference_steps, guidance_scale, height, width, "
                                         r"output_type, eta fails \(got an unexpected keyword argument 'eta'\); .*take them"):
        evaluate(f"{name}:OwnArgument")
    assert evaluate.images("own-argument") == []
    with pytest.raises(ValueError, match=r"^icd-qrcode/own-img2img: .* cannot be sampled: calling it as "
                                         r"OwnImageToImage\.build\.<locals>\.sample\(prompt, image, \*\*kwargs\) with prompt, .*, "
                                         r"output_type fails \(missing a required argument: 'image'\)"):
        evaluate(f"{name}:OwnImageToImage")


CRASHING_HABITS = '''
import logging, os, signal, sys
from benchmark.methods.interface import Method
''' + TEE + '''

class Crashes(Method):
    name = "crashes"

    def build(self, ctx):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # its own: not what any was (SIG_IGN under nohup)
            signal.signal(sig, lambda signum, frame: setattr(self, "stop", True))
        sys.stdout, sys.stderr = Tee(sys.stdout), Tee(sys.stderr)
        os.environ["LAB_RUN_ID"] = "7"
        os.environ["IC_TEST_CHANGED"] = "lab"
        del os.environ["IC_TEST_REMOVED"]
        logging.basicConfig(level=logging.DEBUG, force=True)
        logging.getLogger("ic_test_library").setLevel(logging.DEBUG)
        logging.disable(logging.CRITICAL)
        raise RuntimeError("CUDA out of memory")
'''


def test_what_a_plug_in_set_is_put_back_when_its_build_then_fails(lab, monkeypatch):
    """The state is put back on the way out of a failure too (a lab's build that set its handlers,
    logger and environment, then ran out of memory): each stop signal's handler, stdout and stderr
    each, a variable added, one changed and one removed, the root logger's handlers and level, an
    existing library logger's level and ``logging.disable``'s earlier (not default) level. Seen
    through ``_draw`` alone, with no ``redirect_stdout`` around it to put stdout back instead."""
    from benchmark.generation import GenerationSettings
    from benchmark.method_evaluation import Evaluation, _draw

    monkeypatch.setenv("IC_TEST_CHANGED", "toolkit")
    monkeypatch.setenv("IC_TEST_REMOVED", "toolkit")
    monkeypatch.delenv("LAB_RUN_ID", raising=False)
    library = logging.getLogger("ic_test_library")
    library.setLevel(logging.ERROR)
    logging.disable(logging.INFO)

    def state():
        root = logging.getLogger()
        return ({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}, sys.stdout,
                sys.stderr, dict(os.environ), root.level, list(root.handlers), library.level, logging.root.manager.disable)

    before = state()
    method = get_method(f"{lab('crashing_habits', CRASHING_HABITS)}:Crashes")
    try:
        with pytest.raises(MethodFailed, match=r"^icd-qrcode/crashes: build\(ctx\) raised RuntimeError: CUDA out of memory"):
            _draw(None, method, None, Evaluation("icd-qrcode", [], GenerationSettings(), None, []), "")
        after = state()
    finally:
        for sig, handler in before[0].items():
            signal.signal(sig, handler)
        sys.stdout, sys.stderr = before[1:3]
        logging.getLogger().setLevel(before[4])
        logging.getLogger().handlers[:] = before[5]
        library.setLevel(logging.NOTSET)
        logging.disable(logging.NOTSET)
    assert after[0] == before[0]
    assert after[1] is before[1] and after[2] is before[2]
    assert after[3] == before[3]
    assert after[4:] == before[4:]
