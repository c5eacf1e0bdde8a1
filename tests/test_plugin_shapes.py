"""Plug-ins and hand-overs of the wrong shape: a pipeline folder whose parts do not fit each
other, plug-ins whose shape is wrong, that exit, print or read as another method's folder."""
import json
import shutil
import zlib

import pytest

from benchmark import external
from benchmark.failures import MethodFailed
from benchmark.methods import get_method
from benchmark.models.pipelines import load_pipeline
from benchmark.track import TrackError, load_track
from benchmark.track_check import check_track
from tests.test_handovers import MICRO, _judging, saved, unscored  # noqa: F401 (fixtures)


def _refit(folder, **fields):
    """``folder``'s UNet remade with other config fields (its weights then fit its config)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in json.loads((folder / "unet" / "config.json").read_text()).items() if not k.startswith("_")}
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel(**{**config, **fields}).save_pretrained(folder / "unet")


@pytest.mark.parametrize("fields, problem", [
    ({"cross_attention_dim": 32}, r"unet/config.json: cross_attention_dim = 32, but the text encoder's hidden_size is 16 "
                                  r"\(.*text_encoder/config.json\); the UNet cannot attend to its text"),
    ({"in_channels": 4, "out_channels": 4}, r"unet/config.json: in_channels = 4; the VAE's latents have 12 channels"),
])
def test_a_handed_over_folder_whose_parts_do_not_fit_is_refused_in_one_line_before_sampling(saved, tmp_path, unscored, fields, problem):
    """Loaded, it failed mid-sampling as 'the pipeline raised RuntimeError: mat1 and mat2 shapes' (or
    drew grey images refused as 'mode L'), blamed on a method, with a traceback."""
    folder = saved(f"misfit-{'-'.join(fields)}")
    _refit(folder, **fields)
    with pytest.raises(ValueError, match=problem):
        external.score_pipeline(folder, tmp_path / "out", _judging(tmp_path), progress=False)
    with pytest.raises(ValueError, match=problem):
        load_pipeline(folder)  # what ctx.load_pipeline gives a plug-in
    assert not (tmp_path / "out").exists()


def test_a_part_without_its_config_is_refused_naming_the_file(saved, tmp_path):
    """transformers printed a 40-line size-mismatch table and 'You set ignore_mismatched_sizes to False'."""
    folder = saved("no-text-config")
    (folder / "text_encoder" / "config.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"no-text-config/text_encoder/config.json: missing \(the text_encoder's architecture\)"):
        load_pipeline(folder)


BASE = "from benchmark.methods.interface import Generator, Method\n"


@pytest.mark.parametrize("body, problem", [
    ("class M(Method):\n    def build(self):\n        pass\n",
     r"M\.build\(\) cannot be called as build\(ctx\) \(too many positional arguments\)"),
    ("class M(Method):\n    def build(self, ctx, strength):\n        pass\n",
     r"M\.build\(ctx, strength\) cannot be called as build\(ctx\) \(missing a required argument: 'strength'\)"),
    ("class M(Method):\n    def finetunes(self):\n        return []\n    def build(self, ctx):\n        pass\n",
     r"M\.finetunes\(\) cannot be called as finetunes\(ctx\)"),
    ("class M(Method):\n    description = ('a', 'b')\n    def build(self, ctx):\n        pass\n",
     r"description is a tuple, not text \(it is written to results\.json\)"),
    ("class M(Method):\n    pass\n", r"M leaves build abstract; a method defines build\(ctx\)"),
    ("class M:\n    build = 'fast'\n", r"M has no build\(ctx\) method"),
    ("class M(Method):\n    build = 'fast'\n", r"M has no build\(ctx\) method"),  # a setting named build hides the method
    ("M = 5\n", r"M is an int, not a class"),
    ("class Mine(Method):\n    def build(self, ctx):\n        pass\nM = Mine()\n",
     r"M is a Mine object \(an instance: name its class, Mine\), not a class"),
])
def test_a_plug_in_of_the_wrong_shape_is_refused_when_named_not_after_its_fine_tunes(lab, body, problem):
    """Each was accepted by get_method (the check run before any stage) and failed only when built,
    after its fine-tunes trained, or when results.json was written; or was told as 'cannot be made
    without arguments', or as the plug-in's own TypeError with a traceback."""
    name = lab(f"shape_{zlib.crc32(body.encode())}", BASE + body)
    with pytest.raises(ValueError, match=rf"^--method {name}:M: {problem}"):
        get_method(f"{name}:M")


def test_a_plug_ins_description_that_raises_is_the_plug_ins_failure_at_load(lab):
    name = lab("desc_raises", BASE + "class M(Method):\n    @property\n    def description(self):\n        raise KeyError('cfg')\n"
                                    "    def build(self, ctx):\n        pass\n")
    with pytest.raises(MethodFailed, match=rf"^--method {name}:M: reading its description raised KeyError"):
        get_method(f"{name}:M")


def test_a_plug_in_whose_description_is_none_is_described_by_its_docstring(lab):
    """None (a config's unset field) is no description, not a wrong type: its class's docstring says it."""
    from benchmark.method_evaluation import _description

    name = lab("desc_none", BASE + "class M(Method):\n    \"\"\"A lab's closed-form edit.\"\"\"\n    description = None\n"
                                   "    def build(self, ctx):\n        pass\n")
    assert _description(get_method(f"{name}:M")) == "A lab's closed-form edit."


def test_a_plug_in_named_as_a_built_in_method_in_another_case_is_refused(lab):
    """'SD' and 'sd' are one folder on macOS and Windows: the plug-in would overwrite sd's images."""
    name = lab("upper_sd", BASE + "class M(Method):\n    name = 'SD'\n    def build(self, ctx):\n        pass\n")
    with pytest.raises(ValueError, match=rf"^--method {name}:M: name 'SD' differs from the built-in 'sd' in case only"):
        get_method(f"{name}:M")
    lab("two_cases", BASE + "class A(Method):\n    name = 'mine'\n    def build(self, ctx):\n        pass\n"
                            "class B(Method):\n    name = 'Mine'\n    def build(self, ctx):\n        pass\n")
    with pytest.raises(TrackError, match=r"^--method: \['Mine', 'mine'\] named more than once \(names differing in case only"):
        check_track(load_track("debug"), ["two_cases:A", "two_cases:B"])


def test_a_plug_in_that_exits_the_process_is_the_plug_ins_failure_wherever_it_exits(lab, monkeypatch, tmp_path):
    """argparse's parse_args() at import reads the benchmark's own command line and exits 2; a
    sys.exit() in a lab's error path: each ended the run with the plug-in's exit status and no word."""
    from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images
    from benchmark.method_evaluation import Evaluation, _draw
    from benchmark.methods.interface import declared_finetunes
    from benchmark.prompts import Prompt

    monkeypatch.setattr("sys.argv", ["implicit-concept", "benchmark", "--track", "debug"])
    name = lab("parses_argv", BASE + "import argparse\nargparse.ArgumentParser().parse_args()\n")
    with pytest.raises(MethodFailed, match=rf"^--method {name}:M: importing {name} raised SystemExit: 2") as failed:
        get_method(f"{name}:M")
    assert "parse_args" in failed.value.cause_traceback
    name = lab("exits", BASE + "import sys\nclass M(Method):\n    def finetunes(self, ctx):\n        sys.exit('no GPU')\n"
                               "    def build(self, ctx):\n        sys.exit(3)\n")
    method = get_method(f"{name}:M")
    with pytest.raises(MethodFailed, match=r"^method M: finetunes\(ctx\) raised SystemExit: no GPU"):
        declared_finetunes(method, None)
    with pytest.raises(MethodFailed, match=r"^icd-qrcode/M: build\(ctx\) raised SystemExit: 3"):
        _draw(None, method, None, Evaluation("icd-qrcode", [], GenerationSettings(), None, []), "")

    def sampler(**kwargs):
        raise SystemExit(1)

    with pytest.raises(MethodFailed, match=r"^icd-qrcode/M: the pipeline raised SystemExit: 1"):
        generate_images(diffusers_generate_fn(sampler, _judging(tmp_path).settings()), [Prompt(0, "a", 1)], tmp_path / "images",
                        progress=False, desc="icd-qrcode/M")


def test_what_a_plug_in_prints_goes_to_stderr_so_stdout_holds_results_only(lab, capsys, tmp_path):
    """A lab's print at import, in its constructor, finetunes or build led the results table on stdout."""
    from benchmark.generation import GenerationSettings
    from benchmark.method_evaluation import Evaluation, evaluate_method
    from benchmark.methods.interface import MethodContext, declared_finetunes

    name = lab("chatty", BASE + "from benchmark.methods import NotImplementedMethod\nprint('loading chatty')\nclass M(Method):\n"
                                "    def __init__(self):\n        print('made')\n    def finetunes(self, ctx):\n        print('declaring')\n"
                                "        return []\n    def build(self, ctx):\n        print('building')\n        raise NotImplementedMethod('later')\n")
    method = get_method(f"{name}:M")
    declared_finetunes(method, None)
    ctx = MethodContext(concepts=("qrcode",), work_dir=tmp_path, seed=0, finetune=None, load_pipeline=None, train_shards=tmp_path)
    rows, _ = evaluate_method(None, f"{name}:M", ctx, Evaluation("icd-qrcode", [], GenerationSettings(), None, []))
    assert rows[0]["status"] == "missing: later"
    said = capsys.readouterr()
    assert said.out == "" and said.err.split() == ["loading", "chatty", "made", "declaring", "made", "building"]


def test_images_in_a_format_not_read_are_named_not_said_to_be_no_files(tmp_path, unscored):
    """A folder of GIFs was refused as 'found no image file', as if it were empty."""
    from PIL import Image

    judging = _judging(tmp_path)
    (tmp_path / "gifs").mkdir()
    for prompt in judging.prompts():
        Image.new("RGB", (16, 16)).save(tmp_path / "gifs" / f"{prompt.case_number}_0.gif")
    with pytest.raises(FileNotFoundError, match=r"found no image file \(2 files of types not read: \.gif; save them as PNG\)$"):
        external.score_image_folder(tmp_path / "gifs", tmp_path / "out", judging)


def test_a_pipeline_called_with_return_dict_false_gives_the_same_images_as_its_output_object(saved, tmp_path):
    """diffusers' ``return_dict=False`` returns ``(images, nsfw_flags)``: that tuple was read as two
    images, so a wrapper returning it was refused as having dropped prompts."""
    from benchmark.generation import GenerationSettings, diffusers_generate_fn, generate_images
    from benchmark.prompts import Prompt

    pipe = load_pipeline(saved("ddim"))
    pipe.set_progress_bar_config(disable=True)
    settings = GenerationSettings(steps=2, image_size=MICRO.image_size, chunk_size=3)
    prompts = [Prompt(i, f"a red square {i}", 7 + i) for i in range(3)]
    drawn = {}
    for name, wrapper in (("object", lambda **kw: pipe(**kw)), ("tuple", lambda **kw: pipe(**kw, return_dict=False))):
        paths = generate_images(diffusers_generate_fn(wrapper, settings), prompts, tmp_path / name, settings=settings, progress=False)
        drawn[name] = [p.read_bytes() for p in paths]
    assert len(drawn["tuple"]) == 3 and drawn["tuple"] == drawn["object"]
