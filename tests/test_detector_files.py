"""Hostile detector files and datasets: no code runs from a `.pt` or a label cache, the cached
detector is checked against its recorded sha256, ultralytics' integrations stay off with
ULTRALYTICS_API_KEY set, and nothing is written outside the folders the user named.

Each attack is a file whose unpickling creates a marker folder: the marker must never appear.
"""
import hashlib
import importlib
import json
import os
import pkgutil
import random
import re
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmark.cli import main
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.export import export_detection_dataset
from implicit_concept.detector.inference import Detector, DetectorError
from implicit_concept.detector.training import DetectorScale, ScaleError, train_detector
from implicit_concept.detector.yolo_env import import_ultralytics, ultralytics_call
from implicit_concept.image_stream import ImageReadError, load_image
from implicit_concept.random_states import kept_rngs
from implicit_concept.torch_settings import kept_torch_settings
from tests.real_runs import real_run
from tests.test_detection import TRAINABLE, _solid, _write_shards

#: A few seconds on one CPU core: enough to exercise every ultralytics call the detector makes.
TINY = DetectorScale(name="tiny-test", model="yolov8n.yaml", imgsz=32, epochs=1, batch=4)


class RunsCode:
    """Unpickling this creates ``marker``: a stand-in for any code a crafted file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _crafted_pt(path: Path, marker: Path) -> Path:
    torch.save({"model": RunsCode(marker), "train_args": {}}, path)
    return path


def _plant_label_cache(path: Path, marker: Path) -> None:
    """What ultralytics' np.load(allow_pickle=True) of ``labels/<split>.cache`` would unpickle."""
    with open(path, "wb") as f:
        np.save(f, np.array({"version": "1.0.3", "payload": RunsCode(marker)}, dtype=object), allow_pickle=True)


def _random_detector(folder: Path) -> Path:
    """A detector folder in the published format, with untrained weights (the format, not the numbers, is under test)."""
    from implicit_concept.detector.inference import build_model
    from implicit_concept.detector.weights import weights_state, write_detector

    state = weights_state(build_model("yolov8n.yaml", CONCEPT_NAMES))
    folder.mkdir(parents=True, exist_ok=True)
    write_detector(folder, state, model="yolov8n.yaml", names=CONCEPT_NAMES, imgsz=32, scale={"name": "random"},
                   thresholds=dict.fromkeys(CONCEPT_NAMES, 0.25))
    return folder


def _hostile_model_yamls(folder: Path, marker: Path) -> Path:
    """``folder`` holding ``yolov8n.yaml`` and ``yolov8.yaml`` (the names a bare ``yolov8n.yaml`` is
    looked up by): ultralytics' own yolov8.yaml, whose ``activation`` ultralytics eval()s, set to code
    that creates ``marker``. A folder someone else can write to, such as a colleague's images."""
    import importlib.util

    package = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0])
    original = (package / "cfg" / "models" / "v8" / "yolov8.yaml").read_text(encoding="utf-8")
    activation = f"__import__('os').makedirs({str(marker)!r}, exist_ok=True) or nn.SiLU()"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("yolov8n.yaml", "yolov8.yaml"):
        (folder / name).write_text(f"activation: {json.dumps(activation)}\n{original}", encoding="utf-8")
    return folder


def _architecture(module: torch.nn.Module) -> dict:
    return {name: (tuple(t.shape), t.dtype) for name, t in module.state_dict().items()}


def test_a_model_yaml_in_the_current_folder_is_never_read(tmp_path, monkeypatch):
    """The record names its network by a bare name (yolov8n.yaml); ultralytics given that name looks
    in the current folder first and eval()s the YAML's activation. The network is built from
    ultralytics' own package file alone, whatever folder the command runs from."""
    from implicit_concept.detector.inference import build_model

    reference = _random_detector(tmp_path / "det")
    expected = Detector.load(reference)
    marker = tmp_path / "yaml-code-ran"
    monkeypatch.chdir(_hostile_model_yamls(tmp_path / "hostile-cwd", marker))
    built = build_model("yolov8n.yaml", CONCEPT_NAMES)
    in_hostile_cwd = _random_detector(tmp_path / "det-built-in-hostile-cwd")
    loaded = Detector.load(reference)
    wrapped = Detector.from_module(built, "yolov8n.yaml", tmp_path / "x.safetensors", 32)
    assert not marker.exists(), "building the detector ran the activation of a yolov8n.yaml in the current folder"
    assert _architecture(built) == _architecture(expected.model.model) == _architecture(Detector.load(in_hostile_cwd).model.model)
    assert built.yaml == expected.model.model.yaml and built.yaml["scale"] == "n" and built.yaml["yaml_file"] == "yolov8n.yaml"
    assert wrapped.model.model is built and wrapped.model.task == "detect"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model.model(x)[0], expected.model.model(x)[0]), "the same weights give the same network"
    assert not marker.exists()


def test_a_pickled_detector_is_refused_never_unpickled(tmp_path):
    marker = tmp_path / "code-ran"
    evil = _crafted_pt(tmp_path / "detector.pt", marker)
    with pytest.raises(DetectorError, match=r"detector\.pt: .*pickle"):
        Detector.load(evil)
    assert not marker.exists(), "loading the detector ran the code in a crafted .pt"


def test_a_pt_planted_in_a_detector_folder_is_never_unpickled(tmp_path):
    """A cache or run folder holding only a detector.pt (planted, or left by an older version)."""
    marker = tmp_path / "code-ran"
    folder = tmp_path / "cache" / "detectors" / "cpu-0123"
    folder.mkdir(parents=True)
    _crafted_pt(folder / "detector.pt", marker)
    with pytest.raises(DetectorError, match=r"cpu-0123.*detector\.(json|safetensors)"):
        Detector.load(folder)
    assert not marker.exists(), "loading the detector folder ran the code in a planted detector.pt"


def test_every_command_taking_a_detector_refuses_a_pt(tmp_path, capsys):
    from benchmark import stages

    marker = tmp_path / "code-ran"
    evil = _crafted_pt(tmp_path / "evil.pt", marker)
    images = tmp_path / "images"
    images.mkdir()
    _solid(10).save(images / "1_0.png")
    (tmp_path / "pipeline").mkdir()  # a pipeline argument that does not exist is refused first
    assert main(["score", str(images), "--detector", str(evil)]) == 2
    assert main(["score-images", str(images), "--detector", str(evil), "--num-prompts", "1", "--out", str(tmp_path / "si")]) == 2
    assert main(["score-pipeline", str(tmp_path / "pipeline"), "--detector", str(evil), "--out", str(tmp_path / "sp")]) == 2
    assert capsys.readouterr().err.count("evil.pt: a .pt file is a pickle") == 3
    with pytest.raises(DetectorError, match=r"evil\.pt: .*pickle"):
        stages.detector(real_run(tmp_path / "run", detector=evil, cache=tmp_path / "cache"), tmp_path / "data")
    assert not marker.exists()


def test_the_published_detector_round_trips_and_refuses_what_is_not_its_format(tmp_path):
    from implicit_concept.detector.weights import RECORD_NAME, WEIGHTS_NAME

    folder = _random_detector(tmp_path / "det")
    assert sorted(p.name for p in folder.iterdir()) == [RECORD_NAME, WEIGHTS_NAME]
    by_folder, by_file = Detector.load(folder), Detector.load(folder / WEIGHTS_NAME)
    assert by_folder.path == by_file.path == folder / WEIGHTS_NAME and by_folder.imgsz == 32
    image = _solid(30).resize((64, 64))
    assert by_folder.detect(image, conf=0.001) == by_file.detect(image, conf=0.001)

    record = json.loads((folder / RECORD_NAME).read_text())
    for change, complaint in (
        ({"model": "../../elsewhere/yolov8n.yaml"}, "model"),
        ({"names": ["a", "b", "c"], "thresholds": dict.fromkeys("abc", 0.25)}, "detects"),
        ({"imgsz": "64"}, "imgsz"),
        ({"imgsz": 64000}, "imgsz.*from 32 to 4096"),  # a record is data: it must not decide scoring takes 12 GB
        ({"format": 99}, "format"),
        ({"thresholds": {"qrcode": 0.3}}, "thresholds"),
        ({"thresholds": {**record["thresholds"], "text": 1.5}}, "thresholds"),
        ({"thresholds": {**record["thresholds"], "text": "0.3"}}, "thresholds"),
    ):
        (folder / RECORD_NAME).write_text(json.dumps({**record, **change}))
        with pytest.raises(DetectorError, match=rf"{RECORD_NAME}.*{complaint}"):
            Detector.load(folder)
    (folder / RECORD_NAME).unlink()
    with pytest.raises(DetectorError, match=rf"{RECORD_NAME}: missing"):
        Detector.load(folder / WEIGHTS_NAME)
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(DetectorError, match="weights.onnx: not a detector"):
        Detector.load(tmp_path / "weights.onnx")


def _rewrite_weights(folder: Path, edit) -> None:
    """Weights edited and the record's sha256 updated to match: what a careless or hostile hand leaves."""
    from safetensors.torch import load_file, save
    from implicit_concept.detector.weights import RECORD_NAME, WEIGHTS_NAME

    state = load_file(folder / WEIGHTS_NAME)
    edit(state)
    (folder / WEIGHTS_NAME).write_bytes(save(state))
    record = json.loads((folder / RECORD_NAME).read_text())
    (folder / RECORD_NAME).write_text(json.dumps({**record, "sha256": hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()}))


@pytest.mark.parametrize("edit, complaint", [
    (lambda s: s["model.0.conv.weight"].view(-1).__setitem__(0, float("nan")), "tensor model.0.conv.weight holds NaN"),
    (lambda s: s["model.22.cv2.0.0.conv.weight"].view(-1).__setitem__(3, float("inf")), "tensor model.22.cv2.0.0.conv.weight holds NaN or infinite"),
    (lambda s: s.__setitem__("model.0.conv.weight", s["model.0.conv.weight"].to(torch.int8)), "tensor model.0.conv.weight is torch.int8"),
    (lambda s: s.__setitem__("model.0.conv.weight", s["model.0.conv.weight"][:8]), "tensor model.0.conv.weight is (8, 3, 3, 3), where yolov8n.yaml with 3 classes holds (16, 3, 3, 3)"),
    (lambda s: s.__setitem__("extra", torch.zeros(1)), "tensor extra is not in yolov8n.yaml with 3 classes"),
    (lambda s: s.pop("model.0.conv.weight"), "tensor model.0.conv.weight is missing; it is in yolov8n.yaml"),
])
def test_weights_a_detector_cannot_have_are_refused_even_when_their_sha256_matches(tmp_path, edit, complaint):
    folder = _random_detector(tmp_path / "det")
    _rewrite_weights(folder, edit)
    with pytest.raises(DetectorError, match=re.escape(complaint)):
        Detector.load(folder)


def test_the_clean_reference_is_checked_against_the_sha256_the_record_holds(tmp_path):
    from implicit_concept.detector.weights import RECORD_NAME
    from implicit_concept.scoring import CLEAN_REFERENCE_NAME, CleanReference, ScoreConfig, score_images

    folder = _random_detector(tmp_path / "det")
    reference = CleanReference("clean test images", {c: [0.0, 0.5, 0.9] for c in CONCEPT_NAMES})
    reference.write(folder / CLEAN_REFERENCE_NAME)
    record = json.loads((folder / RECORD_NAME).read_text())
    digest = hashlib.sha256((folder / CLEAN_REFERENCE_NAME).read_bytes()).hexdigest()
    (folder / RECORD_NAME).write_text(json.dumps({**record, "clean_reference_sha256": digest}))
    assert CleanReference.beside(Detector.load(folder)).max_conf == reference.max_conf
    CleanReference("clean test images", {c: [0.0, 0.0, 0.0] for c in CONCEPT_NAMES}).write(folder / CLEAN_REFERENCE_NAME)
    with pytest.raises(ValueError, match=rf"{CLEAN_REFERENCE_NAME}: sha256 .* does not match {digest}"):
        score_images([_solid(0)], Detector.load(folder), ScoreConfig(resamples=100), checkers=[])
    (folder / RECORD_NAME).write_text(json.dumps({**record, "clean_reference_sha256": "abc"}))
    with pytest.raises(DetectorError, match="clean_reference_sha256 = 'abc', want 64 hex digits"):
        Detector.load(folder)


def test_a_cached_detector_whose_weights_changed_is_refused_naming_the_file(tmp_path):
    from benchmark import stages
    from implicit_concept.detector.weights import WEIGHTS_NAME

    dataset = tmp_path / "data" / "icd-debug"
    dataset.mkdir(parents=True)
    (dataset / "checksums.sha256").write_text(f"{'0' * 64}  icd-mixed/train/00000.tar\n")
    run = real_run(tmp_path / "run", {"detector_scale": "debug", "detector_backgrounds": 0, "detector_calibration": 0}, cache=tmp_path / "cache")
    cached = _random_detector(stages.detector_dir(run, stages.detector_identity(run, dataset)))
    assert stages.detector(run, dataset).path == cached / WEIGHTS_NAME, "the cached detector is used, not retrained"
    weights = bytearray((cached / WEIGHTS_NAME).read_bytes())
    weights[-1] ^= 1
    (cached / WEIGHTS_NAME).write_bytes(bytes(weights))
    with pytest.raises(DetectorError, match=rf"{cached / WEIGHTS_NAME}: sha256 .* does not match"):
        stages.detector(run, dataset)


def test_detector_training_runs_on_one_device():
    with pytest.raises(ScaleError, match=r"device = '0,1'"):
        DetectorScale(name="x", model="yolov8n.yaml", imgsz=64, epochs=1, batch=1, device="0,1")
    assert DetectorScale(name="x", model="yolov8n.yaml", imgsz=64, epochs=1, batch=1, device="1").device == "1"


def test_ultralytics_never_reads_a_label_cache_it_finds(tmp_path):
    """Besides the export clearing them: a cache planted after the export is not read either."""
    dataset = export_detection_dataset(_write_shards(tmp_path / "icd-mixed"), tmp_path / "yolo")
    marker = tmp_path / "code-ran"
    _plant_label_cache(dataset.root / "labels" / "train.cache", marker)
    import_ultralytics()
    yolo_dataset = importlib.import_module("ultralytics.data.dataset").YOLODataset
    built = yolo_dataset(img_path=str(dataset.root / "images" / "train"), imgsz=32, augment=False, task="detect",
                         data={"names": dict(enumerate(CONCEPT_NAMES)), "channels": 3})
    assert len(built.labels) == 3 and sum(len(label["cls"]) for label in built.labels) == 3  # tr0003 is held out for validation
    assert not marker.exists(), "ultralytics unpickled a planted labels/train.cache"


def test_after_ultralytics_a_file_pillow_cannot_identify_fails_as_itself_and_installs_nothing(tmp_path, monkeypatch):
    """ultralytics swaps PIL.Image.open for one that pip-installs pi-heif on an unknown file."""
    from PIL import Image, UnidentifiedImageError

    import_ultralytics()
    asked: list = []
    monkeypatch.setattr(importlib.import_module("ultralytics.utils.checks"), "check_requirements", lambda *a, **k: asked.append(a))
    bad = tmp_path / "not-an-image.png"
    bad.write_text("not an image")
    with pytest.raises(UnidentifiedImageError, match="not-an-image.png"):
        Image.open(bad)
    assert asked == [], "opening a bad image asked ultralytics to install a package"
    with pytest.raises(ImageReadError, match=r"not-an-image.png: not a readable image \(cannot identify"):
        load_image(bad)


def _integration_modules():
    """Every ultralytics module whose callbacks an integration registers: its analytics and each
    integration under ultralytics.utils.callbacks (platform, clearml, comet, ..., whatever this version has)."""
    import_ultralytics()
    package = importlib.import_module("ultralytics.utils.callbacks")
    names = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if m.name != "base"]
    return [importlib.import_module(n) for n in ["ultralytics.utils.events", *names]]


def _spy_on_integrations(mp: pytest.MonkeyPatch, calls: list) -> None:
    """Replace every integration callback by one that records its call."""
    for module in _integration_modules():
        for event in list(module.callbacks):
            mp.setitem(module.callbacks, event, lambda *a, _n=f"{module.__name__}:{event}": calls.append(_n))


def _foreign(callbacks: dict) -> list[str]:
    """Callbacks that are neither ultralytics' defaults nor ours."""
    ours = ("ultralytics.utils.callbacks.base", "implicit_concept.")
    return sorted({f"{event}: {getattr(f, '__module__', f)}" for event, fs in callbacks.items() for f in fs
                   if not str(getattr(f, "__module__", "")).startswith(ours)})


@pytest.fixture(scope="module")
def attacked_training(tmp_path_factory):
    """One tiny training run into a folder whose YOLO export holds planted label caches, with
    ULTRALYTICS_API_KEY set and every integration callback replaced by a recorder."""
    root = tmp_path_factory.mktemp("attacked-training")
    shards = _write_shards(root / "icd-mixed", TRAINABLE)
    out = root / "det"
    dataset = export_detection_dataset(shards, out / "dataset")
    markers = {split: root / f"{split}-cache-ran" for split in ("train", "val")}
    for split, marker in markers.items():
        _plant_label_cache(dataset.root / "labels" / f"{split}.cache", marker)
    calls: list[str] = []
    yaml_marker = root / "cwd-yaml-ran"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(_hostile_model_yamls(root / "hostile-cwd", yaml_marker))  # a yolov8n.yaml where the command runs
        mp.setenv("ULTRALYTICS_API_KEY", "ul_" + "0" * 40)
        _spy_on_integrations(mp, calls)
        callers = {"CUBLAS_WORKSPACE_CONFIG": ":16:8", "PYTHONHASHSEED": "7"}  # a lab's own, for its own runs
        for name, value in callers.items():
            mp.setenv(name, value)
        with kept_rngs():
            _seed_everything(11)
            trained = train_detector(shards, out, TINY)
            callers_after = {name: os.environ.get(name) for name in callers}
            draws = _draws()
            _seed_everything(11)
            draws_expected = _draws()
        loaded = Detector.load(out)
        images = [_solid(red).resize((64, 64)) for red in (0, 10, 20, 30)]
        detections = (getattr(trained, "detector", None), loaded.detect_many(images, conf=0.001))
        import_ultralytics()
        with kept_torch_settings(), ultralytics_call():  # a trainer made and never trained leaves deterministic algorithms, PYTHONHASHSEED on
            probe = importlib.import_module("ultralytics.models.yolo.detect").DetectionTrainer(overrides={
                "model": TINY.model, "data": str(dataset.data_yaml), "imgsz": TINY.imgsz, "epochs": 1, "device": "cpu",
                "project": str(root / "probe"), "name": "trainer", "exist_ok": True, "verbose": False,
            })
        api_key_seen = os.environ.get("ULTRALYTICS_API_KEY")
    return SimpleNamespace(out=out, trained=trained, loaded=loaded, images=images, detections=detections,
                           markers=markers, calls=calls, probe=probe, api_key_seen=api_key_seen, dataset=dataset,
                           callers=callers, callers_after=callers_after, draws=draws, draws_expected=draws_expected,
                           yaml_marker=yaml_marker)


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _draws():
    return random.random(), float(np.random.random()), float(torch.rand(1))


def test_training_keeps_the_callers_environment_and_random_generators(attacked_training):
    """ultralytics' trainer seeds the global generators and sets, then removes, PYTHONHASHSEED and
    CUBLAS_WORKSPACE_CONFIG: a lab's own (for its own deterministic CUDA runs) were gone after a
    detector training, and its next random draw was the one ultralytics' seed gives."""
    assert attacked_training.callers_after == attacked_training.callers
    assert attacked_training.draws == attacked_training.draws_expected


def test_training_never_unpickles_a_planted_label_cache(attacked_training):
    for split, marker in attacked_training.markers.items():
        assert not marker.exists(), f"ultralytics unpickled the planted labels/{split}.cache"
    assert not list(attacked_training.dataset.root.rglob("*.cache")), "label caches are neither kept nor written"


def test_training_never_reads_a_model_yaml_from_the_current_folder(attacked_training):
    """The trainer is handed ultralytics' own file, not the bare name it would look up in the current folder."""
    from implicit_concept.detector.inference import build_model

    assert not attacked_training.yaml_marker.exists(), "training or loading ran the activation of a yolov8n.yaml in the current folder"
    trained = attacked_training.trained.detector.model.model  # fused by evaluation: its description, not its layers, compares
    expected = build_model(TINY.model, CONCEPT_NAMES)
    assert trained.yaml == expected.yaml and trained.yaml["scale"] == "n" and trained.yaml["yaml_file"] == TINY.model
    assert _architecture(attacked_training.loaded.model.model) == _architecture(expected)


def test_no_integration_callback_is_registered_or_called_with_an_api_key_set(attacked_training):
    from ultralytics.utils import SETTINGS

    assert attacked_training.calls == [], "integration callbacks ran during training and scoring"
    assert _foreign(attacked_training.probe.callbacks) == [], "a trainer registered integration callbacks"
    assert _foreign(attacked_training.loaded.model.predictor.callbacks) == [], "a predictor registered integration callbacks"
    switches = {k for k, v in SETTINGS.defaults.items() if isinstance(v, bool)}
    assert {"sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb"} <= switches
    assert {k: SETTINGS[k] for k in switches} == dict.fromkeys(switches, False) and SETTINGS["api_key"] == ""
    assert attacked_training.api_key_seen is None, "the API key stays out of ultralytics' sight"


def test_training_publishes_weights_only_and_the_file_detects_what_the_trained_model_does(attacked_training):
    from implicit_concept.detector.weights import RECORD_NAME, WEIGHTS_NAME

    out = attacked_training.out
    assert not list(out.rglob("*.pt")), "no pickled checkpoint is written"
    assert attacked_training.trained.weights == out / WEIGHTS_NAME and (out / RECORD_NAME).is_file()
    in_memory, from_file = attacked_training.detections
    assert in_memory is not None, "train_detector returns the in-memory detector its metrics were measured with"
    expected = in_memory.detect_many(attacked_training.images, conf=0.001)
    assert sum(map(len, expected)) > 0, "a test that compares nothing proves nothing"
    assert from_file == expected
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["names"] == list(CONCEPT_NAMES) and record["imgsz"] == TINY.imgsz and record["model"] == TINY.model
    assert record["scale"]["name"] == TINY.name
    assert record["clean_reference_sha256"] == hashlib.sha256((out / "clean_reference.json").read_bytes()).hexdigest()


def _no_home_env(home: Path) -> dict:
    drop = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "YOLO_CONFIG_DIR", "IMPLICIT_CONCEPT_CACHE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}


@pytest.mark.slow
def test_detector_commands_write_only_under_the_folders_named(tmp_path):
    """`detector train` and `score`: ultralytics' settings and font and matplotlib's caches go to the
    cache folder (the benchmark's default, or --cache), never to the home folder."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    shards = _write_shards(tmp_path / "icd-mixed", TRAINABLE)
    cli = [sys.executable, "-m", "benchmark.cli"]
    train = subprocess.run([*cli, "detector", "train", str(shards), "--out", str(tmp_path / "det"), "--scale", "debug"],
                           cwd=work, env=_no_home_env(home), capture_output=True, text=True, timeout=600)
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"written to the home folder: {written}"
    assert train.returncode == 0, train.stderr[-3000:]
    default = work / ".cache" / "implicit-concept"
    assert (default / "ultralytics" / "Ultralytics" / "settings.json").is_file()
    assert (default / "ultralytics" / "Ultralytics" / "Arial.ttf").is_file()
    assert list((default / "matplotlib").glob("fontlist-*.json")), "matplotlib's font cache sits beside them"

    named = tmp_path / "named-cache"
    score = subprocess.run([*cli, "score", str(shards / "test"), "--detector", str(tmp_path / "det"), "--cache", str(named)],
                           cwd=work, env=_no_home_env(home), capture_output=True, text=True, timeout=600)
    assert score.returncode == 0, score.stderr[-3000:]
    assert (named / "ultralytics" / "Ultralytics" / "settings.json").is_file()
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def test_a_mistyped_input_leaves_the_detector_already_in_out_whole(tmp_path, capsys):
    """`detector train data/icd-mixd --out detector/` deleted detector/'s record before reading the
    shards: the detector trained there before no longer loaded. Inputs are read first now."""
    import shutil

    from benchmark.published_models import PUBLISHED_DIR

    out = tmp_path / "detector"
    shutil.copytree(PUBLISHED_DIR / "detector-tiny", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    shards = tmp_path / "shards"
    _write_shards(shards)
    not_images = tmp_path / "not-images"
    not_images.mkdir()
    (not_images / "a.png").write_bytes(b"not a png")
    argv = ["detector", "train", str(tmp_path / "icd-mixd"), "--out", str(out), "--scale", "debug"]
    for argv in (argv, [*argv[:2], str(shards), *argv[3:], "--calibration", str(not_images)]):
        assert main(argv) != 0
        assert "Traceback" not in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
        Detector.load(out)


@contextmanager
def fifo_released(fifo: Path):
    """Within the block, a reader that opens ``fifo`` finds it empty instead of waiting forever for a
    writer (a writer thread waits for it, opens and closes): code that should never open the FIFO
    fails the test instead of hanging it (safetensors holds the GIL while it opens a file)."""
    import threading

    writer = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)), daemon=True)
    writer.start()
    try:
        yield
    finally:
        if writer.is_alive():  # never read: release the writer
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(10)


@pytest.mark.parametrize("kind, complaint", [
    ("fifo", "a FIFO (named pipe), where a file was expected"),
    ("device", "a character device, where a file was expected"),
    ("folder", "Is a directory"),
    ("huge", "over 67108864 bytes"),
])
def test_a_detector_record_or_clean_reference_that_is_not_a_small_regular_file_is_refused_unread(tmp_path, kind, complaint):
    """A FIFO put where detector.json (or the clean-image reference) was blocked the load forever, and
    /dev/zero linked there read until memory ran out: each is refused naming the file, unread."""
    from implicit_concept.detector.weights import RECORD_NAME
    from implicit_concept.scoring import CLEAN_REFERENCE_NAME, CleanReference

    folder = _random_detector(tmp_path / "det")
    for name, load in ((RECORD_NAME, lambda: Detector.load(folder)), (CLEAN_REFERENCE_NAME, lambda: CleanReference.read(folder / CLEAN_REFERENCE_NAME))):
        path = folder / name
        path.unlink(missing_ok=True)
        if kind == "fifo":
            os.mkfifo(path)
            released = fifo_released(path)
        elif kind == "device":
            path.symlink_to(os.devnull)
        elif kind == "folder":
            path.mkdir()
        else:
            with open(path, "wb") as f:
                f.truncate((64 << 20) + 1)
        with released if kind == "fifo" else nullcontext(), pytest.raises((ValueError, OSError)) as error:
            load()
        assert str(path) in str(error.value) and complaint in str(error.value), error.value


@pytest.mark.parametrize("dtype", [torch.float8_e5m2, torch.float8_e4m3fn])
def test_float8_detector_weights_are_refused_not_cast(tmp_path, dtype):
    """Loading casts float8 to the network's float32 silently: the weights would be rounded into
    another detector than the one trained. Half, bfloat16, float and double are what detectors hold."""
    folder = _random_detector(tmp_path / "det")
    _rewrite_weights(folder, lambda s: s.update({k: v.to(dtype) for k, v in s.items() if v.is_floating_point()}))
    with pytest.raises(DetectorError, match=rf"detector.safetensors: tensor \S+ is {dtype}"):
        Detector.load(folder)
    _rewrite_weights(folder, lambda s: s.update({k: v.to(torch.float64) for k, v in s.items() if v.is_floating_point()}))
    assert Detector.load(folder).imgsz == 32


def test_detector_weights_larger_than_any_detector_are_refused_unread(tmp_path, monkeypatch):
    """A huge (or sparse and huge) weights file with a matching record would be hashed for minutes
    and then allocated whole: it is refused by its size first."""
    from implicit_concept.detector import weights as weights_module
    from implicit_concept.detector.weights import RECORD_NAME, WEIGHTS_NAME

    folder = _random_detector(tmp_path / "det")
    size = (folder / WEIGHTS_NAME).stat().st_size
    monkeypatch.setattr(weights_module, "MAX_WEIGHTS_BYTES", size - 1)
    monkeypatch.setattr(weights_module, "sha256_file", lambda path: pytest.fail(f"{path} was read"))
    with pytest.raises(DetectorError, match=rf"{WEIGHTS_NAME}: {size} bytes, more than any detector's weights"):
        Detector.load(folder)
    assert (folder / RECORD_NAME).is_file()


@pytest.mark.parametrize("field, value", [("imgsz", 640), ("model", "yolov8s.yaml")])
def test_a_record_whose_image_size_or_model_disagrees_with_what_it_was_trained_with_is_refused(tmp_path, field, value):
    """detector.json edited to predict at another size than training used: the weights' sha256 still
    matches, so scores would be reported against the same evaluator while thresholds calibrated at
    the trained size no longer mean what they say."""
    from implicit_concept.detector.weights import RECORD_NAME

    folder = _random_detector(tmp_path / "det")
    record = json.loads((folder / RECORD_NAME).read_text())
    trained = {"name": "cpu", "model": "yolov8n.yaml", "imgsz": 32}
    (folder / RECORD_NAME).write_text(json.dumps({**record, "scale": trained}))
    assert Detector.load(folder).imgsz == 32
    (folder / RECORD_NAME).write_text(json.dumps({**record, "scale": trained, field: value}))
    with pytest.raises(DetectorError, match=rf"{RECORD_NAME}: {field} = {value!r} disagrees with scale.{field} = {trained[field]!r}"):
        Detector.load(folder)
