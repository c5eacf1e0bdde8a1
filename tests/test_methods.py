"""The baselines change what they claim to change, on a micro pipeline."""
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from PIL import Image

from benchmark.methods import REGISTRY, get_method
from benchmark.methods.esd import ESDConfig, erase
from benchmark.methods.forget_me_not import FMNConfig, _AttentionRecorder, _name_token_mask, resteer
from benchmark.methods.sld import SLD_STRONG, sld_pipeline
from benchmark.models.clip_tokenizer import token_ids
from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline

MICRO = TinyPipelineConfig(image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
                           text_hidden=16, text_layers=1, text_heads=2)


@pytest.fixture()
def pipe(tmp_path):
    return build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=3)


def _name_attention(pipe, phrase, latents, t):
    ids, mask = _name_token_mask(pipe.tokenizer, [phrase] * len(latents), phrase)
    recorder = _AttentionRecorder(mask)
    original = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor(recorder)
    with torch.no_grad():
        pipe.unet(latents, t, encoder_hidden_states=pipe.text_encoder(ids)[0])
    pipe.unet.set_attn_processor(original)
    return float(torch.stack(recorder.mass).mean())


def test_forget_me_not_moves_attention_off_the_name(pipe):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    latents = torch.randn(4, pipe.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500] * 4)
    before = _name_attention(pipe, "QR code", latents, t)
    resteer(pipe, images, "QR code", FMNConfig(steps=25, lr=1e-2, batch_size=4), seed=0, progress=False)
    after = _name_attention(pipe, "QR code", latents, t)
    assert after < 0.5 * before


def test_forget_me_not_prompts_with_the_name_alone(pipe):
    """What its docstring says: the images' captions are not used, only the concept's name."""
    seen = []
    pipe.text_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images = [Image.new("RGB", (16, 16))] * 2
    resteer(pipe, images, "QR code", FMNConfig(steps=2, batch_size=2), seed=0, progress=False)
    assert len(seen) == 2 and all(ids.equal(token_ids(pipe.tokenizer, ["QR code"] * 2)) for ids in seen)


def test_esd_x_only_touches_cross_attention(pipe):
    before = {n: p.clone() for n, p in pipe.unet.named_parameters()}
    erase(pipe, "watermark", ESDConfig(steps=3, ddim_steps=3, lr=1e-2), seed=0, progress=False)
    changed = {n for n, p in pipe.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("attn2" in n for n in changed)


class _FromEpsilon(torch.nn.Module):
    """A model that predicts x0 ("sample") or v, made from an epsilon model: what it says at each step
    implies exactly the epsilon model's prediction."""

    def __init__(self, unet, alphas_cumprod, prediction_type):
        super().__init__()
        self.unet, self.alphas_cumprod, self.prediction_type = unet, alphas_cumprod, prediction_type

    config = property(lambda self: self.unet.config)
    device = property(lambda self: self.unet.device)
    dtype = property(lambda self: self.unet.dtype)

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        eps = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
        ab = self.alphas_cumprod[int(timestep)].to(sample.dtype)
        out = (sample - (1 - ab).sqrt() * eps) / ab.sqrt() if self.prediction_type == "sample" else (eps - (1 - ab).sqrt() * sample) / ab.sqrt()
        return UNet2DConditionOutput(sample=out)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_sld_guides_a_model_that_predicts_x0_or_v_as_it_guides_the_epsilon_model_it_equals(pipe, prediction_type):
    """SLD's threshold and scale are rules on epsilon: on an x0 model they would pick about the other
    elements (measured 0.17 apart in pixels here, where SLD itself moves them 0.09). In float64, so that
    no element near the threshold falls on the other side by rounding."""
    pipe.to(torch.float64)
    def as_predicting(unet, kind):
        return StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
                                       scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=kind),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def draw(base, **sld):
        sampler = sld_pipeline(base)
        sampler.safety_concept = "QR code"
        with torch.no_grad():
            return sampler(prompt=["a red circle", "a blue square"], generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
                           num_inference_steps=12, guidance_scale=7.5, output_type="np", **{**SLD_STRONG, **sld}).images

    on_epsilon = draw(as_predicting(pipe.unet, "epsilon"))
    converted = draw(as_predicting(_FromEpsilon(pipe.unet, pipe.scheduler.alphas_cumprod, prediction_type), prediction_type))
    assert np.abs(converted - on_epsilon).max() < 1e-6
    assert np.abs(draw(as_predicting(pipe.unet, "epsilon"), sld_guidance_scale=0) - on_epsilon).max() > 0.05  # SLD does act


def test_methods_are_found_by_name_or_import_path():
    assert set(REGISTRY) >= {"sd", "np", "esd", "sld", "fmn", "ge-name", "ge-geometry", "ge-full", "geom-erasing", "ge-detector", "oracle"}
    assert get_method("tests.plugin_method:WordyNegative").name == "wordy-negative"
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")
    with pytest.raises(ValueError, match="cannot import"):
        get_method("no.such.module:Thing")


def test_a_misspelt_built_in_method_is_suggested_and_no_installed_plug_in_is_said_as_none(monkeypatch):
    """A typo of a built-in method's name names it, as one of an installed plug-in's does; with no
    plug-in installed the message says none, not an empty list."""
    from benchmark.methods import plugins

    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    with pytest.raises(ValueError, match=r"^unknown method 'geom-erasng' \(did you mean 'geom-erasing'\?\) \(known: sd, .*; "
                                         r"installed plug-ins \(implicit_concept.methods entry points\): none; "
                                         r"or package.module:Class, or path/to/file.py:Class\)$"):
        get_method("geom-erasng")
    with pytest.raises(ValueError, match=r"^unknown method 'zzzz' \(known: "):
        get_method("zzzz")  # nothing near: no suggestion


def test_an_edit_of_sd_is_made_once_per_sd_model_and_edit_settings(tmp_path):
    """ESD and FMN edits are cached; a new ``sd`` (rebuilt data, other settings) or a changed edit is made anew."""
    from pathlib import Path

    from benchmark.methods.interface import MethodContext

    class Pipe:
        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model_index.json").write_text("{}")

    sd = {"path": tmp_path / "sd-a"}
    ctx = MethodContext(concepts=("qrcode",), work_dir=tmp_path / "w", seed=0, finetune=lambda ft: sd["path"],
                        load_pipeline=lambda path: Pipe(), train_shards=tmp_path)
    edits = []
    first = ctx.edited_sd("esd", {"lr": 1}, edits.append)
    assert ctx.edited_sd("esd", {"lr": 1}, edits.append) == first and len(edits) == 1
    sd["path"] = tmp_path / "sd-b"
    second = ctx.edited_sd("esd", {"lr": 1}, edits.append)
    third = ctx.edited_sd("esd", {"lr": 2}, edits.append)
    assert len({first, second, third}) == 3 and len(edits) == 3
    assert (third / "esd.json").is_file()


def test_an_edit_of_sd_is_kept_when_the_run_folder_is_moved_whole(tmp_path):
    """A lab moves or copies a run folder (to scratch, to another node) and resumes: ESD's and FMN's
    edits (minutes at the tiny scale, hours at SD's) are found again, not made anew."""
    import shutil
    from pathlib import Path

    from benchmark.methods.interface import MethodContext

    class Pipe:
        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model_index.json").write_text("{}")

    def context(run: Path) -> MethodContext:
        return MethodContext(concepts=("qrcode",), work_dir=run / "methods" / "icd-qrcode", seed=0,
                             finetune=lambda ft: run / "models" / "icd-qrcode" / "plain-1234" / "pipeline",
                             load_pipeline=lambda path: Pipe(), train_shards=run)

    edits = []
    first = context(tmp_path / "run").edited_sd("esd", {"lr": 1}, edits.append)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    again = context(tmp_path / "moved").edited_sd("esd", {"lr": 1}, edits.append)
    assert len(edits) == 1 and again == tmp_path / "moved" / first.relative_to(tmp_path / "run")
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    other = MethodContext(concepts=("qrcode",), work_dir=tmp_path / "copy" / "methods" / "icd-qrcode", seed=0,
                          finetune=lambda ft: tmp_path / "copy" / "models" / "icd-qrcode" / "plain-5678" / "pipeline",
                          load_pipeline=lambda path: Pipe(), train_shards=tmp_path)
    assert other.edited_sd("esd", {"lr": 1}, edits.append).name != again.name and len(edits) == 2, "another sd is edited anew"


def test_an_edit_of_sd_runs_under_the_tracks_threads_whatever_the_process_has(tmp_path):
    """ESD's and FMN's training arithmetic depends on the thread count (measured: 4e-7 apart after
    100 ESD steps on 1 and 2 threads), so an edit runs under the track's count, in the main process
    or a worker, and the process gets its own count back."""
    from benchmark.methods.interface import MethodContext

    class Pipe:
        def save_pretrained(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model_index.json").write_text("{}")

    seen = []
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for threads in (1, 1, 2):
            ctx = MethodContext(concepts=("qrcode",), work_dir=tmp_path / "w", seed=0, finetune=lambda ft: tmp_path / "sd",
                                load_pipeline=lambda path: Pipe(), train_shards=tmp_path, threads=threads)
            ctx.edited_sd("esd", {"lr": 1}, lambda pipe: seen.append(torch.get_num_threads()))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    assert seen == [1, 2]  # made once under 1 thread, and anew under another count


def test_a_plug_in_in_the_working_folder_is_found_as_the_console_script_runs(tmp_path):
    """The README's ``--method mylab.methods:WordyNegative`` from a lab's own folder, without PYTHONPATH."""
    import os
    import subprocess
    import sys

    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "__init__.py").write_text("")
    (tmp_path / "mylab" / "methods.py").write_text((Path(__file__).with_name("plugin_method.py")).read_text())
    code = (
        "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "  # as a console script starts
        "from benchmark.methods import get_method; print(get_method('mylab.methods:WordyNegative').name)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "wordy-negative", done.stderr[-1500:]


def test_a_track_sets_geom_erasing_choices_for_all_methods_or_for_one():
    from benchmark.methods.finetuned import FINETUNED

    settings = {"alpha": 3.0, "grid": 4, "ge-full": {"grid": 8}}
    full = FINETUNED["ge-full"].geom_config(settings, ("qrcode",))
    geometry = FINETUNED["ge-geometry"].geom_config(settings, ("qrcode",))
    assert (full.grid, full.alpha, full.reweight) == (8, 3.0, True)
    assert (geometry.grid, geometry.alpha, geometry.reweight) == (4, 3.0, False)
    assert FINETUNED["sd"].geom_config(settings, ("qrcode",)).geometry is False
    noisy = FINETUNED["ge-noisy-0.4"].geom_config({}, ("qrcode",))
    assert (noisy.geometry_source, noisy.degrade_iou) == ("degraded", 0.4)


def test_geom_erasing_on_detector_boxes_trains_at_the_detectors_calibrated_thresholds():
    """ge-detector and ge-classifier take boxes where the evaluator would count them; the fine-tunes of
    ground-truth methods do not depend on the detector."""
    from types import SimpleNamespace

    from benchmark.methods.finetuned import FINETUNED
    from benchmark.methods.interface import MethodContext

    detector = SimpleNamespace(thresholds={"qrcode": 0.25, "watermark": 0.8, "text": 0.4})
    ctx = MethodContext(concepts=("qrcode", "watermark"), work_dir=Path("w"), seed=0, finetune=lambda ft: Path("x"),
                        load_pipeline=lambda p: None, train_shards=Path("s"), detector=detector)
    for name in ("ge-detector", "ge-classifier"):
        assert FINETUNED[name].finetunes(ctx)[-1].geom.detector_confidence == {"qrcode": 0.25, "watermark": 0.8}
    assert FINETUNED["ge-full"].finetunes(ctx)[-1].geom.detector_confidence == 0.25
    with pytest.raises(ValueError, match="ge-detector takes its boxes from the benchmark's detector"):
        FINETUNED["ge-detector"].finetunes(MethodContext(concepts=("qrcode",), work_dir=Path("w"), seed=0, finetune=lambda ft: Path("x"),
                                                         load_pipeline=lambda p: None, train_shards=Path("s")))


def test_model_removal_starts_from_sd_and_declares_it_first():
    from benchmark.methods.finetuned import FINETUNED
    from benchmark.methods.interface import FineTune, MethodContext

    ctx = MethodContext(concepts=("qrcode",), work_dir=Path("w"), seed=0, finetune=lambda ft: Path("x"),
                        load_pipeline=lambda p: None, train_shards=Path("s"))
    sd, own = FINETUNED["ge-model-removal"].finetunes(ctx)
    assert sd == FineTune() and own.start == "sd" and own.geom.setting == "model_removal"
    assert own.training["train_text"] == "new_tokens" and own.geom.concept_token
    with pytest.raises(ValueError, match="start"):
        FineTune(start="oracle")


def test_a_track_sub_table_must_name_a_fine_tuned_method():
    from benchmark.track import TrackError, load_track
    from benchmark.track_check import check_track

    with pytest.raises(TrackError, match=r"\[geom_erasing.ge-fulll\]"):
        check_track(load_track("debug", {"geom_erasing": {"ge-fulll": {"grid": 8}}}))
    with pytest.raises(TrackError, match="grid"):
        check_track(load_track("debug", {"geom_erasing": {"ge-full": {"grid": 0}}}))


def test_a_track_declares_training_seeds_for_some_methods():
    from benchmark.track import TrackError, load_track

    track = load_track("debug", {"seeds": [0, 1, 2], "seed_methods": ["sd", "ge-full"]})
    assert track.seeds == (0, 1, 2) and track.seed_methods == ("sd", "ge-full")
    with pytest.raises(TrackError, match="two or more distinct seeds"):
        load_track("debug", {"seeds": [0], "seed_methods": ["sd"]})
    with pytest.raises(TrackError, match="distinct integers"):
        load_track("debug", {"seeds": [0, 0, 1]})
    with pytest.raises(TrackError, match="not among its methods"):
        load_track("debug", {"seeds": [0, 1], "seed_methods": ["ge-fulll"]})


def test_a_fine_tune_trains_with_its_own_seed_when_it_has_one(monkeypatch, tmp_path):
    """Seed 3 of sd and the track seed's sd are different fine-tunes, cached apart; Model Removal's
    sd starts from the same seed as itself."""
    from dataclasses import replace

    from benchmark import stages
    from benchmark.methods.finetuned import FINETUNED
    from benchmark.methods.interface import FineTune, MethodContext
    from tests.real_runs import real_run

    trained = []
    def train(base, data, out, config, **kw):
        trained.append((config.seed, config.geom.setting))
        out.mkdir(parents=True, exist_ok=True)
        return out

    monkeypatch.setattr(stages, "train", train)
    monkeypatch.setattr(stages, "finetune_key", lambda base, subset, config, detector: f"{config.seed}-{config.geom.setting}")
    run = real_run(tmp_path, {"finetune": {"steps": 1}, "seed": 0})
    stages.finetune(run, Path("base"), Path("sub"), FineTune(seed=3), detector=None)
    stages.finetune(run, Path("base"), Path("sub"), FineTune(), detector=None)
    _, removal = FINETUNED["ge-model-removal"].finetunes(MethodContext(concepts=("qrcode",), work_dir=Path("w"), seed=0, finetune=None,
                                                                            load_pipeline=None, train_shards=Path("s")))
    stages.finetune(run, Path("base"), Path("sub"), replace(removal, seed=5), detector=None)
    assert trained == [(3, "data_removal"), (0, "data_removal"), (5, "data_removal"), (5, "model_removal")]


def test_a_plug_in_name_that_is_a_built_in_or_not_a_folder_name_or_twice_in_a_run_is_refused():
    from benchmark.track import TrackError, load_track
    from benchmark.track_check import check_track

    with pytest.raises(ValueError, match="NamedLikeSd: name 'sd' is the built-in method's"):
        get_method("tests.plugin_method:NamedLikeSd")
    with pytest.raises(ValueError, match=r"EscapingName: name '../../outside' must be 1 to 64 of letters"):
        get_method("tests.plugin_method:EscapingName")
    assert get_method("tests.plugin_method:WordyNegative").name == "wordy-negative"
    track = load_track("debug")
    with pytest.raises(TrackError, match=r"--method: \['wordy-negative'\] named more than once"):
        check_track(track, ["tests.plugin_method:WordyNegative", "sd", "tests.plugin_method:WordyNegative"])
    with pytest.raises(TrackError, match=r"--method: .*NamedLikeSd: name 'sd'"):
        check_track(track, ["tests.plugin_method:NamedLikeSd"])
    check_track(track, ["tests.plugin_method:WordyNegative", "sd"])


def test_a_plug_in_that_breaks_the_interface_is_refused_by_name(tmp_path):
    from dataclasses import replace

    from benchmark.failures import MethodFailed
    from benchmark.methods.interface import FineTune, Generator, MethodContext, checked_generator, declared_finetunes

    with pytest.raises(ValueError, match="NeedsArguments\\(\\) cannot be made without arguments"):
        get_method("tests.plugin_method:NeedsArguments")
    method = get_method("tests.plugin_method:ReturnsPipeline")
    ctx = MethodContext(concepts=("qrcode",), work_dir=tmp_path, seed=0, finetune=lambda ft: tmp_path,
                        load_pipeline=lambda path: (lambda **kwargs: None), train_shards=tmp_path)
    with pytest.raises(ValueError, match="method returns-pipeline: finetunes\\(\\) gave str, not a FineTune"):
        declared_finetunes(method, ctx)
    with pytest.raises(ValueError, match="method returns-pipeline: build\\(\\) returned function, not a Generator"):
        checked_generator(method, method.build(ctx))
    pipeline = ctx.load_pipeline(tmp_path)
    for bad, problem in [(Generator("a path"), "pipeline is a str"), (Generator(pipeline, None), "negative_prompt is a NoneType"),
                         (Generator(pipeline, "", [("sld_guidance_scale", 3)]), "call_kwargs is a list"),
                         (Generator(pipeline, "", {"guidance_scale": 3, "height": 128}), "call_kwargs sets guidance_scale, height, which the track fixes"),
                         (Generator(pipeline, "", {"timesteps": [999, 500, 1]}), "call_kwargs sets timesteps, which the track fixes"),
                         (Generator(pipeline, "", {"sigmas": [14.6, 1.0, 0.1]}), "call_kwargs sets sigmas, which the track fixes"),
                         (Generator(pipeline, "", {"callback": print}), "call_kwargs must hold JSON values"),
                         (Generator(pipeline, "", {"guidance_rescale": 0.7, "negative_prompt_embeds": torch.zeros(1, 77, 8)}),
                          "call_kwargs must hold JSON values, as they are recorded with the images; its 'negative_prompt_embeds' "
                          r"is a Tensor \(.*\)\. Give a tensor or a callback through a pipeline of your own")]:
        with pytest.raises(ValueError, match=f"method returns-pipeline: Generator.{problem}"):
            checked_generator(method, bad)
    with pytest.raises(MethodFailed, match=r"^method raises-in-build: finetunes\(ctx\) raised IndexError"):
        declared_finetunes(get_method("tests.plugin_method:RaisesInBuild"), replace(ctx, concepts=()))
    wordy = get_method("tests.plugin_method:WordyNegative")
    assert declared_finetunes(wordy, ctx) == [FineTune()]
    good = Generator(pipeline, "logo", {"sld_guidance_scale": 3})
    assert checked_generator(wordy, good) is good


def test_a_fine_tune_on_data_other_than_contaminated_or_clean_is_refused():
    """A typo ("Clean") or a path in FineTune.data would train on the contaminated data under another
    folder name, or leave the run's folder: refused when the FineTune is made."""
    from dataclasses import replace

    from benchmark.methods.interface import FineTune

    for bad in ("Clean", "clean ", "clean_twins", "../../../escaped", ""):
        with pytest.raises(ValueError, match=r"FineTune.data must be one of 'contaminated', 'clean', got"):
            FineTune(data=bad)
        with pytest.raises(ValueError, match="FineTune.data"):
            replace(FineTune(), data=bad)
    with pytest.raises(ValueError, match="FineTune.seed"):
        FineTune(seed="11")
    with pytest.raises(ValueError, match="FineTune.training"):
        FineTune(training=[("steps", 1)])
    assert FineTune(data="clean").data == "clean"


def test_a_plug_ins_own_fine_tune_seed_is_kept_under_the_tracks_seeds():
    """seeded() gives a fine-tune the training seed only when it sets none of its own."""
    from benchmark.method_evaluation import seeded
    from benchmark.methods.interface import FineTune, MethodContext

    asked = []
    ctx = MethodContext(concepts=("qrcode",), work_dir=Path("w"), seed=0, finetune=lambda ft: asked.append(ft.seed) or Path("x"),
                        load_pipeline=lambda p: None, train_shards=Path("s"))
    for seed in (0, 7):
        run_ctx = seeded(ctx, seed)
        run_ctx.finetune(FineTune(seed=11))
        run_ctx.finetune(FineTune(seed=12))
        run_ctx.finetune(FineTune())
    assert asked == [11, 12, 0, 11, 12, 7]
    assert FineTune(seed=11).under_seed(3).seed == 11 and FineTune().under_seed(3).seed == 3


def test_np_samples_the_plain_fine_tune_with_the_concepts_name_as_negative_prompt():
    """np is sd plus one thing, the concept's name as negative prompt: without it np's row is sd's."""
    from benchmark.methods.interface import FineTune, MethodContext

    asked = []
    ctx = MethodContext(concepts=("qrcode", "watermark"), work_dir=Path("w"), seed=0,
                        finetune=lambda ft: asked.append(ft) or Path("sd-folder"),
                        load_pipeline=lambda path: f"pipeline of {path}", train_shards=Path("s"))
    generator = get_method("np").build(ctx)
    assert generator.negative_prompt == "QR code, watermark"
    assert generator.pipeline == "pipeline of sd-folder" and asked == [FineTune()]


def test_forget_me_not_re_steers_on_the_contaminated_images_only(monkeypatch):
    """FMN tunes attention on images that carry the concept; a clean image has nothing to re-steer."""
    from types import SimpleNamespace

    from benchmark.methods import forget_me_not
    from benchmark.methods.interface import MethodContext

    samples = [SimpleNamespace(meta=SimpleNamespace(contaminated=c), image=name)
               for name, c in (("clean-0", False), ("dirty-1", True), ("clean-2", False), ("dirty-3", True))]
    monkeypatch.setattr(forget_me_not, "iter_samples", lambda shards: iter(samples))
    given = []
    monkeypatch.setattr(forget_me_not, "resteer", lambda pipe, images, phrase, config, seed, progress: given.append((images, phrase)))
    ctx = MethodContext(concepts=("qrcode",), work_dir=Path("w"), seed=0, finetune=lambda ft: Path("sd"),
                        load_pipeline=lambda path: path, train_shards=Path("s"))
    monkeypatch.setattr(MethodContext, "edited_sd", lambda self, tag, record, edit: edit("pipe") or Path("edited"))
    get_method("fmn").build(ctx)
    assert given == [(["dirty-1", "dirty-3"], "QR code")]


def test_the_robustness_and_classifier_rows_switch_what_their_names_say():
    """ge-noisy-0.5 moves boxes to IoU 0.5, not 0.4; ge-classifier knows whether, never where: no location tokens."""
    from benchmark.methods.finetuned import FINETUNED

    half = FINETUNED["ge-noisy-0.5"].geom_config({}, ("qrcode",))
    assert (half.geometry_source, half.degrade_iou, half.geometry, half.reweight) == ("degraded", 0.5, True, True)
    classifier = FINETUNED["ge-classifier"].geom_config({}, ("qrcode",))
    assert (classifier.geometry_source, classifier.concept_name, classifier.geometry, classifier.reweight) == ("detector", True, False, False)


def test_sld_samples_with_the_strong_preset_away_from_the_concepts_name(monkeypatch):
    """SLD's safety concept is what it guides away from: left at diffusers' default (nudity), sld erases nothing of ours."""
    from types import SimpleNamespace

    from benchmark.methods import sld
    from benchmark.methods.interface import MethodContext

    monkeypatch.setattr(sld, "sld_pipeline", lambda base: SimpleNamespace(base=base, safety_concept="hate, harassment, violence"))
    ctx = MethodContext(concepts=("watermark",), work_dir=Path("w"), seed=0, finetune=lambda ft: Path("sd"),
                        load_pipeline=lambda path: f"pipeline of {path}", train_shards=Path("s"))
    generator = get_method("sld").build(ctx)
    assert generator.pipeline.safety_concept == "watermark" and generator.pipeline.base == "pipeline of sd"
    assert generator.call_kwargs == SLD_STRONG and generator.negative_prompt == ""


def test_esd_steps_the_names_prediction_toward_negative_guidance_away_from_it(pipe):
    """ESD's target is e*(x, '') - eta (e*(x, c) - e*(x, '')): one step lowers the loss to that target at the
    point it trained on. With the sign flipped the target is the model's own prediction and nothing moves."""
    from diffusers import DDIMScheduler

    from benchmark.methods.esd import _encode

    phrase, unet = "QR code", pipe.unet
    with torch.no_grad():  # the x_t and t erase() draws first for seed 0 and ddim_steps=2 (stop is always 1)
        cond, uncond = _encode(pipe, phrase), _encode(pipe, "")
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(2)
        rng = torch.Generator("cpu").manual_seed(0)
        stop = int(torch.randint(1, 2, (1,), generator=rng))
        x = torch.randn((1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=rng) * scheduler.init_noise_sigma
        t = scheduler.timesteps[0]
        e_c, e_u = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample.chunk(2)
        x = scheduler.step(e_u + 3.0 * (e_c - e_u), t, x).prev_sample
        t = scheduler.timesteps[stop]
        e_p, e_0 = unet(x, t, encoder_hidden_states=cond).sample, unet(x, t, encoder_hidden_states=uncond).sample
        target = e_0 - 1.0 * (e_p - e_0)
        before = float(((e_p - target) ** 2).mean())
    erase(pipe, phrase, ESDConfig(steps=1, lr=1e-3, ddim_steps=2, negative_guidance=1.0), seed=0, progress=False)
    with torch.no_grad():
        after = float(((unet(x, t, encoder_hidden_states=cond).sample - target) ** 2).mean())
    assert after < 0.75 * before


@pytest.mark.parametrize("method", ["esd", "fmn"])
def test_an_edit_of_sd_shows_its_bar_only_when_the_run_shows_progress(pipe, tmp_path, capsys, monkeypatch, method):
    """``--quiet`` took every progress bar away but ESD's and FMN's own."""
    from types import SimpleNamespace

    import benchmark.methods.forget_me_not as fmn
    from benchmark.methods.interface import MethodContext

    carrier = SimpleNamespace(meta=SimpleNamespace(contaminated=True), image=Image.new("RGB", (16, 16), "red"))
    monkeypatch.setattr(fmn, "iter_samples", lambda shards: iter([carrier]))
    for progress in (True, False):
        ctx = MethodContext(concepts=("qrcode",), work_dir=tmp_path, seed=0, finetune=None, load_pipeline=lambda path: pipe,
                            train_shards=tmp_path, settings={"esd": {"steps": 1, "ddim_steps": 2}, "fmn": {"steps": 1}}, progress=progress)
        monkeypatch.setattr(ctx, "edited_sd", lambda tag, record, edit: edit(pipe) or tmp_path)
        get_method(method).build(ctx)
        assert (f"{method} 'QR code'" in capsys.readouterr().err) == progress
