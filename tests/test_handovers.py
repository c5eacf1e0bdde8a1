"""What another lab hands over is judged as a benchmark method is, or refused in one line: a pipeline
folder saved with another scheduler or as another pipeline class, images in a lossy format or named
otherwise, and the cache keys that let a rerun keep what it already drew."""
import codecs
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler
from PIL import Image
from safetensors.torch import save_file

from benchmark import external
from benchmark.models.pipeline_identity import model_record, pipeline_source, remember_loaded
from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, load_pipeline, save_portable_pipeline
from benchmark.models.pretrained_check import check_pretrained
from benchmark.track import load_track
from implicit_concept.file_locks import locked
from implicit_concept.geom_erasing.location_tokens import add_tokens
from tests.real_runs import real_run
from tests.test_benchmark_io import _FakeReport

MICRO = TinyPipelineConfig(image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
                           attention_head_dim=8, text_hidden=16, text_layers=1, text_heads=2)

KEY_PROBE = """
import json, sys
from types import SimpleNamespace
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from benchmark.models.pipeline_identity import pipeline_source
euler = EulerDiscreteScheduler.from_config(DDIMScheduler(prediction_type="sample").config)  # diffusers' own idiom
old = DDIMScheduler.from_pretrained(sys.argv[1])  # a config an older diffusers wrote: fields missing
wrapper = SimpleNamespace(inner=SimpleNamespace(sampler=euler))  # a plug-in's own object holding one
print(json.dumps([pipeline_source(SimpleNamespace(scheduler=s)) for s in (euler, old)] + [pipeline_source(wrapper)], sort_keys=True))
"""


def test_a_schedulers_cache_key_is_the_same_in_every_process(tmp_path):
    """diffusers' ``_use_default_values`` is a list made from a set: keyed with it, a rerun or a resume
    under another PYTHONHASHSEED would redraw every image of a method that swaps its scheduler."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler", "_diffusers_version": "0.6.0",
                                                           "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}))
    keys = []
    for seed in ("1", "2", "3"):
        done = subprocess.run([sys.executable, "-c", KEY_PROBE, str(old)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr[-2000:]
        keys.append(done.stdout.strip().splitlines()[-1])
    assert keys[0] == keys[1] == keys[2]
    euler, _, held = json.loads(keys[0])
    assert euler["scheduler"] == held["holds"]["inner.sampler"]


def test_a_schedulers_key_names_its_class():
    """Its config holds its class only as bookkeeping (``_class_name``, after a load), which is left out."""
    class Stepper:
        config = {"num_train_timesteps": 1000, "_class_name": "Stepper"}

        def set_timesteps(self, n):
            pass

    class OtherStepper(Stepper):
        pass

    keys = [pipeline_source(type("P", (), {"scheduler": cls()})())["scheduler"] for cls in (Stepper, OtherStepper)]
    assert keys[0] != keys[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A micro pipeline folder as the benchmark saves it (DDIM, predicting x0), and a way to re-save
    it as a lab would: another scheduler, another pipeline class."""
    root = tmp_path_factory.mktemp("handover")
    pipe = build_tiny_pipeline(MICRO, root / "tokenizer", seed=0)
    pipe.scheduler = DDIMScheduler.from_config(load_track("debug").sampler().config, prediction_type="sample")
    original = save_portable_pipeline(pipe, root / "original")

    def variant(name, scheduler=None, class_name=None):
        folder = root / name
        if not folder.exists():
            shutil.copytree(original, folder)
            index = json.loads((folder / "model_index.json").read_text())
            if scheduler is not None:
                shutil.rmtree(folder / "scheduler")
                scheduler.from_config(pipe.scheduler.config).save_pretrained(folder / "scheduler")
                index["scheduler"] = ["diffusers", scheduler.__name__]
            if class_name is not None:
                index["_class_name"] = class_name
            (folder / "model_index.json").write_text(json.dumps(index))
        return folder

    return variant


def _judging(tmp_path, track="debug"):
    loaded = load_track(track)
    loaded = replace(loaded, generation={**loaded.generation, "image_size": MICRO.image_size, "steps": 2, "chunk_size": 4})
    detector = type("D", (), {"path": tmp_path / "detector.safetensors"})()
    detector.path.write_bytes(b"weights")
    return external.Judging(track=loaded, detector=detector, reference=None, cache=tmp_path, num_prompts=2)


@pytest.fixture
def unscored(monkeypatch):
    """score-pipeline and score-images without a detector: what they record, not what they measure."""
    monkeypatch.setattr(external, "score_generated", lambda paths, *a: (_FakeReport(), {"qrcode": {"icr": len(paths)}}))


def test_score_pipeline_samples_with_the_tracks_sampler_whatever_scheduler_the_folder_was_saved_with(saved, tmp_path, unscored):
    judging = _judging(tmp_path)
    ddim = external.score_pipeline(saved("ddim", DDIMScheduler), tmp_path / "ddim", judging, progress=False)
    euler = external.score_pipeline(saved("euler", EulerDiscreteScheduler), tmp_path / "euler", judging, progress=False)
    unipc = external.score_pipeline(saved("unipc", UniPCMultistepScheduler), tmp_path / "unipc", judging, progress=False)
    names = sorted(p.name for p in (tmp_path / "ddim" / "images").glob("*.png"))
    assert names and all((tmp_path / "ddim" / "images" / n).read_bytes() == (tmp_path / other / "images" / n).read_bytes()
                         for n in names for other in ("euler", "unipc"))
    assert euler["inputs"]["scheduler"]["class"] == "DDIMScheduler" and euler["inputs"]["scheduler"]["folder_class"] == "EulerDiscreteScheduler"
    assert euler["inputs"]["model"]["scheduler"] == "DDIMScheduler" and euler["inputs"]["model"]["edited_in_memory"] == ["scheduler"]
    assert ddim["inputs"]["model"]["edited_in_memory"] == [] and ddim["overrides"] == unipc["overrides"] == {"num_prompts": 2}


def test_score_pipeline_with_the_folders_own_scheduler_lists_it_as_off_protocol(saved, tmp_path, unscored):
    judging = _judging(tmp_path)
    own = external.score_pipeline(saved("euler", EulerDiscreteScheduler), tmp_path / "own", judging, progress=False, own_scheduler=True)
    assert own["overrides"] == {"num_prompts": 2, "scheduler": "EulerDiscreteScheduler"}
    assert own["inputs"]["scheduler"]["class"] == "EulerDiscreteScheduler"
    same = external.score_pipeline(saved("ddim", DDIMScheduler), tmp_path / "same", judging, progress=False, own_scheduler=True)
    assert same["overrides"] == {"num_prompts": 2}


def test_a_scheduler_that_cannot_sample_the_model_is_refused_naming_the_folder_and_the_fix(saved):
    pndm = saved("pndm", PNDMScheduler)  # PNDM steps epsilon or v only; this model predicts x0
    with pytest.raises(ValueError, match=r"pndm/scheduler: PNDMScheduler cannot sample a model whose prediction_type is 'sample' "
                                         r"\(.*\); re-save the pipeline with one that can \(pipe.scheduler = DDIMScheduler.from_config"):
        load_pipeline(pndm)
    with pytest.raises(ValueError, match=r"ddim: the track samples with PNDMScheduler, which cannot sample a model whose "
                                         r"prediction_type is 'sample' .*plug it in as a method \(--method module:Class\)"):
        load_pipeline(saved("ddim", DDIMScheduler), sampler=load_track("paper").sampler())
    with pytest.raises(ValueError, match=r"unipc/model_index.json: scheduler is 'UniPCMultistepScheduler'; supported: .*; re-save it "
                                         r"with one of them .*or plug it in as a method \(--method module:Class\)"):
        load_pipeline(saved("unipc", UniPCMultistepScheduler))


@pytest.mark.parametrize("class_name, shown", [("StableDiffusionPipelineSafe", "StableDiffusionPipelineSafe"),
                                               ("StableDiffusionXLPipeline", "StableDiffusionXLPipeline"),
                                               (["pipeline", "MyLabErasedPipeline"], "pipeline.MyLabErasedPipeline")])
def test_a_folder_saved_as_another_pipeline_class_is_refused_with_the_fix(saved, tmp_path, class_name, shown):
    folder = saved(f"class-{shown}", class_name=class_name)
    with pytest.raises(ValueError, match=rf"model_index.json: _class_name is '{shown}'; it would be loaded and sampled as a plain "
                                         rf"StableDiffusionPipeline, dropping what {shown} does: plug it in as a method instead \(--method"):
        external.score_pipeline(folder, tmp_path / "out", _judging(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("part, entry", [("unet", ["mylab.unet", "MyErasedUNet"]), ("text_encoder", ["transformers", "CLIPTextModelWithProjection"]),
                                         ("vae", ["diffusers", "AsymmetricAutoencoderKL"])])
def test_a_folder_naming_another_class_for_a_weighted_part_is_refused_not_loaded_as_the_plain_one(saved, tmp_path, part, entry):
    """A lab's UNet subclass (its own attention) was loaded as a plain UNet2DConditionModel from its
    weights, and scored as if it were the lab's model."""
    from benchmark.models.pretrained_check import check_pretrained

    folder = shutil.copytree(saved("ddim"), tmp_path / "lab")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, part: entry}))
    said = rf"lab/model_index.json: {part} is '{entry[1]}'; supported: .*; loaded as one of them it would drop what {entry[1]} does: plug it in as a method"
    with pytest.raises(ValueError, match=said):
        external.score_pipeline(folder, tmp_path / "out", _judging(tmp_path), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=said):
        check_pretrained(folder)


def test_a_result_says_which_parts_a_method_changed_in_memory(saved):
    import torch

    pipe = remember_loaded(load_pipeline(saved("ddim", DDIMScheduler)))
    assert model_record(pipe)["edited_in_memory"] == [] and model_record(pipe)["scheduler"] == "DDIMScheduler"
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)  # a post-hoc weight edit, as UCE makes
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    record = model_record(pipe, pipeline_source(pipe))
    assert record["edited_in_memory"] == ["unet", "scheduler"] and record["scheduler"] == "EulerDiscreteScheduler"
    assert record["unet"].endswith("ddim/unet")  # still the folder it came from: the flag says it is not what sampled


def test_a_plug_ins_row_names_its_spec_and_code_and_a_built_in_row_does_not():
    from benchmark.method_evaluation import _description, plugin_record

    source = {"method_code": "ab" * 32}
    assert plugin_record("mylab/methods.py:Mine", source) == {"method_spec": "mylab/methods.py:Mine", "method_code_sha256": "ab" * 32}
    assert plugin_record("sd", source) == {}

    class Documented:
        """Erases by a closed-form edit.

        More text."""

    assert _description(Documented()) == "Erases by a closed-form edit."


EDIT_LAB = '''
import torch
from benchmark.methods.interface import Generator, Method


class Edit(Method):
    """Adds one to a UNet weight in memory."""
    name = "edit"

    def build(self, ctx):
        pipe = ctx.load_pipeline(FOLDER)
        with torch.no_grad():
            next(pipe.unet.parameters()).add_(1.0)
        return Generator(pipe)
'''


def test_a_plug_ins_row_is_recorded_with_its_spec_code_and_in_memory_edits(saved, tmp_path, monkeypatch):
    """A post-hoc weight edit (UCE-like) of a folder loaded by ctx.load_pipeline: the row's ``model``
    still names that folder, and says the UNet it sampled with is not what the folder holds."""
    from types import SimpleNamespace

    from benchmark import method_evaluation
    from benchmark.generation import GenerationSettings
    from benchmark.prompts import Prompt

    folder = saved("ddim", DDIMScheduler)
    (tmp_path / "editlab.py").write_text(f"FOLDER = {str(folder)!r}\n" + EDIT_LAB)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    scored = (SimpleNamespace(write_json=lambda path: None, images=[]), {"qrcode": {"icr": 1}})
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: scored)
    monkeypatch.setattr(method_evaluation, "method_grid", lambda *a, **k: None)
    track = {"seed": 0, "esd": {}, "fmn": {}, "geom_erasing": {}, "finetune": {}, "conf": None, "quality": {"kind": "none"}}
    run = real_run(tmp_path / "run", track, cache=tmp_path)
    ctx = method_evaluation.method_context(run, tmp_path, tmp_path / "icd-qrcode", ("qrcode",), None)
    evaluation = method_evaluation.Evaluation("icd-qrcode", [Prompt(0, "a red square", 5)], GenerationSettings(steps=2, image_size=16), None, [])
    try:
        (row,), _ = method_evaluation.evaluate_method(run, "editlab:Edit", ctx, evaluation)
    finally:
        sys.modules.pop("editlab", None)
    assert row["method_spec"] == "editlab:Edit" and len(row["method_code_sha256"]) == 64
    assert row["model"]["unet"] == str(folder / "unet") and row["model"]["edited_in_memory"] == ["unet"]
    assert row["description"] == "Adds one to a UNet weight in memory."
    # Where the README says the images record it: it said "the `method_code`", which source.json holds under `model`.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    claim = re.search(r"`method_code_sha256` \(`([\w.]+)` in `images/<subset>/<method>/source\.json`\)", readme)
    assert claim is not None, "the README names where source.json records the plug-in's code sha256"
    recorded = json.loads((run.root / "images" / "icd-qrcode" / "edit" / "source.json").read_text(encoding="utf-8"))
    for key in claim[1].split("."):
        recorded = recorded[key]
    assert recorded == row["method_code_sha256"]


def test_a_methods_negative_prompt_is_what_its_pipeline_is_sampled_with(tmp_path):
    """The row records ``generator.negative_prompt`` by itself; the images must be drawn with it too,
    or a method's negative prompt (np's, a plug-in's) is recorded but never used."""
    from benchmark import method_evaluation
    from benchmark.generation import GenerationSettings
    from benchmark.methods.interface import Generator
    from benchmark.prompts import Prompt

    asked = []

    class Recording:
        def __call__(self, **kwargs):
            asked.append(kwargs["negative_prompt"])
            return [Image.new("RGB", (16, 16))] * len(kwargs["prompt"])

    class Wordy:
        name = "wordy"

        def build(self, ctx):
            return Generator(Recording(), negative_prompt=f"{ctx.phrase}, logo, signature, caption")

    run = real_run(tmp_path / "run", {"seed": 0, "esd": {}, "fmn": {}, "geom_erasing": {}, "finetune": {}}, cache=tmp_path)
    ctx = method_evaluation.method_context(run, tmp_path, tmp_path / "icd-qrcode", ("qrcode",), None)
    evaluation = method_evaluation.Evaluation("icd-qrcode", [Prompt(0, "a red square", 5)], GenerationSettings(steps=2, image_size=16), None, [])
    generator, paths, _, _ = method_evaluation._draw(run, Wordy(), ctx, evaluation, "")
    assert len(paths) == 1 and asked == [[f"{ctx.phrase}, logo, signature, caption"]]
    assert generator.negative_prompt == asked[0][0]


def _images(folder, names, fmt="PNG", **options):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (16, 16), (90, 140, 200)).save(folder / name, format=fmt, **options)
    return folder


@pytest.mark.parametrize("suffix, fmt, options, recorded, lossy", [
    (".png", "PNG", {}, "PNG", False),
    (".webp", "WEBP", {"lossless": True}, "WEBP (lossless)", False),
    (".bmp", "BMP", {}, "BMP", False),
    (".tif", "TIFF", {}, "TIFF", False),
    (".jpg", "JPEG", {"quality": 95}, "JPEG", True),
    (".webp", "WEBP", {"quality": 80}, "WEBP (lossy)", True),
    (".tif", "TIFF", {"compression": "jpeg"}, "TIFF (JPEG-compressed)", True),
])
def test_score_images_records_formats_and_lists_lossy_input_as_off_protocol(tmp_path, unscored, capsys, suffix, fmt, options, recorded, lossy):
    judging = _judging(tmp_path)
    names = [f"{p.case_number}_0{suffix}" for p in judging.prompts()]
    summary = external.score_image_folder(_images(tmp_path / "images", names, fmt, **options), tmp_path / "out", judging)
    assert summary["inputs"]["formats"] == {recorded: 2}
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (written["subset"], written["protocol"]) == (None, judging.track.protocol), "what the leaderboard's notes read"
    assert written["overrides"] == ({"num_prompts": 2, "lossy_images": {recorded: 2}} if lossy else {"num_prompts": 2})
    warned = capsys.readouterr().err
    assert ("lossy" in warned and "off the track's protocol" in warned) is lossy


@pytest.mark.parametrize("layout, found", [
    (lambda p: f"{p.case_number:05d}_0.png", r"found 2 images, e\.g\. 00000_0.png, 00001_0.png"),
    (lambda p: f"case_{p.case_number}_0.png", r"found 2 images, e\.g\. case_0_0.png, case_1_0.png"),
    (lambda p: f"qrcode/{p.case_number}_0.png", r"found no image file; subfolders are not searched \(qrcode/ holds images\)"),
])
def test_misnamed_images_are_refused_showing_the_pattern_and_what_was_found(tmp_path, unscored, layout, found):
    judging = _judging(tmp_path)
    for prompt in judging.prompts():
        _images(tmp_path / "images" / Path(layout(prompt)).parent, [Path(layout(prompt)).name])
    with pytest.raises(FileNotFoundError, match=r"images: 2 of 2 images named by icd-tiny-eval are missing, first 0_0 \(.*\); images are "
                                                r"named \{case_number\}_\{i\} .* directly in the folder: " + found):
        external.score_image_folder(tmp_path / "images", tmp_path / "out", judging)


def test_score_pipeline_samples_with_the_negative_prompt_the_folder_records(saved, tmp_path, unscored, monkeypatch):
    """A handed-over folder's negative_prompt.txt is part of the method (np's, Geom-Erasing's): sampled and recorded."""
    folder = saved("with-negative")
    (folder / external.NEGATIVE_PROMPT_FILE).write_text("QR code, watermark\n", encoding="utf-8")
    asked = []
    generate = external.generate_images
    monkeypatch.setattr(external, "generate_images", lambda fn, prompts, out, negative, *a, **k: asked.append(negative) or generate(fn, prompts, out, negative, *a, **k))
    result = external.score_pipeline(folder, tmp_path / "scored", _judging(tmp_path), progress=False)
    assert asked == ["QR code, watermark"] and result["inputs"]["negative_prompt"] == "QR code, watermark"
    explicit = external.score_pipeline(folder, tmp_path / "explicit", _judging(tmp_path), negative_prompt="", progress=False)
    assert asked[-1] == "" and explicit["inputs"]["negative_prompt"] == ""


@pytest.mark.parametrize("mark, encoding, newline", [(b"", "utf-8", "\n"), (codecs.BOM_UTF8, "utf-8", "\r\n"),
                                                     (codecs.BOM_UTF16_LE, "utf-16-le", "\r\n"), (codecs.BOM_UTF16_BE, "utf-16-be", "\n")])
def test_a_negative_prompt_file_saved_by_a_windows_editor_reads_as_the_same_prompt(tmp_path, mark, encoding, newline):
    """Notepad writes a byte-order mark and CRLF: the mark was kept as the prompt's first character;
    Windows PowerShell's ``echo ... > negative_prompt.txt`` writes UTF-16, which was refused as not UTF-8."""
    (tmp_path / external.NEGATIVE_PROMPT_FILE).write_bytes(mark + f"QR code,{newline}watermark{newline}".encode(encoding))
    assert external.pipeline_negative_prompt(tmp_path) == "QR code,\nwatermark"


def test_a_negative_prompt_naming_tokens_the_folders_tokenizer_lacks_is_refused(saved, tmp_path, unscored):
    """Geom-Erasing's negative prompt is its concept and location tokens: a folder saved with a
    tokenizer without them would read them as plain text and steer from nothing, silently."""
    folder = saved("without-tokens")
    negative = "<qrcode> <l0,0> <l1,0>"
    (folder / external.NEGATIVE_PROMPT_FILE).write_text(negative, encoding="utf-8")
    with pytest.raises(ValueError, match=r"without-tokens/tokenizer: the negative prompt names 3 tokens it does not hold "
                                         r"\(e.g. <l0,0>, <l1,0>, <qrcode>\)"):
        external.score_pipeline(folder, tmp_path / "refused", _judging(tmp_path), progress=False)
    assert not (tmp_path / "refused").exists()
    pipe = load_pipeline(folder)
    add_tokens(pipe.tokenizer, pipe.text_encoder, ["<qrcode>", "<l0,0>", "<l1,0>"])
    held = save_portable_pipeline(pipe, tmp_path / "with-tokens")
    (held / external.NEGATIVE_PROMPT_FILE).write_text(negative, encoding="utf-8")
    assert external.score_pipeline(held, tmp_path / "scored", _judging(tmp_path), progress=False)["inputs"]["negative_prompt"] == negative


def test_on_a_per_subset_track_a_handed_over_model_names_its_subset_and_is_prompted_as_the_benchmark_prompts_it(debug_dataset, tmp_path):
    """The paper track prompts each subset's model with that subset's test captions: score-pipeline
    and score-images take the same prompts (and score that subset's concepts) with --subset."""
    from benchmark.method_evaluation import evaluation_prompts

    paper = load_track("paper")
    with pytest.raises(ValueError, match=r"name the subset the scored model stands for with --subset \(one of \['icd-qrcode', 'icd-watermark', 'icd-text'\]\)"):
        external.Judging(track=paper, detector=None, reference=None, cache=tmp_path)
    with pytest.raises(ValueError, match=r"--subset icd-mixed: not one of track paper's subsets"):
        external.Judging(track=paper, detector=None, reference=None, cache=tmp_path, subset="icd-mixed")
    test = debug_dataset / "icd-text" / "test"
    judging = external.Judging(track=paper, detector=None, reference=None, cache=tmp_path, num_prompts=3, subset="icd-text", test_split=test)
    run = real_run(tmp_path, replace(paper, num_prompts=3))
    assert judging.prompts() == evaluation_prompts(run, debug_dataset / "icd-text") and len(judging.prompts()) == 3
    assert judging.concepts == ("text",)
    assert external.test_split(paper, tmp_path / "data", "icd-text") == tmp_path / "data" / "icd-v1" / "icd-text" / "test"
    missing = replace(judging, test_split=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere: no test split to take track paper's prompts from"):
        missing.prompts()


def test_a_subsets_scoring_records_that_subsets_concepts_alone(tmp_path, monkeypatch):
    """README: "--subset icd-qrcode scores that subset's concepts". Walked with score-images --track
    debug --subset icd-text, summary.json's rows and concepts held qrcode and watermark too, beside
    track_concepts ['text']: a text fine-tune read as scored on concepts it never trained on. Its rows
    are the subset's concepts, as a run's rows of that subset's fine-tune are."""
    every = {c: {"icr": {"value": 0.0}} for c in ("qrcode", "watermark", "text")}
    report = _FakeReport()
    report.concepts = {c: type("S", (), {"to_json": lambda self, c=c: {"concept": c}})() for c in every}
    monkeypatch.setattr(external, "score_generated", lambda *a: (report, every))
    judging = _judging(tmp_path)
    for subset, concepts in (("icd-text", ["text"]), ("icd-qrcode", ["qrcode"]), (None, ["qrcode", "watermark", "text"])):
        scored = replace(judging, subset=subset)
        folder = _images(tmp_path / f"images-{subset}", [f"{p.case_number}_0.png" for p in scored.prompts()])
        summary = external.score_image_folder(folder, tmp_path / f"out-{subset}", scored)
        assert summary["track_concepts"] == concepts and [r["concept"] for r in summary["rows"]] == concepts, summary["rows"]
        assert sorted(summary["concepts"]) == sorted(concepts)
        assert summary["table"] == f"table of {', '.join(concepts)}", "the console's table is of the same concepts"


def test_a_judging_scores_between_one_and_all_of_the_tracks_prompts(tmp_path):
    """--num-prompts scores a prefix of the track's prompts: more than the track has would score prompts no run of it saw."""
    judging = _judging(tmp_path)
    count = judging.track.num_prompts
    assert len(replace(judging, num_prompts=count).prompts()) == count
    for bad in (0, count + 1, True):
        with pytest.raises(ValueError, match=rf"num_prompts: expected an integer in \[1, {count}\]"):
            replace(judging, num_prompts=bad).prompts()


def test_score_images_refuses_an_image_of_the_right_width_and_another_height(tmp_path, unscored):
    """Images are the track's square size: 16x12 is as wrong as 12x16, whichever side differs."""
    judging = _judging(tmp_path)
    folder = tmp_path / "images"
    first, second = (f"{p.case_number}_0.png" for p in judging.prompts())
    _images(folder, [first])
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (16, 12), (90, 140, 200)).save(folder / second)
    with pytest.raises(ValueError, match=rf"1 of 2 images are not 16x16 pixels \(the track's image_size\), first {second} \(16x12\)"):
        external.score_image_folder(folder, tmp_path / "out", judging)


def test_a_judging_whose_prompts_file_holds_fewer_than_asked_is_refused(tmp_path):
    """A prompts file shortened after the track was checked scores fewer prompts, never silently."""
    judging = _judging(tmp_path)
    short = tmp_path / "one.csv"
    short.write_text("case_number,prompt,evaluation_seed\n0,a red square,1\n")
    judging = replace(judging, track=replace(judging.track, prompts=str(short)), num_prompts=2)
    with pytest.raises(ValueError, match=r"one.csv: holds 1 prompts, fewer than the 2 asked"):
        judging.prompts()


def _weights(file, *keys):
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(2) for key in keys}, str(file))


@pytest.mark.parametrize("name, keys, kind, why", [
    ("pytorch_lora_weights.safetensors", ["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"], "LoRA", "diffusers' name for them"),
    ("unet/pytorch_lora_weights.bin", None, "LoRA", "diffusers' name for them"),
    ("erase-qr.safetensors", ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", "lora_unet_x.alpha"], "LoRA",
     "tensor 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight'"),
    ("loha.safetensors", ["lycoris_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a"], "LoRA", "tensor 'lycoris_unet"),
    ("unet/attn_procs.safetensors", ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight"],
     "custom-diffusion", "tensor"),
    ("text_encoder/learned_embeds.safetensors", ["<qrcode>"], "textual-inversion", "diffusers' name for them"),
    ("embeddings/no-qr.safetensors", ["<no-qr>"], "textual-inversion", "tensor '<no-qr>'"),
    ("ip/ip_adapter.safetensors", ["image_proj.proj.weight"], "IP-Adapter", "diffusers' name for them"),
])
def test_a_folder_holding_weights_loading_would_not_apply_is_refused_naming_the_file(saved, tmp_path, unscored, name, keys, kind, why):
    """A LoRA (or embeddings, attention processors) saved beside the parts is never applied by the
    loader: the folder was scored as the model without it, an erasure judged as the plain model."""
    folder = tmp_path / "with-adapter"
    shutil.copytree(saved("original"), folder)
    if keys is None:
        (folder / name).write_bytes(b"not even a pickle")  # known by its name, never opened
    else:
        _weights(folder / name, *keys)
    shown = f"{folder / name}: {kind} weights ({why}"
    with pytest.raises(ValueError, match=re.escape(shown) + r".*which loading the pipeline does not apply.*fuse_lora"):
        external.score_pipeline(folder, tmp_path / "scored", _judging(tmp_path), progress=False)
    assert not (tmp_path / "scored").exists()
    with pytest.raises(ValueError, match=re.escape(shown)):
        check_pretrained(folder)


def test_whole_model_weights_beside_the_parts_are_not_taken_for_an_adapter(saved, tmp_path):
    """A hub snapshot of SD v1.5 holds its single-file checkpoints beside the parts; a tensor whose
    name merely contains "lora" (colorant, floral) is a model's."""
    folder = tmp_path / "snapshot"
    shutil.copytree(saved("original"), folder)
    _weights(folder / "v1-5-pruned-emaonly.safetensors", "model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.colorant.floral_lora2")
    (folder / "v1-5-pruned.ckpt").write_bytes(b"a pickle, never opened")
    (folder / "unet" / "lfs-pointer.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    load_pipeline(folder)
    check_pretrained(folder)


@pytest.mark.parametrize("make, said", [
    (lambda path: path.symlink_to("/nowhere/gone.png"), r"is a broken symbolic link \(to /nowhere/gone.png\)"),
    (lambda path: path.symlink_to(path.name), r"is a broken symbolic link \(to 1_0.PNG\)"),
    (lambda path: path.mkdir(), r"is a folder"),
    (lambda path: os.mkfifo(path), r"is not a regular file"),
])
def test_an_entry_under_an_images_name_that_is_not_a_file_is_said_as_what_it_is(tmp_path, unscored, make, said):
    """A link left dangling by a copy, a folder or a FIFO listed as 1_0.PNG was reported missing."""
    judging = _judging(tmp_path)
    first, second = (p.case_number for p in judging.prompts())
    folder = _images(tmp_path / "images", [f"{first}_0.png"])
    make(folder / f"{second}_0.PNG")
    with pytest.raises(FileNotFoundError, match=rf"images: 1 entries named as images are not image files: {second}_0.PNG {said}$"):
        external.score_image_folder(folder, tmp_path / "out", judging)
    assert not (tmp_path / "out").exists()


def test_a_second_scoring_into_an_output_folder_in_use_is_refused_and_leaves_the_first_ones_images(saved, tmp_path, unscored):
    """Two score-pipeline runs given one --out: the second removed the first's images as stale and drew
    its own among them, and the first scored the mixture under its own pipeline's name."""
    judging = _judging(tmp_path)
    out = tmp_path / "scored"
    external.score_pipeline(saved("original"), out, judging, progress=False)
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    summary = (out / "summary.json").read_bytes()
    other = saved("other-negative")
    (other / external.NEGATIVE_PROMPT_FILE).write_text("QR code", encoding="utf-8")
    with locked(out, inside=True):  # the first one, still drawing or scoring
        with pytest.raises(ValueError, match=rf"{re.escape(str(out))}: in use by another process \(pid \d+\); wait for it to finish or choose another --out"):
            external.score_pipeline(other, out, judging, progress=False)
        with pytest.raises(ValueError, match=r"in use by another process"):
            external.score_image_folder(out / "images", out, judging)
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before and (out / "summary.json").read_bytes() == summary
    assert external.score_pipeline(other, out, judging, progress=False)["inputs"]["negative_prompt"] == "QR code"


def test_a_single_file_checkpoint_or_a_hub_cache_handed_over_is_refused_saying_what_to_pass(saved, tmp_path, unscored):
    """score-pipeline said only "no model_index.json" where --pretrained's check says how to convert
    a single-file checkpoint or which snapshot of a Hugging Face cache to pass."""
    single = tmp_path / "erased-v1-5.safetensors"
    _weights(single, "model.diffusion_model.input_blocks.0.0.weight")
    with pytest.raises(ValueError, match=re.escape(f"{single}: a file, not a diffusers pipeline folder") + r".*from_single_file"):
        external.score_pipeline(single, tmp_path / "scored", _judging(tmp_path), progress=False)
    snapshot = tmp_path / "hub" / "models--lab--erased" / "snapshots" / ("a" * 40)
    shutil.copytree(saved("original"), snapshot)
    with pytest.raises(ValueError, match=r"not a diffusers pipeline folder \(no model_index.json in it\); a Hugging Face cache: "
                                         rf"pass a snapshot, e.g. {re.escape(str(snapshot))}"):
        external.score_pipeline(tmp_path / "hub", tmp_path / "scored", _judging(tmp_path), progress=False)
    assert not (tmp_path / "scored").exists()


def test_an_output_folder_in_the_pipeline_folder_scored_is_refused_and_one_holding_it_is_fine(saved, tmp_path, unscored):
    """--out inside the handed-over folder wrote images/, scores and a lock file into it (a benchmark
    fine-tune's folder is sealed: every method asking for it would then refuse it)."""
    folder = tmp_path / "lab" / "pipeline"
    shutil.copytree(saved("original"), folder)
    listing = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    (tmp_path / "link").symlink_to(folder)  # a link to it is it
    for out in (folder, folder / "scored", tmp_path / "lab" / "pipeline" / ".." / "pipeline", tmp_path / "link" / "scored"):
        with pytest.raises(ValueError, match=r"--out .*: is or lies inside the pipeline folder .*pipeline, which scoring would write into"):
            external.score_pipeline(folder, out, _judging(tmp_path), progress=False)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == listing
    external.score_pipeline(folder, tmp_path / "lab", _judging(tmp_path), progress=False)
    assert (tmp_path / "lab" / "summary.json").is_file() and sorted(p.relative_to(folder) for p in folder.rglob("*")) == listing


def test_an_output_folder_that_is_the_images_folder_scored_is_refused_and_its_files_kept(tmp_path, unscored):
    """--out the images folder itself wrote scores.json, summary.json and a lock file among the lab's
    images, replacing the lab's own files of those names (unreadable.txt was deleted before scoring)."""
    judging = _judging(tmp_path)
    folder = _images(tmp_path / "lab" / "generated", [f"{p.case_number}_0.png" for p in judging.prompts()])
    for name in external.OUT_FILES:
        (folder / name).write_text(f"the lab's own {name}")
    listing = {p.name: p.read_bytes() for p in folder.iterdir()}
    (tmp_path / "link").symlink_to(folder)
    for out in (folder, tmp_path / "lab" / "generated" / ".." / "generated", tmp_path / "link"):
        with pytest.raises(ValueError, match=r"--out .*: is the images folder .*generated, which scoring would write its files into"):
            external.score_image_folder(folder, out, judging)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == listing
    external.score_image_folder(folder, tmp_path / "lab", judging)  # beside it, as score-pipeline's layout has it
    assert (tmp_path / "lab" / "summary.json").is_file() and {p.name: p.read_bytes() for p in folder.iterdir()} == listing
