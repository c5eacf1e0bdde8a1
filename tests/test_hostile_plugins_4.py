"""Plug-ins written in styles the earlier hostile tests did not try: a safety checker whose flags
are an array or tensor, images whose metadata would change what is scored or whose pixels were
never read, wrappers whose attributes raise when the toolkit reads them, builds that rename the
method or move its working folder, misspelt training overrides; and image folders holding a
missing image in a format not read. Each samples as what it is, or is refused naming the method
or file, never scored as an erasure nor failing inside the toolkit."""
import numpy as np
import pytest
from PIL import Image

from benchmark import external
from benchmark.failures import MethodFailed
from implicit_concept.image_decode import decode_rgb
from tests.test_handovers import _judging, unscored  # noqa: F401 (fixture)
from tests.test_plugin_ports import base, evaluate  # noqa: F401 (fixtures)

HEAD = '''
import io, os, tempfile
import numpy as np, torch
from PIL import Image
from benchmark.methods.interface import FineTune, Generator, Method


def loaded(ctx):
    return ctx.load_pipeline(ctx.finetune(FineTune()))
'''

FLAGS = HEAD + '''
AS = {"array": lambda n: np.ones(n, dtype=bool), "tensor": lambda n: torch.ones(n, dtype=torch.bool),
      "tensors": lambda n: [torch.tensor(True) for _ in range(n)]}


def flagged_by(kind):
    class Flagged(Method):
        name = f"flags-{kind}"

        def build(self, ctx):
            pipe = loaded(ctx)
            pipe.run_safety_checker = lambda image, device, dtype: (image * 0, AS[kind](len(image)))
            return Generator(pipe)
    return Flagged


Array, Tensor, Tensors = flagged_by("array"), flagged_by("tensor"), flagged_by("tensors")
'''


@pytest.mark.parametrize("cls", ["Array", "Tensor", "Tensors"])
def test_a_safety_checker_giving_its_flags_as_an_array_or_tensor_is_refused_as_a_list_is(lab, evaluate, cls):
    """Only a list of Python or numpy bools was read as flags: a checker returning them as its
    ``forward_onnx`` does (a bool tensor) had its black images scored, status ok, a perfect erasure."""
    lab("flags_lab", FLAGS)
    name = f"flags-{cls.lower()}"
    with pytest.raises(ValueError, match=rf"^icd-qrcode/{name}: the pipeline's safety checker replaced 2 of 2 images with black ones"):
        evaluate(f"flags_lab:{cls}")
    assert evaluate.images(name) == []


CHECKED = HEAD + '''
from transformers import CLIPImageProcessor


class Flagger(torch.nn.Module):
    """A safety checker flagging every image, as diffusers' own is called."""

    def __init__(self):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.zeros(1))

    device = property(lambda self: self.threshold.device)
    dtype = property(lambda self: self.threshold.dtype)

    def forward(self, images, clip_input):
        return images * 0, [True] * len(images)


class ImagesAlone(Method):
    name = "images-alone"

    def build(self, ctx):
        pipe = loaded(ctx)
        pipe.safety_checker = Flagger()
        pipe.feature_extractor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        return Generator(lambda **kwargs: pipe(**kwargs).images)
'''


def test_a_safety_checker_behind_a_wrapper_returning_the_images_alone_is_refused(lab, evaluate):
    """Its flags were read from the pipeline's output only: a function returning ``pipe(**kwargs).images``
    (SD v1.5 loaded with its checker) had its black images scored, status ok, a perfect erasure."""
    lab("checked_lab", CHECKED)
    with pytest.raises(ValueError, match=r"^icd-qrcode/images-alone: the pipeline's safety checker replaced 2 of 2 images with black ones"):
        evaluate("checked_lab:ImagesAlone")
    assert evaluate.images("images-alone") == []


IMAGES = HEAD + '''
def returning(kind):
    class Returns(Method):
        name = f"returns-{kind}"

        def build(self, ctx):
            pipe = loaded(ctx)

            def sample(**kwargs):
                images = pipe(**kwargs).images
                if kind in ("plain", "keyed"):
                    for image in images if kind == "keyed" else ():  # what convert("RGB") keeps of a transparent palette image
                        image.info["transparency"] = image.getpixel((0, 0))
                    return images
                out = []
                for image in images:
                    buffer = io.BytesIO()
                    image.save(buffer, "PNG")
                    data = buffer.getvalue()
                    if kind == "cut":
                        out.append(Image.open(io.BytesIO(data[:len(data) // 2])))
                    else:  # opened, then its file closed before its pixels were read
                        f = open(os.path.join(tempfile.mkdtemp(), "x.png"), "w+b")
                        f.write(data)
                        f.seek(0)
                        out.append(Image.open(f))
                        f.close()
                return out
            return Generator(sample)
    return Returns


Plain, Keyed, Cut, Closed = (returning(kind) for kind in ("plain", "keyed", "cut", "closed"))
'''


def test_an_image_whose_info_would_change_its_pixels_is_saved_as_its_pixels_alone(lab, evaluate):
    """An RGB image carrying ``info["transparency"]`` was saved with PNG's tRNS: its top-left colour,
    wherever it stood, was scored as white, not as the pixels the method returned."""
    lab("images_lab", IMAGES)
    evaluate("images_lab:Plain")
    evaluate("images_lab:Keyed")
    plain, keyed = evaluate.images("returns-plain"), evaluate.images("returns-keyed")
    assert [p.name for p in plain] == [p.name for p in keyed] and len(plain) == 2
    for drawn, saved in zip(plain, keyed):
        with Image.open(drawn) as image:
            pixels = np.asarray(decode_rgb(image))
        with Image.open(saved) as image:
            assert "transparency" not in image.info
            assert np.array_equal(np.asarray(decode_rgb(image)), pixels)
        assert not np.array_equal(pixels[0, 0], [255, 255, 255])  # the keyed colour is not white already


@pytest.mark.parametrize("cls, problem", [("Cut", "OSError: image file is truncated"), ("Closed", "ValueError: seek of closed file")])
def test_an_image_whose_pixels_cannot_be_read_is_refused_naming_the_method(lab, evaluate, cls, problem):
    """Images opened lazily (``Image.open``) from bytes cut short, or from a file closed before their
    pixels were read, failed inside the toolkit's save: a bare OSError or ValueError naming no method,
    the first image of the chunk already saved."""
    lab("images_lab", IMAGES)
    name = f"returns-{cls.lower()}"
    with pytest.raises(ValueError, match=rf"^icd-qrcode/{name}: the pipeline returned an image whose pixels cannot be read \({problem}\)$"):
        evaluate(f"images_lab:{cls}")
    assert evaluate.images(name) == []


WRAPPERS = HEAD + '''
class AttributeDict(dict):
    """An attribute dict: a missing key raises KeyError, not AttributeError."""

    def __getattr__(self, name):
        return self[name]

    def __call__(self, **kwargs):
        return self["pipe"](**kwargs)


class LoadsLater:
    """A wrapper whose attributes are there only once it has loaded."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __getattr__(self, name):
        raise RuntimeError(f"{name}: not loaded yet")

    def __call__(self, **kwargs):
        return self.pipe(**kwargs)


class NoBars(LoadsLater):
    """A wrapper whose own set_progress_bar_config raises."""

    def __getattr__(self, name):
        raise AttributeError(name)

    def set_progress_bar_config(self, **kwargs):
        raise NotImplementedError("this wrapper draws no bars")


def wrapped_in(wrapper):
    class Wrapped(Method):
        name = f"wrapped-{wrapper.__name__.lower()}"

        def build(self, ctx):
            pipe = loaded(ctx)
            return Generator(AttributeDict(pipe=pipe) if wrapper is AttributeDict else wrapper(pipe))
    return Wrapped


InDict, InLoadsLater, InNoBars = wrapped_in(AttributeDict), wrapped_in(LoadsLater), wrapped_in(NoBars)
'''


@pytest.mark.parametrize("cls, name, problem", [
    ("InDict", "wrapped-attributedict", "KeyError: 'set_timesteps'"),
    ("InLoadsLater", "wrapped-loadslater", "RuntimeError: set_timesteps: not loaded yet"),
    ("InNoBars", "wrapped-nobars", "NotImplementedError: this wrapper draws no bars"),
])
def test_a_wrapper_whose_attributes_raise_when_read_is_the_methods_failure(lab, evaluate, cls, name, problem):
    """The toolkit reads a method's pipeline before sampling it (what it holds, its call signature, its
    progress bars): what the wrapper's own code raised then came out bare, a KeyError from inside the
    toolkit's checks naming no method, the lab's line buried in a traceback of the toolkit's."""
    lab("wrappers_lab", WRAPPERS)
    with pytest.raises(MethodFailed, match=rf"^icd-qrcode/{name}: its pipeline, read before sampling, raised {problem}$") as caught:
        evaluate(f"wrappers_lab:{cls}")
    assert "wrappers_lab.py" in caught.value.cause_traceback
    assert evaluate.images(name) == []


RENAMES = HEAD + '''
def renaming_to(new):
    class Renames(Method):
        name = "renames"

        def build(self, ctx):
            self.name = new  # research code labelling itself once built
            return Generator(loaded(ctx))
    return Renames


Escapes, AsSd = renaming_to("../../escaped"), renaming_to("sd")
'''


@pytest.mark.parametrize("cls", ["Escapes", "AsSd"])
def test_a_name_a_build_sets_anew_names_none_of_its_folders(lab, evaluate, tmp_path, cls):
    """The name is checked when the plug-in is named, and was read again after its build to name its
    images' folder: a build setting ``self.name = "../../escaped"`` drew outside the run's images,
    one setting ``"sd"`` drew into sd's folder (replacing sd's images as stale), under a row still named renames."""
    lab("renames_lab", RENAMES)
    rows = evaluate(f"renames_lab:{cls}")
    assert [row["method"] for row in rows] == ["renames"]
    drawn = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert drawn == ["run/images/icd-qrcode/renames/0_0.png", "run/images/icd-qrcode/renames/1_0.png"]


@pytest.mark.parametrize("hidden", [False, True])
def test_a_missing_image_there_in_a_format_not_read_is_named_beside_the_images_found(tmp_path, unscored, hidden):
    """``0_0.gif`` among PNGs was refused as '0_0 missing ... found 1 images, e.g. 1_0.png', saying
    nothing of the GIF under its name; and macOS's ``.DS_Store`` beside a folder of GIFs was listed
    as a type not read."""
    judging = _judging(tmp_path)
    first, second = judging.prompts()
    folder = tmp_path / "images"
    folder.mkdir()
    if hidden:
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        names, said = [f"{first.case_number}_0.gif", f"{second.case_number}_0.gif"], r"found no image file \(2 files of types not read: \.gif;"
    else:
        names, said = [f"{first.case_number}_0.gif", f"{second.case_number}_0.png"], r"found 1 images, e\.g\. 1_0\.png \(1 files of types not read: \.gif;"
    for name in names:
        Image.new("RGB", (16, 16), (90, 140, 200)).save(folder / name)
    with pytest.raises(FileNotFoundError, match=rf"images: [12] of 2 images .* missing, first 0_0 .*: {said} save them as PNG\)$"):
        external.score_image_folder(folder, tmp_path / "out", judging)


TYPO = HEAD + '''
class Typo(Method):
    name = "typo"

    def finetunes(self, ctx):
        return [FineTune(training={"lerning_rate": 1e-5})]

    def build(self, ctx):
        return Generator(ctx.load_pipeline(ctx.finetune(self.finetunes(ctx)[0])))
'''


def test_a_misspelt_training_override_is_refused_when_the_fine_tune_is_declared(lab):
    """``FineTune(training={"lerning_rate": ...})`` was accepted, and failed only when trained: a
    TypeError from TrainingConfig inside the toolkit (under --jobs after the other methods' fine-tunes,
    naming no method)."""
    from benchmark.methods import get_method
    from benchmark.methods.interface import FineTune, declared_finetunes

    with pytest.raises(ValueError, match=r"^FineTune\.training\.lerning_rate: unknown field; did you mean 'learning_rate'\?"):
        FineTune(training={"lerning_rate": 1e-5})
    with pytest.raises(ValueError, match=r"^FineTune\.training\.geom: unknown field"):  # FineTune(geom=...) sets it
        FineTune(training={"geom": None})
    assert FineTune(training={"steps": 3, "ema_decay": None}).training == {"steps": 3, "ema_decay": None}
    lab("typo_lab", TYPO)
    with pytest.raises(MethodFailed, match=r"^method typo: finetunes\(ctx\) raised ValueError: FineTune\.training\.lerning_rate: unknown field"):
        declared_finetunes(get_method("typo_lab:Typo"), None)


MOVES = HEAD + '''
class EditsElsewhere(Method):
    name = "edits-elsewhere"

    def build(self, ctx):
        os.chdir(tempfile.mkdtemp())  # research code reading its configs from its own folder
        return Generator(ctx.load_pipeline(ctx.edited_sd("mine", {"strength": 1}, lambda pipe: None)))
'''


def test_an_edit_of_sd_after_the_build_moved_its_working_folder_is_saved_in_the_run(lab, base, tmp_path, monkeypatch):
    """Under a relative --runs (the command's default, ``runs``), ``ctx.edited_sd`` after an
    ``os.chdir`` saved the edited pipeline below the method's new folder, outside the run, and the
    load that followed failed as 'not a diffusers pipeline folder'."""
    from pathlib import Path
    from types import SimpleNamespace

    from benchmark import method_evaluation, stages
    from benchmark.generation import GenerationSettings
    from benchmark.prompts import Prompt
    from tests.real_runs import real_run
    from tests.test_handovers import MICRO

    lab("moves_lab", MOVES)
    monkeypatch.setattr(stages, "finetune", lambda *a, **k: base)
    monkeypatch.setattr(method_evaluation, "score_generated",
                        lambda *a, **k: (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {"icr": 0}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    run = real_run(Path("runs/mine"), {"seed": 0, "conf": None, "quality": {"kind": "none"}}, cache=tmp_path / "cache")
    ctx = method_evaluation.method_context(run, base, tmp_path / "icd-qrcode", ("qrcode",), None)
    evaluation = method_evaluation.Evaluation("icd-qrcode", [Prompt(0, "a red square", 5)],
                                              GenerationSettings(steps=2, image_size=MICRO.image_size), None, [])
    rows, _ = method_evaluation.evaluate_method(run, "moves_lab:EditsElsewhere", ctx, evaluation)
    edited = list((tmp_path / "runs" / "mine" / "methods" / "icd-qrcode" / "edits-elsewhere").glob("pipeline-*/model_index.json"))
    assert len(edited) == 1 and rows[0]["model"]["unet"] == str(Path(*edited[0].parent.relative_to(tmp_path).parts, "unet"))
