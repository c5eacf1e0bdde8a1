"""Another lab's method ported as research code is written: closed-form edits of the cross-attention
projections, textual-inversion tokens, a pipeline subclass that overrides ``__call__``, pipelines in
other dtypes or with another scheduler, builds written as generators or ``async``. Each samples and
is keyed as what it is, or is refused in one line naming the method and the problem before any
image is drawn."""
from types import SimpleNamespace

import numpy as np
import pytest
from diffusers import DDIMScheduler
from PIL import Image

from benchmark import method_evaluation, stages
from benchmark.generation import GenerationSettings
from benchmark.methods import get_method
from benchmark.methods.interface import declared_finetunes
from benchmark.models.pipelines import build_tiny_pipeline, save_portable_pipeline
from benchmark.prompts import Prompt
from benchmark.track import load_track
from tests.real_runs import real_run
from tests.test_handovers import MICRO


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A micro pipeline folder, standing in for both the cached base and the plain fine-tune."""
    root = tmp_path_factory.mktemp("ports")
    pipe = build_tiny_pipeline(MICRO, root / "tokenizer", seed=0)
    pipe.scheduler = DDIMScheduler.from_config(load_track("debug").sampler().config, prediction_type="sample")
    return save_portable_pipeline(pipe, root / "base")


@pytest.fixture
def evaluate(base, tmp_path, monkeypatch):
    """``evaluate(spec)``: the method's rows, sampled from the micro pipeline, its scoring stood in for."""
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: base)
    monkeypatch.setattr(method_evaluation, "score_generated",
                        lambda *a, **k: (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {"icr": 0}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    run = real_run(tmp_path / "run", {"seed": 0, "conf": None, "quality": {"kind": "none"}}, cache=tmp_path)

    def evaluate(spec):
        ctx = method_evaluation.method_context(run, base, tmp_path / "icd-qrcode", ("qrcode",), None)
        evaluation = method_evaluation.Evaluation("icd-qrcode", [Prompt(0, "a red square", 5), Prompt(1, "a QR code", 6)],
                                                  GenerationSettings(steps=2, image_size=MICRO.image_size), None, [])
        rows, _ = method_evaluation.evaluate_method(run, spec, ctx, evaluation)
        return rows

    evaluate.images = lambda name: sorted((run.root / "images" / "icd-qrcode" / name).glob("*.png"))
    return evaluate


HEAD = '''
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from benchmark.methods.interface import FineTune, Generator, Method


def loaded(ctx):
    return ctx.load_pipeline(ctx.finetune(FineTune()))


def cross_attention(unet, which):
    return [m for n, m in unet.named_modules() if n.endswith(f"attn2.{which}")]
'''

EDITS = HEAD + '''

class ClosedForm(Method):
    """UCE/TIME: K and V of every cross-attention layer replaced in closed form (here, a least-squares
    solve against a singular Gram matrix: NaN, as an ill-conditioned edit gives)."""
    name = "closed-form"

    def build(self, ctx):
        pipe = loaded(ctx)
        with torch.no_grad():
            for layer in cross_attention(pipe.unet, "to_k") + cross_attention(pipe.unet, "to_v"):
                gram = torch.zeros(layer.weight.shape[1], layer.weight.shape[1])
                layer.weight.copy_(layer.weight @ (gram / gram.sum()))
        return Generator(pipe)


class Wrapped(Method):
    """A function closing over the pipeline, whose text encoder an edit overflowed to infinity."""
    name = "wrapped"

    def build(self, ctx):
        pipe = loaded(ctx)
        with torch.no_grad():
            pipe.text_encoder.get_input_embeddings().weight[5] = float("inf")

        def sample(**kwargs):
            return pipe(**kwargs)

        return Generator(sample)


class Sound(Method):
    """The same closed-form shape, well conditioned: finite, sampled."""
    name = "sound"

    def build(self, ctx):
        pipe = loaded(ctx)
        with torch.no_grad():
            for layer in cross_attention(pipe.unet, "to_k"):
                layer.weight.mul_(0.5)
        return Generator(pipe)
'''


def test_a_closed_form_edit_that_leaves_nan_or_infinity_in_the_weights_is_refused_before_any_image(lab, evaluate):
    """A singular solve in a UCE-style edit drew black images, which the detector finds nothing in: the
    row said status ok with the best ICR of the table. Through a wrapper too (a closure's pipeline)."""
    lab("edits_lab", EDITS)
    with pytest.raises(ValueError, match=r"^icd-qrcode/closed-form: the pipeline build\(ctx\) returned cannot be sampled: its unet "
                                         r"holds NaN or infinite values \(unet\.down_blocks\..*attn2\.to_k\.weight\): it would draw "
                                         r"blank images, scored as a perfect erasure$"):
        evaluate("edits_lab:ClosedForm")
    assert evaluate.images("closed-form") == []
    with pytest.raises(ValueError, match=r"^icd-qrcode/wrapped: .*its pipe\.text_encoder holds NaN or infinite values "
                                         r"\(pipe\.text_encoder\..*embed.*weight\)"):
        evaluate("edits_lab:Wrapped")
    rows = evaluate("edits_lab:Sound")
    assert rows[0]["status"] == "ok" and rows[0]["model"]["edited_in_memory"] == ["unet"]
    assert all(np.asarray(Image.open(p)).std() > 0 for p in evaluate.images("sound"))


TOKENS = HEAD + '''

class Inverted(Method):
    """Textual-inversion style: a token learned for the concept, used in the negative prompt."""
    name = "inverted"
    resize = False

    def build(self, ctx):
        pipe = loaded(ctx)
        pipe.tokenizer.add_tokens(["<qr-style>"])
        if self.resize:
            pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
        return Generator(pipe, negative_prompt="<qr-style>")


class Resized(Inverted):
    name, resize = "resized", True
'''


def test_tokens_added_to_the_tokenizer_without_embedding_rows_are_refused_naming_the_fix(lab, evaluate):
    """It failed mid-sampling as 'the pipeline raised IndexError: index out of range in self', deep in
    CLIP, or drew with no word said when no prompt used the token."""
    lab("tokens_lab", TOKENS)
    with pytest.raises(ValueError, match=r"^icd-qrcode/inverted: .*its tokenizer holds 49409 tokens but its text_encoder embeds "
                                         r"49408: .*text_encoder\.resize_token_embeddings\(len\(tokenizer\)\)"):
        evaluate("tokens_lab:Inverted")
    assert evaluate("tokens_lab:Resized")[0]["status"] == "ok" and len(evaluate.images("resized")) == 2


SHAPES = HEAD + '''

class Later(Method):
    name = "later"

    def build(self, ctx):
        yield Generator(loaded(ctx))


class Awaited(Method):
    name = "awaited"

    async def build(self, ctx):
        return Generator(loaded(ctx))


class AsyncFineTunes(Method):
    name = "async-finetunes"

    async def finetunes(self, ctx):
        return [FineTune()]

    def build(self, ctx):
        return Generator(loaded(ctx))


class YieldsFineTunes(AsyncFineTunes):
    name = "yields-finetunes"

    def finetunes(self, ctx):
        yield FineTune()
'''


@pytest.mark.parametrize("cls, problem", [
    ("Later", r"Later\.build is a generator function \(it yields; calling it gives a generator, not what it yields\)"),
    ("Awaited", r"Awaited\.build is an async def \(calling it gives a coroutine, never awaited\)"),
    ("AsyncFineTunes", r"AsyncFineTunes\.finetunes is an async def .*uses what it returns \(a list of FineTune\)"),
])
def test_a_build_written_as_a_generator_or_async_is_refused_when_named_not_after_its_fine_tunes(lab, cls, problem):
    """Accepted when named; after its fine-tunes trained, 'build() returned generator (coroutine), not a
    Generator', with a 'coroutine was never awaited' warning."""
    lab("shapes_lab", SHAPES)
    with pytest.raises(ValueError, match=rf"^--method shapes_lab:{cls}: {problem}"):
        get_method(f"shapes_lab:{cls}")


def test_fine_tunes_yielded_one_by_one_are_read_as_a_list(lab):
    lab("yields_lab", SHAPES)
    assert len(declared_finetunes(get_method("yields_lab:YieldsFineTunes"), None)) == 1


PORTS = HEAD + '''

class Guided(StableDiffusionPipeline):
    """SLD-like: a pipeline subclass whose __call__ steers, passing the track's arguments on."""

    def __call__(self, *args, **kwargs):
        return super().__call__(*args, **kwargs)


class Sld(Method):
    name = "sld-port"

    def build(self, ctx):
        return Generator(Guided(**loaded(ctx).components))


class Half(Method):
    name = "half"
    dtype = torch.float16

    def build(self, ctx):
        return Generator(loaded(ctx).to(self.dtype))


class Brain(Half):
    name, dtype = "brain", torch.bfloat16


class Euler(Method):
    name = "euler"

    def build(self, ctx):
        pipe = loaded(ctx)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        return Generator(pipe)
'''


def test_pipeline_subclasses_other_dtypes_and_schedulers_sample_and_say_what_they_are(lab, evaluate):
    lab("ports_lab", PORTS)
    records = {cls: evaluate(f"ports_lab:{cls}")[0]["model"] for cls in ("Sld", "Half", "Brain", "Euler")}
    assert records["Sld"]["class"] == "Guided" and records["Sld"]["edited_in_memory"] == []
    assert records["Half"]["edited_in_memory"] == records["Brain"]["edited_in_memory"] == ["unet", "text_encoder", "vae"]
    assert records["Euler"]["scheduler"] == "EulerDiscreteScheduler" and records["Euler"]["edited_in_memory"] == ["scheduler"]
    for name in ("sld-port", "half", "brain", "euler"):
        assert len(evaluate.images(name)) == 2


NUMPY_ERRORS = '''
import numpy as np
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method

np.seterr(all="raise")  # find where the NaN comes from
SEEN = []


class Strict(Method):
    name = "strict"

    def build(self, ctx):
        np.seterr(all="raise")
        ctx.finetune(FineTune())
        np.seterr(over="raise")

        def sample(**kwargs):
            np.seterr(divide="raise")
            return [Image.new("RGB", (16, 16), (9, 9, 9))] * len(kwargs["prompt"])

        return Generator(sample)
'''


def test_numpys_error_handling_a_plug_in_sets_is_its_own(lab, evaluate, monkeypatch):
    """``np.seterr(all="raise")`` at import held for the whole run: every later method's and the
    scoring's invalid operations (an empty slice's mean, a NaN cast to 8 bits) raised
    FloatingPointError, in the toolkit's code, blaming no plug-in; in a build, the fine-tune it asked
    for (shared by every method) trained under it."""
    before = np.geterr()
    lab("numpy_lab", NUMPY_ERRORS)
    get_method("numpy_lab:Strict")
    assert np.geterr() == before, "the module's np.seterr at import stayed"
    trained_under = []
    finetune = stages.finetune
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: trained_under.append(np.geterr()) or finetune(*a, **k))
    assert evaluate("numpy_lab:Strict")[0]["status"] == "ok"
    assert trained_under == [before], "the shared fine-tune ran under the build's error handling"
    assert np.geterr() == before, "the build's or the sampler's np.seterr stayed"


STEERING = HEAD + '''
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file


class Steer(AttnProcessor2_0):
    """A cross-attention processor adding a direction to the text embedding (no nn.Module: in no state_dict)."""

    def __init__(self, direction):
        super().__init__()
        self.direction = direction

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            encoder_hidden_states = encoder_hidden_states + self.direction
        return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


class Steered(Method):
    name = "steered"

    def build(self, ctx):
        pipe = loaded(ctx)
        pipe.unet.set_attn_processor(Steer(load_file("direction.safetensors")["d"]))
        return Generator(pipe)


class Embedded(StableDiffusionPipeline):
    """SLD-like: the concept's embedding kept on the pipeline, steering every prompt's."""

    def encode_prompt(self, *args, **kwargs):
        prompt, negative = super().encode_prompt(*args, **kwargs)
        return prompt - self.concept, negative


class Guided(Method):
    name = "guided"

    def build(self, ctx):
        pipe = Embedded(**loaded(ctx).components)
        pipe.concept = load_file("direction.safetensors")["d"]
        return Generator(pipe)
'''


@pytest.mark.parametrize("cls, name, edited", [("Steered", "steered", "unet.attn_processors"), ("Guided", "guided", "concept")])
def test_tensors_a_pipeline_holds_beyond_its_parts_weights_key_its_images(lab, evaluate, tmp_path, cls, name, edited):
    """A steering direction in a custom attention processor, or on an SLD-like pipeline subclass, read
    from the lab's file: the lab retrained it and reran, and its old images were kept, scored as the new."""
    import json

    import torch
    from safetensors.torch import save_file

    lab("steering_lab", STEERING)
    drawn = []
    for value in (0.0, 3.0, 3.0):
        save_file({"d": torch.full((MICRO.text_hidden,), value)}, tmp_path / "direction.safetensors")
        rows = evaluate(f"steering_lab:{cls}")
        drawn.append([p.read_bytes() for p in evaluate.images(name)])
    assert drawn[0] != drawn[1] == drawn[2], "kept the old direction's images, or drew the same direction anew"
    assert rows[0]["model"]["edited_in_memory"] == [edited], "results.json said the folder's model drew them"
    lab("edits_lab", EDITS)
    evaluate("edits_lab:Sound")
    plain = json.loads((tmp_path / "run" / "images" / "icd-qrcode" / "sound" / "source.json").read_text())["model"]
    assert "beyond_parts" not in plain, "a plain pipeline's key changed: every cached image would be drawn anew"


HOOKS = HEAD + '''
from safetensors.torch import load_file


def direction():
    return load_file("direction.safetensors")["d"]


class TextHook(Method):
    """AdvUnlearn/SAFREE-like: the text encoder's output moved along a direction, by a forward hook
    (the tensor bound as a default argument, research code's way in a loop)."""
    name = "text-hook"

    def build(self, ctx):
        pipe = loaded(ctx)
        d = direction()
        [m for n, m in pipe.text_encoder.named_modules() if n.endswith("final_layer_norm")][0].register_forward_hook(
            lambda module, args, output, d=d: output + d)
        return Generator(pipe)


class WrappedTextHook(TextHook):
    name = "wrapped-text-hook"

    def build(self, ctx):
        pipe = super().build(ctx).pipeline
        return Generator(lambda **kwargs: pipe(**kwargs))


class PreHook(Method):
    """Cross-attention's text input steered by a forward pre-hook with keyword arguments."""
    name = "pre-hook"

    def build(self, ctx):
        pipe = loaded(ctx)
        d = direction()

        def steer(module, args, kwargs):
            if kwargs.get("encoder_hidden_states") is not None:
                kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"] + d
            return args, kwargs

        for name, module in pipe.unet.named_modules():
            if name.endswith("attn2"):
                module.register_forward_pre_hook(steer, with_kwargs=True)
        return Generator(pipe)


class Lora(torch.nn.Module):
    """kohya/SPM-style: a LoRA module that replaces its target's forward, held by a network of its own."""

    def __init__(self, target, up):
        super().__init__()
        self.target_forward = target.forward
        self.up = torch.nn.Parameter(up)
        target.forward = self.forward

    def forward(self, x):
        return self.target_forward(x) + x @ self.up


class KohyaLora(Method):
    name = "kohya-lora"

    def build(self, ctx):
        pipe = loaded(ctx)
        d = direction()
        self.network = torch.nn.ModuleList(Lora(m, torch.outer(d.cumsum(0), torch.ones(m.out_features))) for m in cross_attention(pipe.unet, "to_v"))
        return Generator(pipe)


class AttentionControl(Method):
    """prompt-to-prompt's register_attention_control: each cross-attention's forward replaced by a closure."""
    name = "attention-control"

    def build(self, ctx):
        pipe = loaded(ctx)
        d = direction()
        for layer in [m for n, m in pipe.unet.named_modules() if n.endswith("attn2")]:
            def forward(hidden_states, encoder_hidden_states=None, attention_mask=None, original=layer.forward, **kwargs):
                return original(hidden_states, encoder_hidden_states + d, attention_mask, **kwargs)
            layer.forward = forward
        return Generator(pipe)
'''


@pytest.mark.parametrize("cls, name, edited", [("TextHook", "text-hook", ["text_encoder.hooks"]), ("WrappedTextHook", "wrapped-text-hook", None),
                                               ("PreHook", "pre-hook", ["unet.hooks"]), ("KohyaLora", "kohya-lora", ["unet.hooks"]),
                                               ("AttentionControl", "attention-control", ["unet.hooks"])])
def test_what_forward_hooks_and_replaced_forwards_hold_keys_the_images(lab, evaluate, tmp_path, cls, name, edited):
    """No state_dict holds what a hook or a replaced forward adds: the lab retrained the direction
    file, reran, and its old images were kept and scored as the new; results.json said the folders drew them."""
    import torch
    from safetensors.torch import save_file

    lab("hook_lab", HOOKS)
    drawn = []
    for value in (0.0, 3.0, 3.0):
        save_file({"d": torch.full((MICRO.text_hidden,), value)}, tmp_path / "direction.safetensors")
        rows = evaluate(f"hook_lab:{cls}")
        drawn.append([p.read_bytes() for p in evaluate.images(name)])
    assert drawn[0] != drawn[1] == drawn[2], "kept the old direction's images, or drew the same direction anew"
    assert rows[0]["model"].get("edited_in_memory") == edited, "results.json said the folder's model drew them"


OVERFLOW = HEAD + '''

class Overflows(Method):
    """Finite weights whose activations overflow (float16's range is 65504): NaN latents, black images."""
    name = "overflows"

    def build(self, ctx):
        pipe = loaded(ctx)
        with torch.no_grad():
            pipe.unet.conv_out.weight.mul_(3e38)
        return Generator(pipe)


class WrappedOverflow(Overflows):
    name = "wrapped-overflow"

    def build(self, ctx):
        pipe = super().build(ctx).pipeline
        return Generator(lambda **kwargs: pipe(**kwargs))
'''


@pytest.mark.parametrize("cls, name, part", [("Overflows", "overflows", "unet"), ("WrappedOverflow", "wrapped-overflow", "pipe.unet")])
def test_a_pipeline_that_draws_nan_from_finite_weights_is_refused_not_scored_as_erased(lab, evaluate, cls, name, part):
    """Its images were black (numpy casts NaN to 0), status ok, the best ICR of the table."""
    lab("overflow_lab", OVERFLOW)
    with pytest.raises(ValueError, match=rf"^icd-qrcode/{name}: the pipeline cannot be sampled: its {part} gave NaN or infinite "
                                         r"values while sampling \(torch\.float32: a float16 overflow"):
        evaluate(f"overflow_lab:{cls}")
    assert evaluate.images(name) == []


SAFETY = HEAD + '''

class SafetyChecked(Method):
    """A pipeline whose safety checker flags every image, as diffusers' does: it blacks them out."""
    name = "safety-checked"

    def build(self, ctx):
        pipe = loaded(ctx)

        def run_safety_checker(image, device, dtype):
            return image * 0, [True] * len(image)

        pipe.run_safety_checker = run_safety_checker
        return Generator(pipe)


class SafetyCheckedTuple(SafetyChecked):
    name = "safety-checked-tuple"

    def build(self, ctx):
        pipe = super().build(ctx).pipeline
        return Generator(lambda **kwargs: pipe(**kwargs, return_dict=False))
'''


@pytest.mark.parametrize("cls, name", [("SafetyChecked", "safety-checked"), ("SafetyCheckedTuple", "safety-checked-tuple")])
def test_images_a_safety_checker_blacked_out_are_refused_not_scored_as_erased(lab, evaluate, cls, name):
    lab("safety_lab", SAFETY)
    with pytest.raises(ValueError, match=rf"^icd-qrcode/{name}: the pipeline's safety checker replaced 2 of 2 images with black "
                                         r"ones, which the detector would read as erased"):
        evaluate(f"safety_lab:{cls}")
    assert evaluate.images(name) == []
