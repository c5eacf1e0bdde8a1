"""What one method does to the process or to what it is handed never changes another method's
results, nor its own on a rerun: torch's numerics switches, the global random generators, the
track's settings tables and the detector's thresholds."""
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import method_evaluation, stages
from benchmark.generation import GenerationSettings
from benchmark.methods import get_method
from benchmark.methods.interface import FineTune, declared_finetunes
from benchmark.prompts import Prompt
from implicit_concept.torch_settings import numerics, set_numerics
from tests.real_runs import real_run

#: What lab scripts run at import or in their build for speed or reproducibility.
FLIPS = ("torch.set_float32_matmul_precision('medium')\ntorch.use_deterministic_algorithms(True)\n"
         "torch.backends.cuda.enable_flash_sdp(False)\n"
         "torch.backends.cudnn.benchmark = True\ntorch.set_flush_denormal(True)\ntorch.autograd.set_detect_anomaly(True)\n")


def _run(tmp_path, detector=None):
    track = {"seed": 0, "esd": {"steps": 2}, "fmn": {}, "geom_erasing": {}, "finetune": {}, "conf": None, "quality": {"kind": "none"}}
    run = real_run(tmp_path / "run", track, cache=tmp_path)
    ctx = method_evaluation.method_context(run, tmp_path, tmp_path / "icd-qrcode", ("qrcode",), detector)
    evaluation = method_evaluation.Evaluation("icd-qrcode", [Prompt(0, "a red square", 5)], GenerationSettings(steps=2, image_size=16), detector, [])
    return run, ctx, evaluation


def test_numerics_switches_a_plug_in_flips_are_undone_and_its_fine_tunes_train_under_the_toolkits(lab, tmp_path, monkeypatch):
    """``set_float32_matmul_precision('medium')`` makes a CPU's oneDNN matmuls bfloat16: a fine-tune
    trained inside such a build, shared by every method after it, had other weights."""
    before = numerics()
    try:
        lab("fast_lab", "import torch\n" + FLIPS + "from benchmark.methods.interface import Method\n"
            "class Fast(Method):\n    def build(self, ctx):\n        pass\n"
            "    def finetunes(self, ctx):\n        " + FLIPS.replace("\n", "\n        ") + "return []\n")
        get_method("fast_lab:Fast")
        assert numerics() == before, "what the module did at import stayed"
        assert torch.backends.cuda.flash_sdp_enabled() and not torch.are_deterministic_algorithms_enabled()
        declared_finetunes(get_method("fast_lab:Fast"), None)
        assert numerics() == before, "what finetunes() did stayed"
        seen = []
        monkeypatch.setattr(stages, "finetune", lambda *a, **k: seen.append(numerics()) or tmp_path)
        _, ctx, _ = _run(tmp_path)
        exec(FLIPS, {"torch": torch})
        ctx.finetune(FineTune())
        assert seen == [before] and numerics() != before, "trained under the build's switches, or the build's not put back"
    finally:
        set_numerics(before)


GLOBAL_DRAWS = '''
import random
import sys
import numpy as np
import torch
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method

DRAWN = []


class Adapter(Method):
    """An adapter started with torch.randn, a sampler that jitters with numpy and random: no generator given."""
    name = "adapter"

    def build(self, ctx):
        ctx.finetune(FineTune())
        DRAWN.append((float(torch.randn(1)), float(np.random.rand()), random.random()))

        def sample(**kwargs):
            value = int(torch.randint(0, 256, (1,))) ^ int(np.random.randint(256)) ^ random.randrange(256)
            return [Image.new("RGB", (16, 16), (value, 0, 0)) for _ in kwargs["prompt"]]

        return Generator(sample)
'''


def test_a_plug_in_drawing_from_the_global_generators_draws_the_same_whatever_ran_before(lab, tmp_path, monkeypatch):
    lab("globallab", GLOBAL_DRAWS)
    scored = (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {"icr": 0}})
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: scored)
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    images = []
    for before in (0, 1):  # the stages before it (another method) left other states; its fine-tune is trained, then cached
        trains = before == 0
        monkeypatch.setattr(stages, "finetune", lambda *a, **k: (trains and (torch.manual_seed(7), np.random.seed(7), random.seed(7))) or tmp_path)
        torch.manual_seed(before), np.random.seed(before), random.seed(before)
        states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        run, ctx, evaluation = _run(tmp_path / str(before))
        method_evaluation.evaluate_method(run, "globallab:Adapter", ctx, evaluation)
        images.append(Image.open(run.root / "images" / "icd-qrcode" / "adapter" / "0_0.png").getpixel((0, 0)))
        assert torch.equal(torch.get_rng_state(), states[0]) and (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]
    drawn = sys.modules["globallab"].DRAWN
    assert drawn[0] == drawn[1] and images[0] == images[1]


POKE = '''
from PIL import Image
from benchmark.methods.interface import Generator, Method


class Poke(Method):
    """Lowers the detector's thresholds to find more boxes for its own training; edits a settings table."""
    name = "poke"

    def build(self, ctx):
        for concept in ctx.detector.thresholds:
            ctx.detector.thresholds[concept] = 0.01
        ctx.settings["esd"]["steps"] = 1
        ctx.settings["fmn"]["steps"] = 1
        return Generator(lambda **kwargs: [Image.new("RGB", (16, 16))] * len(kwargs["prompt"]))
'''


def test_a_method_changing_the_detectors_thresholds_or_the_settings_tables_changes_them_for_itself_alone(lab, tmp_path, monkeypatch):
    lab("pokelab", POKE)
    detector = SimpleNamespace(thresholds={"qrcode": 0.4, "watermark": 0.5, "text": 0.6})
    scored_at = []

    def score(paths, prompts, detector, *args, **kwargs):
        scored_at.append(dict(detector.thresholds))
        return SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {"icr": 0}}

    monkeypatch.setattr(method_evaluation, "score_generated", score)
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    run, ctx, evaluation = _run(tmp_path, detector)
    method_evaluation.evaluate_method(run, "pokelab:Poke", ctx, evaluation)
    assert scored_at == [{"qrcode": 0.4, "watermark": 0.5, "text": 0.6}] == [detector.thresholds]
    assert ctx.settings == {"esd": {"steps": 2}, "fmn": {}, "geom_erasing": {}} and run.track.esd == {"steps": 2} and run.track.fmn == {}


CRITIC = '''
import torch
from PIL import Image
from benchmark.methods.interface import Generator, Method


class Critic(Method):
    """Trains against the detector's network as a critic and forgets eval(): its train-mode forwards
    move the batch-norm statistics, and its optimizer holds the network's weights too."""
    name = "critic"

    def build(self, ctx):
        net = ctx.detector.model.model
        net.train()
        for _ in range(3):
            net(torch.rand(2, 3, 64, 64) * 5)
        with torch.no_grad():
            for weight in net.parameters():
                weight.add_(0.01)
        return Generator(lambda **kwargs: [Image.new("RGB", (16, 16))] * len(kwargs["prompt"]))
'''


def test_a_method_training_the_detectors_network_trains_its_own_copy(lab, tmp_path, monkeypatch):
    """ultralytics builds its predictor from the network on the first detection: a method given the
    scoring detector's network before then changed the detections its own images and every later
    method's were scored with (a worker process of --jobs loads the detector fresh)."""
    from implicit_concept.concepts import CONCEPT_NAMES
    from implicit_concept.detector.inference import Detector, build_model

    def detector():
        torch.manual_seed(0)
        return Detector.from_module(build_model("yolov8n.yaml", CONCEPT_NAMES).eval(), "yolov8n.yaml", tmp_path / "d.safetensors", 64)

    lab("criticlab", CRITIC)
    probe = Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))
    seen = []

    def score(paths, prompts, detector, *args, **kwargs):
        seen.append(detector.detect(probe, conf=0.0001))
        return SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {"icr": 0}}

    monkeypatch.setattr(method_evaluation, "score_generated", score)
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    scoring = detector()
    run, ctx, evaluation = _run(tmp_path, scoring)
    method_evaluation.evaluate_method(run, "criticlab:Critic", ctx, evaluation)
    assert seen == [detector().detect(probe, conf=0.0001)] and seen[0], "the method's training changed the scoring detector's detections"
    assert not scoring.model.model.training


PATCH_LAB = '''
import torch
import torch.nn.functional as F
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method

ORIGINAL = F.silu
SEEN = []


def damped(x, inplace=False):
    return ORIGINAL(x) * 0.5


class Damped(Method):
    """Damps the UNet's activations by replacing torch's silu for everyone (research code's way)."""
    name = "damped"

    def build(self, ctx):
        F.silu = damped
        ctx.finetune(FineTune())

        def sample(**kwargs):
            SEEN.append(F.silu is damped)
            return [Image.new("RGB", (16, 16))] * len(kwargs["prompt"])

        return Generator(sample)
'''


def test_a_library_function_a_plug_in_replaces_holds_for_its_own_build_and_sampling_alone(lab, tmp_path, monkeypatch):
    """``AttnProcessor2_0.__call__ = mine`` in a build: the next method (sd) sampled with it, and the
    fine-tune every method shares was trained with it. At import it would hold for the whole run."""
    import torch.nn.functional as F

    original, trained_with = F.silu, []
    lab("patchlab", PATCH_LAB)
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: trained_with.append(F.silu) or tmp_path)
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    run, ctx, evaluation = _run(tmp_path)
    try:
        method_evaluation.evaluate_method(run, "patchlab:Damped", ctx, evaluation)
        assert sys.modules["patchlab"].SEEN == [True], "its own sampling ran without its replacement"
        assert trained_with == [original], "the shared fine-tune trained with the plug-in's replacement"
        assert F.silu is original, "the next method samples with the plug-in's replacement"
        lab("importpatch", "import torch.nn.functional as F\nORIGINAL = F.silu\ndef fast(x, inplace=False):\n    return ORIGINAL(x)\n"
            "F.silu = fast\n" + BASE_METHOD)
        with pytest.raises(ValueError, match=r"^--method importpatch:M: importing it replaced torch\.nn\.functional\.silu "
                                             r"\(with importpatch\.fast\); every method of the run"):
            get_method("importpatch:M")
        assert F.silu is original
    finally:
        F.silu = original



GLOBAL_HOOK_LAB = '''
import torch
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method

SEEN = []


def damp(module, args, output):
    return output * 0.5 if isinstance(module, torch.nn.Linear) else None


class GlobalDamp(Method):
    """Damps every linear layer's output through torch's process-wide module hook."""
    name = "global-damp"

    def build(self, ctx):
        torch.nn.modules.module.register_module_forward_hook(damp)
        ctx.finetune(FineTune())

        def sample(**kwargs):
            SEEN.append(float(_one()(torch.ones(1))))
            return [Image.new("RGB", (16, 16))] * len(kwargs["prompt"])

        return Generator(sample)


def _one():
    layer = torch.nn.Linear(1, 1, bias=False).requires_grad_(False)
    layer.weight.fill_(1.0)
    return layer
'''


def test_a_process_wide_module_hook_a_plug_in_registers_holds_for_its_own_build_and_sampling_alone(lab, tmp_path, monkeypatch):
    """``register_module_forward_hook`` in a build ran every later module through it: the next method's
    UNet, the detector scoring every image, the fine-tune every method shares. At import it is refused."""
    import torch.nn.modules.module as torch_modules

    def one():
        layer = torch.nn.Linear(1, 1, bias=False).requires_grad_(False)
        layer.weight.fill_(1.0)
        return float(layer(torch.ones(1)))

    trained_with = []
    lab("hooklab", GLOBAL_HOOK_LAB)
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: trained_with.append(one()) or tmp_path)
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    run, ctx, evaluation = _run(tmp_path)
    before = dict(torch_modules._global_forward_hooks)
    try:
        method_evaluation.evaluate_method(run, "hooklab:GlobalDamp", ctx, evaluation)
        assert sys.modules["hooklab"].SEEN == [0.5], "its own sampling ran without its hook"
        assert trained_with == [1.0], "the shared fine-tune trained through the plug-in's hook"
        assert one() == 1.0 and torch_modules._global_forward_hooks == before, "the next method and the scoring run through its hook"
        lab("importhook", "import torch\ndef damp(module, args, output):\n    return None\n"
            "torch.nn.modules.module.register_module_forward_hook(damp)\n" + BASE_METHOD)
        with pytest.raises(ValueError, match=r"^--method importhook:M: importing it registered a process-wide module hook "
                                             r"\(forward_hooks: importhook\.damp\); every method of the run"):
            get_method("importhook:M")
        assert torch_modules._global_forward_hooks == before
    finally:
        torch_modules._global_forward_hooks.clear()
        torch_modules._global_forward_hooks.update(before)


def test_a_librarys_own_replacement_at_import_is_not_a_plug_ins(lab, tmp_path):
    """ultralytics replaces ``torch.save`` when first imported, maybe by a plug-in's import: its code
    lives among the installed packages, so it is not refused."""
    import sysconfig

    import torch.nn.functional as F

    original = F.silu
    library_file = str(Path(sysconfig.get_path("purelib")) / "somelib" / "patches.py")
    (tmp_path / "somelib_stub.py").write_text(
        "import torch.nn.functional as F\nnamespace = {'F': F}\n"
        f"exec(compile('def silu(x, inplace=False):\\n    return x\\nF.silu = silu\\n', {library_file!r}, 'exec'), namespace)\n")
    lab("uses_lib", "import somelib_stub\n" + BASE_METHOD)
    try:
        assert get_method("uses_lib:M").name == "M" and F.silu is not original
    finally:
        F.silu = original
        sys.modules.pop("somelib_stub", None)


BASE_METHOD = "from benchmark.methods.interface import Method\nclass M(Method):\n    def build(self, ctx):\n        pass\n"


WRITER = '''
from PIL import Image
from benchmark.methods.interface import Generator, Method


class Writer(Method):
    """Edits the base and saves it back where it came from (save_pretrained(ctx.base))."""
    name = "writer"

    def build(self, ctx):
        (ctx.base / "unet" / "weights.safetensors").write_bytes(b"edited")
        return Generator(lambda **kwargs: [Image.new("RGB", (16, 16))] * len(kwargs["prompt"]))
'''


def test_a_method_writing_into_the_cached_base_is_named_and_the_base_refused_until_made_again(lab, tmp_path, monkeypatch):
    """Every fine-tune (keyed by the base's content: trained anew from the edit), the base row and
    every later run sharing the cache started from the written base, silently."""
    from benchmark.models.folder_seal import FolderChanged

    base = tmp_path / "cache" / "bases" / "base-x" / "diffusion" / "pipeline"
    (base / "unet").mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    (base / "unet" / "weights.safetensors").write_bytes(b"weights")
    monkeypatch.setattr(stages, "published_base", lambda config: None)
    monkeypatch.setattr(stages, "pretrain_base", lambda *a, **k: base)
    run = real_run(tmp_path / "run", cache=tmp_path / "cache")  # the base's config is the debug track's: the stages reading it are replaced
    assert stages.pretrain_base_model(run) == base and (base.parent / "sealed.json").is_file()
    lab("writerlab", WRITER)
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    run, ctx, evaluation = _run(tmp_path)
    ctx = method_evaluation.replace(ctx, base=base)
    with pytest.raises(FolderChanged, match=rf"^icd-qrcode/writer wrote into the base model it was given: {base}/unet/weights.safetensors: "
                                            r"changed since the folder was made .*; delete .*diffusion to make it again"):
        method_evaluation.evaluate_method(run, "writerlab:Writer", ctx, evaluation)
    with pytest.raises(FolderChanged, match="unet/weights.safetensors: changed since"):
        stages.load_pipeline(base)  # the next method's ctx.load_pipeline(ctx.base), the next run's base row
    with pytest.raises(FolderChanged, match="unet/weights.safetensors: changed since"):
        stages.finetune(run, base, tmp_path / "icd-qrcode", FineTune(), None)


FILTER = '''
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method


class FilterInPlace(Method):
    """A data-removal method that drops the shards its own screen flags from ctx.train_shards, then fine-tunes."""
    name = "filter-in-place"
    then_finetune = True

    def build(self, ctx):
        (ctx.train_shards / "00001.tar").unlink()
        if self.then_finetune:
            ctx.finetune(FineTune())
        return Generator(lambda **kwargs: [Image.new("RGB", (16, 16))] * len(kwargs["prompt"]))


class TouchOnly(FilterInPlace):
    name = "touch-only"
    then_finetune = False

    def build(self, ctx):
        (ctx.train_shards / "00000.tar").write_bytes(b"filtered")
        return Generator(lambda **kwargs: [Image.new("RGB", (16, 16))] * len(kwargs["prompt"]))
'''


@pytest.mark.parametrize("method, said", [
    ("FilterInPlace", r"build\(ctx\).*00001.tar: removed since the run listed it; the training data every method's fine-tunes read"),
    ("TouchOnly", r"^icd-qrcode/touch-only wrote into the training data it was given: .*00000.tar: changed since the run listed it"),
])
def test_a_method_writing_into_the_training_data_is_named_before_a_fine_tune_trains_on_it(lab, tmp_path, monkeypatch, method, said):
    """Fine-tunes are cached under the dataset's recorded checksums, not the bytes read: one trained
    after a method filtered ctx.train_shards in place was every later method's and run's sd, silently."""
    from benchmark.failures import MethodFailed
    from benchmark.models.folder_seal import FolderChanged

    train = tmp_path / "icd-qrcode" / "train"
    train.mkdir(parents=True)
    for name in ("00000.tar", "00001.tar"):
        (train / name).write_bytes(b"shard")
    trained = []
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: trained.append(a) or tmp_path)
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    lab("filterlab", FILTER)
    run, ctx, evaluation = _run(tmp_path)
    with pytest.raises((FolderChanged, MethodFailed), match=said):
        method_evaluation.evaluate_method(run, f"filterlab:{method}", ctx, evaluation)
    assert trained == []
