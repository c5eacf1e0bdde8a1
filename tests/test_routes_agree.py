"""The three routes README's "For other labs" offers give the same images and the same score fields:
a method plugged into the benchmark (route 1), its pipeline folder handed to ``score-pipeline``
(route 2: the folder it loads, or what its build returns saved with ``save_portable_pipeline``), and
its images handed to ``score-images`` (route 3). A micro pipeline and a stub detector whose
confidences are a hash of each image's pixels, so one pixel level of difference (another seed,
negative prompt, sampler, size or prompt order) moves an ICR."""
import hashlib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from benchmark import external, method_evaluation
from benchmark.leaderboard import summary_as_results
from benchmark.methods import get_method
from benchmark.models.pipelines import save_portable_pipeline
from benchmark.track import load_track
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.content_hashes import folder_sha256
from implicit_concept.detector.inference import Detection
from implicit_concept.scoring import CLEAN_REFERENCE_NAME
from tests.real_runs import real_run
from tests.test_handovers import MICRO, saved  # noqa: F401 (fixture)

#: The score fields a summary.json row shares with a results.json row (README, "For other labs").
SCORE_FIELDS = ("icr", "fp_rate", "crosscheck", "prompts_sha256", "quality", "quality_detail", "quality_kinds", "fid_x_icr")

LAB = '''
from benchmark.methods.interface import Generator, Method


class Handover(Method):
    """Samples a folder a lab saved, with a negative prompt of its own."""
    name = "handover"

    def build(self, ctx):
        return Generator(ctx.load_pipeline(FOLDER), negative_prompt=f"{ctx.phrase}, logo, signature")
'''


class PixelHashDetector:
    """A detector whose confidence for each concept is a byte of the sha256 of the image's pixels."""

    def __init__(self, folder):
        self.path = folder / "detector.safetensors"
        self.path.write_bytes(b"stub weights")
        self.thresholds = {c: 0.5 for c in CONCEPT_NAMES}
        self.clean_reference_sha256 = None
        reference = {"source": "stub", "max_conf": {c: [0.1, 0.7, 0.2, 0.3] for c in CONCEPT_NAMES}}
        (folder / CLEAN_REFERENCE_NAME).write_text(json.dumps(reference))

    def detect_many(self, images, conf=0.25, batch=16):
        found = []
        for image in images:
            digest = hashlib.sha256(image.convert("RGB").tobytes()).digest()
            found.append([Detection(c, digest[j] / 255, (0.0, 0.0, 4.0, 4.0))
                          for j, c in enumerate(CONCEPT_NAMES) if digest[j] / 255 >= conf])
        return found


@pytest.fixture
def lab(saved, tmp_path, monkeypatch):
    """The plug-in, importable as ``routeslab:Handover``, sampling a micro pipeline folder."""
    folder = saved("ddim")
    (tmp_path / "routeslab.py").write_text(f"FOLDER = {str(folder)!r}\n" + LAB)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield folder
    sys.modules.pop("routeslab", None)


def _track():
    """The debug track at the micro pipeline's size: two images per prompt (the seed's ``i``), chunks
    that split a prompt's images, three prompts; no quality measure (the same function computes it
    on every route, given the same images)."""
    track = load_track("debug")
    generation = {**track.generation, "image_size": MICRO.image_size, "steps": 2, "chunk_size": 4, "images_per_prompt": 2}
    return replace(track, generation=generation, num_prompts=3, named_prompts=3, quality={"kind": "none"})


def _benchmark_row(track, detector, tmp_path, subset="icd-qrcode"):
    """Route 1: the plug-in evaluated as ``implicit-concept benchmark --method routeslab:Handover`` does."""
    run = real_run(tmp_path / "run", track, cache=tmp_path / "cache")
    concepts = dict(track.groups())[subset]
    ctx = method_evaluation.method_context(run, tmp_path / "base", tmp_path / subset, concepts, detector)
    evaluation = method_evaluation.Evaluation(subset, method_evaluation.evaluation_prompts(run, tmp_path / subset),
                                              track.generation_settings(), detector, [])
    rows, _ = method_evaluation.evaluate_method(run, "routeslab:Handover", ctx, evaluation)
    return rows, run.root / "images" / subset / "handover", ctx


def _detections(scores):
    """Each image's file name, detections and cross-checks from a scores.json (the names are paths)."""
    return [{**image, "name": Path(image["name"]).name} for image in json.loads(scores.read_text())["images"]]


def _pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_a_plug_in_its_pipeline_folder_and_its_images_score_the_same(lab, tmp_path):
    track = _track()
    detector = PixelHashDetector(tmp_path)
    rows, images, ctx = _benchmark_row(track, detector, tmp_path)
    (row,) = rows
    assert row["status"] == "ok" and row["negative_prompt"] == "QR code, logo, signature"
    drawn = _pngs(images)
    assert len(drawn) == track.num_prompts * 2
    judging = external.Judging(track=track, detector=detector, reference=None, cache=tmp_path / "cache")

    # Route 2: the folder the plug-in samples, with the negative prompt its row records; and what its
    # build returns, saved portable with its negative prompt (read back from negative_prompt.txt).
    folder = external.score_pipeline(lab, tmp_path / "sp-folder", judging, negative_prompt=row["negative_prompt"], progress=False)
    built = get_method("routeslab:Handover").build(ctx)
    portable = save_portable_pipeline(built.pipeline, tmp_path / "portable", negative_prompt=built.negative_prompt)
    saved_copy = external.score_pipeline(portable, tmp_path / "sp-portable", judging, progress=False)
    # Route 3: the images the benchmark wrote.
    handed = external.score_image_folder(images, tmp_path / "si", judging)

    for name, summary in (("sp-folder", folder), ("sp-portable", saved_copy)):
        assert _pngs(tmp_path / name / "images") == drawn, f"{name}: other images than the benchmark drew"
        assert summary["inputs"]["negative_prompt"] == row["negative_prompt"]
        assert summary["inputs"]["generation"] == asdict(track.generation_settings())
        assert summary["inputs"]["scheduler"]["class"] == row["model"]["scheduler"]
    assert handed["inputs"] == {"images": str(images), "images_sha256": folder_sha256(images, only=sorted(drawn)),
                                "formats": {"PNG": len(drawn)}, "not_scored": {"count": 0, "images": []}}

    flags = []
    for name, summary in (("sp-folder", folder), ("sp-portable", saved_copy), ("si", handed)):
        assert summary["overrides"] == {}, f"{name}: scored off the track's protocol"
        assert summary["prompts"]["count"] == track.num_prompts and summary["prompts"]["images"] == len(drawn)
        theirs = next(r for r in summary["rows"] if r["concept"] == row["concept"])
        for field in SCORE_FIELDS:
            assert theirs.get(field) == row.get(field), f"{name}: {field} differs from the benchmark's row"
        # The leaderboard reads the same row from the --out folder, on the same evaluator.
        board = summary_as_results(tmp_path / name)
        board_row = next(r for r in board["rows"] if r["concept"] == row["concept"])
        assert board_row["icr"] == row["icr"] and board_row["prompts_sha256"] == row["prompts_sha256"]
        assert board["detector"]["thresholds"] == detector.thresholds and board["config"]["track_sha256"] == track.sha256
        flags.append(_detections(tmp_path / name / "scores.json"))
    assert flags[0] == flags[1] == flags[2] == _detections(tmp_path / "run" / "scores" / "icd-qrcode" / "handover.json"), \
        "every image's detections agree, in the same order"
    icr = row["icr"]
    assert 0 < icr["value"] < 1, "the stub detector finds the concept in some images only: the ICR can move"


def _rescheduled(folder, out, scheduler):
    """A copy of ``folder`` saved with ``scheduler`` (a class, or a config to save as the folder's own class)."""
    import shutil

    copy = Path(shutil.copytree(folder, out))
    index = json.loads((copy / "model_index.json").read_text())
    if isinstance(scheduler, dict):
        config = {**json.loads((copy / "scheduler" / "scheduler_config.json").read_text()), **scheduler}
        (copy / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    else:
        shutil.rmtree(copy / "scheduler")
        scheduler.from_config(json.loads((folder / "scheduler" / "scheduler_config.json").read_text())).save_pretrained(copy / "scheduler")
        index["scheduler"] = ["diffusers", scheduler.__name__]
        (copy / "model_index.json").write_text(json.dumps(index))
    return copy


def test_a_paper_track_run_on_a_base_saved_with_another_sampler_is_refused_at_the_start(tmp_path):
    """The benchmark's methods sample with their base's scheduler (fine-tunes keep it); score-pipeline
    judges a handed-over folder with the track's (SD v1.5's PNDM on the paper tracks). A --pretrained
    saved with Euler, or with PNDM at other settings, made a run's rows and a handed-over copy of
    the same model draw other images, both recorded as on the track's protocol."""
    from diffusers import EulerDiscreteScheduler

    from benchmark.benchmark_run import BenchmarkRun
    from tests.test_pretrained_check import _tiny_sd

    debug = load_track("debug")  # as the paper track is (no embedded base, SD's size), on the debug track's embedded data
    track = replace(debug, base={}, generation={**debug.generation, "image_size": 256})
    assert track.needs_pretrained and type(track.sampler()).__name__ == "PNDMScheduler"
    sd = _tiny_sd(tmp_path / "sd")  # saved with SD v1.5's PNDM
    BenchmarkRun(track=track, name="pndm", runs_root=tmp_path / "runs", pretrained=sd).check_start()
    for name, scheduler, problem in (
        ("euler", EulerDiscreteScheduler, r"EulerDiscreteScheduler, not the track's PNDMScheduler"),
        ("offset", {"steps_offset": 0, "skip_prk_steps": False}, r"skip_prk_steps = False, not True; steps_offset = 0, not 1"),
    ):
        folder = _rescheduled(sd, tmp_path / name, scheduler)
        with pytest.raises(ValueError, match=rf"^--pretrained {folder}/scheduler/scheduler_config.json: {problem}; the track samples "
                                             r"with PNDMScheduler \(score-pipeline judges every handed-over folder with it\)"):
            BenchmarkRun(track=track, name=name, runs_root=tmp_path / "runs", pretrained=folder).check_start()
        assert not (tmp_path / "runs" / name).exists()
    # The model's own noise schedule and prediction type are its own: SD 2's v-prediction is no other sampler.
    v = _rescheduled(sd, tmp_path / "v", {"prediction_type": "v_prediction"})
    BenchmarkRun(track=track, name="v", runs_root=tmp_path / "runs", pretrained=v).check_start()


def test_a_run_records_its_base_by_weights_and_a_base_sampling_off_the_track_as_such(saved, tmp_path):
    """A ``--pretrained`` base on a track with an embedded one keeps its own scheduler through every
    fine-tune, while score-pipeline judges a handed-over folder with the track's: the run records that
    its methods sampled off the protocol (results.md and the leaderboard say so), and its base by
    weights, so runs on other bases are never ranked together."""
    from benchmark.models.pipeline_identity import weights_sha256
    from benchmark.protocol import _base_record
    from tests.test_pretrained_check import _tiny_sd

    track = load_track("debug")
    own = saved("ddim")  # saved with the track's sampler, as the embedded base is
    assert _base_record(real_run(tmp_path / "run", track), own) == {"from": "track", "weights_sha256": weights_sha256(own)}
    sd = _tiny_sd(tmp_path / "sd")  # saved with SD v1.5's PNDM
    record = _base_record(real_run(tmp_path / "run", track, pretrained=sd), sd)
    assert record["from"] == "--pretrained" and record["weights_sha256"] == weights_sha256(sd) != weights_sha256(own)
    assert record["sampler"] == "PNDMScheduler, not the track's DDIMScheduler"
    offset = _rescheduled(own, tmp_path / "offset", {"steps_offset": 3})
    assert _base_record(real_run(tmp_path / "run", track, pretrained=offset), offset)["sampler"].startswith("steps_offset = 3, not ")
