"""The debug track end to end through the CLI: every stage, every method, resumable, pluggable."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.models.pipeline_identity import weights_sha256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    args = ["benchmark", "--track", "debug", "--runs", str(root / "runs"), "--data", str(root / "data"),
            "--cache", str(root / "cache"), "--quiet"]
    assert main(args) == 0
    return root, args


def test_debug_track_reports_every_method_and_concept(debug_run):
    root, _ = debug_run
    results = json.loads((root / "runs" / "debug" / "results.json").read_text())
    assert results["track"] == "debug" and results["config"]["track_sha256"]
    rows = {(r["concept"], r["method"]): r for r in results["rows"]}
    # The embedded base, recorded by its weights, samples with the track's sampler: nothing off the protocol.
    base = Path(rows[("qrcode", "base")]["model"]["unet"]).parent
    assert results["base"] == {"from": "track", "weights_sha256": weights_sha256(base)}
    methods = ["base", "sd", "np", "esd", "sld", "fmn", "ge-name", "ge-geometry", "ge-full", "ge-detector",
               "ge-classifier", "ge-noisy-0.5", "ge-model-removal", "oracle"]
    for concept in ("qrcode", "watermark", "text"):
        for m in methods:
            row = rows[(concept, m)]
            assert row["status"] == "ok", row
            assert 0 <= row["icr"]["ci"][0] <= row["icr"]["value"] <= row["icr"]["ci"][1] <= 1
            assert row["icr"]["n"] == 8
            assert "scene_fid" in row["quality"] and "prompt_following" in row["quality"]
        assert "<l" in rows[(concept, "ge-full")]["negative_prompt"]
        # Model Removal starts from sd and learns only token embeddings: its UNet is sd's, bit for bit.
        unets = [Path(rows[(concept, m)]["model"]["unet"]) / "diffusion_pytorch_model.safetensors" for m in ("sd", "ge-model-removal")]
        assert unets[0] != unets[1] and unets[0].read_bytes() == unets[1].read_bytes()
        assert f"<{concept}>" in rows[(concept, "ge-model-removal")]["negative_prompt"]
        assert rows[(concept, "sd")]["negative_prompt"] == ""
    checks = results["targets"]["checks"]
    assert len(checks) == 6 * 3 and all(c["met"] in (True, False) for c in checks)
    # The base asked for each concept by name, scored on that concept.
    assert set(results["named_base"]) == {"qrcode", "watermark", "text"}
    assert all(v["n_prompts"] == 4 and 0 <= v["icr"]["value"] <= 1 for v in results["named_base"].values())
    named = sorted((root / "runs" / "debug" / "images" / "named-base" / "qrcode").glob("*.png"))
    assert len(named) == 4
    # The detector trained with the base's generations as background and calibrated its thresholds on more of them.
    detector = json.loads((Path(results["detector"]["path"]).parent / "detector.json").read_text())
    assert detector["inputs"]["backgrounds"]["images"] == 8 and detector["inputs"]["calibration"]["images"] == 8
    assert results["detector"]["thresholds"] == detector["thresholds"] and results["detector"]["published"] is False
    assert "## Targets" in (root / "runs" / "debug" / "results.md").read_text()
    assert (root / "runs" / "debug" / "icr.png").stat().st_size > 0
    assert (root / "runs" / "debug" / "grids" / "icd-qrcode" / "ge-full.png").exists()
    assert len(list((root / "runs" / "debug" / "images" / "icd-text" / "sd").glob("*_0.png"))) == 8


def test_rerun_resumes_from_cache_to_the_same_results(debug_run):
    root, args = debug_run
    first = json.loads((root / "runs" / "debug" / "results.json").read_text())
    images = root / "runs" / "debug" / "images" / "icd-qrcode" / "np"
    (images / "3_0.png").unlink()
    assert main(args) == 0
    second = json.loads((root / "runs" / "debug" / "results.json").read_text())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "timings"} for r in rs]  # noqa: E731
    assert strip(first["rows"]) == strip(second["rows"])
    assert second["timings"]["base"] < 30, "the base model comes from the cache"


def test_a_benchmark_killed_mid_run_resumes_to_the_uninterrupted_results(debug_run, tmp_path):
    """``kill -9`` of the whole command once a fine-tune has a checkpoint, and again once the first
    method's images exist (before it is scored): the same command then continues where it stopped
    and gives the uninterrupted run's rows, images and fine-tuned weights, leaving no temporary."""
    root, _ = debug_run
    methods = ["sd", "ge-full"]
    args = ["benchmark", "--track", "debug", "--runs", str(tmp_path / "runs"), "--data", str(root / "data"),
            "--cache", str(root / "cache"), "--quiet", *[a for m in methods for a in ("--method", m)]]
    run = tmp_path / "runs" / "debug"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for moment in ("models/icd-qrcode/*/checkpoints/step-*", "images/icd-qrcode/sd/*.png"):
        with open(tmp_path / "killed.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], env=env, start_new_session=True,
                                    stdout=log, stderr=log)
            deadline = time.time() + 600  # the file system is polled: seconds on an idle machine, minutes on a saturated one
            while time.time() < deadline and proc.poll() is None and not list(run.glob(moment)):
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert list(run.glob(moment)) and not (run / "results.json").exists(), \
            f"the kill at {moment} must land mid-run: {(tmp_path / 'killed.log').read_text()[-2000:]}"
    assert main(args) == 0
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name], "a killed writer's temporary is left behind"
    alone = {(r["concept"], r["method"]): r for r in json.loads((root / "runs" / "debug" / "results.json").read_text())["rows"]}
    resumed = json.loads((run / "results.json").read_text())["rows"]
    assert sorted({r["method"] for r in resumed}) == sorted(methods)
    for row in resumed:
        twin = alone[(row["concept"], row["method"])]
        for field in ("status", "icr", "fp_rate", "quality", "quality_detail", "fid_x_icr", "crosscheck", "negative_prompt"):
            assert row.get(field) == twin.get(field), (row["concept"], row["method"], field)
        for part in ("unet", "text_encoder"):
            weights = [sorted(Path(r["model"][part]).glob("*.safetensors")) for r in (row, twin)]
            assert [w.read_bytes() for w in weights[0]] == [w.read_bytes() for w in weights[1]] and weights[0], (row["method"], part)
        images = [sorted((r / "images" / row["subset"] / row["method"]).glob("*.png")) for r in (run, root / "runs" / "debug")]
        assert [p.name for p in images[0]] == [p.name for p in images[1]] and images[0]
        assert [p.read_bytes() for p in images[0]] == [p.read_bytes() for p in images[1]], row["method"]


def test_changed_track_is_refused(debug_run, tmp_path, capsys):
    root, args = debug_run
    track = tmp_path / "debug2.toml"
    from benchmark.track import TRACKS_DIR

    track.write_text((TRACKS_DIR / "debug.toml").read_text().replace("num_prompts = 8", "num_prompts = 6"))
    changed = [a if a != "debug" else str(track) for a in args] + ["--name", "debug"]
    before = (root / "runs" / "debug" / "results.json").read_bytes()
    assert main(changed) == 2
    assert f"{root / 'runs' / 'debug'}: was made with another config (run.json differs in track.num_prompts, track_sha256)" \
        in capsys.readouterr().err
    assert (root / "runs" / "debug" / "results.json").read_bytes() == before


def test_other_labs_plug_in_a_method_or_score_their_outputs(debug_run, tmp_path):
    root, args = debug_run
    assert main(args + ["--name", "plugin", "--method", "tests.plugin_method:WordyNegative"]) == 0
    plugin = json.loads((root / "runs" / "plugin" / "results.json").read_text())
    assert {r["method"] for r in plugin["rows"]} == {"wordy-negative"}
    assert plugin["rows"][0]["negative_prompt"].endswith("logo, signature, caption")
    detector = next((root / "cache" / "detectors").glob("*/detector.safetensors"))
    judged = ["--detector", str(detector), "--track", "debug", "--data", str(root / "data"), "--cache", str(root / "cache")]
    images = root / "runs" / "debug" / "images" / "icd-qrcode" / "sd"
    assert main(["score-images", str(images), *judged, "--out", str(tmp_path / "si")]) == 0
    summary = json.loads((tmp_path / "si" / "summary.json").read_text())
    ours = next(r for r in json.loads((root / "runs" / "debug" / "results.json").read_text())["rows"] if (r["concept"], r["method"]) == ("qrcode", "sd"))
    theirs = next(r for r in summary["rows"] if r["concept"] == "qrcode")
    for field in ("icr", "fp_rate", "quality", "quality_detail", "fid_x_icr"):
        assert theirs[field] == ours[field], field  # the same fields, computed the same way
    pipeline = next(Path(p).parent for p in ours_model(root, "ge-full"))
    assert main(["score-pipeline", str(pipeline), *judged, "--num-prompts", "4", "--steps", "3", "--out", str(tmp_path / "sp")]) == 0
    assert len(list((tmp_path / "sp" / "images").glob("*.png"))) == 4
    summary = json.loads((tmp_path / "sp" / "summary.json").read_text())
    assert "<l" in summary["inputs"]["negative_prompt"] and summary["seed_rule"].startswith("image i of prompt p")
    assert main(["score-images", str(tmp_path / "sp" / "images"), *judged, "--num-prompts", "8", "--out", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("plugin, jobs, problem", [
    ("RaisesInBuild", "1", "icd-qrcode/raises-in-build: build(ctx) raised KeyError: 'lora_scale'"),
    ("RaisesInBuild", "2", "icd-qrcode/raises-in-build: build(ctx) raised KeyError: 'lora_scale'"),
    ("PipelineRaises", "1", "icd-qrcode/pipeline-raises: the pipeline raised RuntimeError: CUDA out of memory (planted)"),
])
def test_a_plug_in_that_raises_is_named_with_its_own_traceback(debug_run, capsys, plugin, jobs, problem):
    """Also from a ``--jobs 2`` worker process, whose traceback reaches the main process as text."""
    root, args = debug_run
    assert main(args + ["--name", f"broken-{plugin}-{jobs}", "--jobs", jobs, "--method", f"tests.plugin_method:{plugin}"]) == 1
    err = capsys.readouterr().err
    assert err.rstrip().endswith(f"error: {problem}")
    assert "plugin_method.py" in err, "the traceback reaches the plug-in's own line"
    assert not (root / "runs" / f"broken-{plugin}-{jobs}" / "results.json").exists()


def test_a_plug_ins_torch_settings_do_not_reach_the_methods_after_it(debug_run):
    """A plug-in that sets float64 as torch's default dtype (and one thread, no grad) after loading
    its pipeline: the next method's images and scores are those of a run without it."""
    root, args = debug_run
    assert main(args + ["--name", "settings", "--method", "tests.plugin_method:ChangesTorchSettings", "--method", "np"]) == 0
    rows = json.loads((root / "runs" / "settings" / "results.json").read_text())["rows"]
    alone = json.loads((root / "runs" / "debug" / "results.json").read_text())["rows"]
    for row in (r for r in rows if r["method"] == "np"):
        twin = next(r for r in alone if (r["concept"], r["method"]) == (row["concept"], "np"))
        assert row["icr"] == twin["icr"] and row["quality"] == twin["quality"]


def ours_model(root, method):
    """The unet folder the debug run's ``method`` sampled with on icd-qrcode, as results.json names it."""
    rows = json.loads((root / "runs" / "debug" / "results.json").read_text())["rows"]
    return [next(r for r in rows if (r["concept"], r["method"]) == ("qrcode", method))["model"]["unet"]]


def test_two_processes_run_the_benchmark_and_train_what_one_trains(debug_run):
    """``accelerate launch`` on several GPUs, here 2 CPU processes under torchrun: both train the base
    and the declared fine-tunes together; the main process alone trains the detector (ultralytics
    must not take the launch for its own DDP run), generates and scores."""
    from safetensors.torch import load_file

    root, _ = debug_run
    methods = ["sd", "esd", "ge-full"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "benchmark.cli", "benchmark", "--track", "debug", "--runs", str(root / "runs2"),
           "--data", str(root / "data"), "--cache", str(root / "cache2"), "--quiet",
           *[a for m in methods for a in ("--method", m)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("## Targets") == 1, "one process reports"
    results = json.loads((root / "runs2" / "debug" / "results.json").read_text())
    assert {(r["method"], r["status"]) for r in results["rows"]} == {(m, "ok") for m in methods}
    assert len(list((root / "cache2" / "detectors").glob("*/detector.safetensors"))) == 1
    one, two = (next((root / c / "bases").glob("*/diffusion/pipeline/unet")) for c in ("cache", "cache2"))
    a, b = (load_file(d / "diffusion_pytorch_model.safetensors") for d in (one, two))
    init = load_file(next((root / "cache" / "bases").glob("*/init/unet")) / "diffusion_pytorch_model.safetensors")
    apart = sum((a[k] - b[k]).abs().sum() for k in a)
    assert apart < 0.01 * sum((a[k] - init[k]).abs().sum() for k in a), "the base trained by 2 processes"


def test_training_seeds_give_every_seed_its_fine_tune_and_a_seed_aware_interval(debug_run, tmp_path):
    """``seeds`` for ``sd``: one fine-tune per seed, each scored; the row's interval covers both."""
    from benchmark.track import TRACKS_DIR

    root, args = debug_run
    track = tmp_path / "debug-seeds.toml"
    track.write_text('seeds = [0, 1]\nseed_methods = ["sd"]\n' + (TRACKS_DIR / "debug.toml").read_text())
    seeded = [a if a != "debug" else str(track) for a in args] + ["--name", "seeds", "--method", "sd"]
    assert main(seeded) == 0
    rows = json.loads((root / "runs" / "seeds" / "results.json").read_text())["rows"]
    row = next(r for r in rows if (r["concept"], r["method"]) == ("qrcode", "sd"))
    assert set(row["seeds"]) == {"0", "1"} and row["icr"]["n_seeds"] == 2
    assert row["seeds"]["0"]["model"]["unet"] != row["seeds"]["1"]["model"]["unet"]
    assert (root / "runs" / "seeds" / "images" / "icd-qrcode" / "sd@seed1").is_dir()
    low, high = row["icr"]["ci"]
    assert low <= min(s["icr"]["value"] for s in row["seeds"].values()) and high >= max(s["icr"]["value"] for s in row["seeds"].values())


def test_two_jobs_train_the_weights_and_make_the_images_one_job_makes(debug_run):
    """``--jobs 2``: fine-tunes, then methods (ESD's edit of sd included), side by side in two
    processes of one thread give the serial run's weights, images and rows, bit for bit."""
    root, args = debug_run
    methods = ["sd", "esd", "ge-full", "ge-model-removal"]
    assert main(args + ["--name", "jobs", "--jobs", "2", *[a for m in methods for a in ("--method", m)]]) == 0
    serial = json.loads((root / "runs" / "debug" / "results.json").read_text())["rows"]
    parallel = json.loads((root / "runs" / "jobs" / "results.json").read_text())["rows"]
    assert sorted({r["method"] for r in parallel}) == sorted(methods)
    for row in parallel:
        twin = next(r for r in serial if (r["concept"], r["method"]) == (row["concept"], row["method"]))
        for part in ("unet", "text_encoder"):
            mine, theirs = Path(row["model"][part]), Path(twin["model"][part])
            assert mine != theirs
            weights = [sorted(folder.glob("*.safetensors")) for folder in (mine, theirs)]
            assert len(weights[0]) == 1 and [w.read_bytes() for w in weights[0]] == [w.read_bytes() for w in weights[1]]
        for field in ("icr", "quality", "fp_rate", "negative_prompt"):
            assert row[field] == twin[field], (row["method"], field)
        images = [sorted((root / "runs" / name / "images" / row["subset"] / row["method"]).glob("*.png")) for name in ("jobs", "debug")]
        assert [p.name for p in images[0]] == [p.name for p in images[1]] and images[0]
        assert [p.read_bytes() for p in images[0]] == [p.read_bytes() for p in images[1]], row["method"]
    timings = json.loads((root / "runs" / "jobs" / "results.json").read_text())["timings"]
    assert any(stage.startswith("methods (") and "2 jobs" in stage for stage in timings)
