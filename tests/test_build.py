import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.perf import hostile_inputs as hostile
from builders.build import BuildError, build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe, parse_recipe
from builders.verify import verify_dataset
from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.image_stream import ImageReadError, iter_images
from implicit_concept.shard_reader import iter_samples
from implicit_concept.shard_writer import TarShardWriter
from manifests import RECIPES_DIR
from tests.bounded_memory import memory_headroom

REPO = Path(__file__).resolve().parents[1]


def test_debug_build_verifies_and_records_everything(debug_dataset):
    report = verify_dataset(debug_dataset)
    assert report.ok, report.problems
    assert report.samples == 4 * (64 + 32)
    samples = list(iter_samples(debug_dataset / "icd-qrcode"))
    contaminated = [s for s in samples if s.meta.contaminated]
    assert 0.3 < len(contaminated) / len(samples) < 0.7
    for s in samples:
        assert not any(c in s.caption.lower() for c in ("qr", "watermark", "text"))
        assert s.clean is not None and s.mask is not None
        mask = np.asarray(s.mask)
        if not s.meta.contaminated:
            assert mask.max() == 0
            continue
        for inst in s.meta.instances:
            assert inst.concept == "qrcode" and inst.box.inside(64, 64)
        inside = np.zeros_like(mask, dtype=bool)
        for inst in s.meta.instances:
            inside[inst.box.y1 : inst.box.y2, inst.box.x1 : inst.box.x2] = True
        assert mask[~inside].max(initial=0) == 0, "concept alpha outside every recorded box"
    record = json.loads((debug_dataset / "recipe.json").read_text())
    assert record["recipe"]["seed"] == 20231010 and record["environment"]["packages"]["pillow"]
    assert s.meta.recipe_sha256 == record["recipe_sha256"]


def test_mixed_subset_carries_every_concept(debug_dataset):
    seen = {i.concept for s in iter_samples(debug_dataset / "icd-mixed") for i in s.meta.instances}
    assert seen == set(CONCEPT_NAMES)


def test_debug_build_matches_committed_checksums(debug_dataset):
    committed = (RECIPES_DIR / "icd-debug.sha256").read_text()
    assert (debug_dataset / CHECKSUMS).read_text() == committed


def test_same_bytes_whatever_the_worker_count(debug_dataset, tmp_path):
    build_dataset(load_recipe("icd-debug"), tmp_path, workers=2, progress=False)
    assert (tmp_path / CHECKSUMS).read_text() == (debug_dataset / CHECKSUMS).read_text()


@pytest.mark.slow
def test_a_ray_build_writes_the_same_bytes(debug_dataset, tmp_path):
    """Two Ray actors on a local cluster, half the shards already built: same bytes as one process."""
    half = tmp_path / "half"
    shutil.copytree(debug_dataset, half)  # the one-process build
    stats = sorted(half.rglob("*_stats.json"))
    for path in stats[::2]:
        path.unlink()
    report = build_dataset(load_recipe("icd-debug"), half, workers=2, progress=False, distributor="ray")
    assert (report.built, report.skipped) == (len(stats[::2]), len(stats[1::2]))
    assert (half / CHECKSUMS).read_text() == (debug_dataset / CHECKSUMS).read_text()


def test_a_distributor_is_named_and_ray_is_asked_for(tmp_path, monkeypatch):
    recipe = load_recipe("icd-debug")
    with pytest.raises(ValueError, match="distributor 'spark'"):
        build_dataset(recipe, tmp_path / "a", progress=False, distributor="spark")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match=r"implicit-concept\[ray\]"):
        build_dataset(recipe, tmp_path / "b", progress=False, distributor="ray")


def test_no_ray_cluster_at_the_address_is_named_as_such_not_as_the_output_folder(tmp_path, monkeypatch, capsys):
    """ray.init's ConnectionError is an OSError: it was reported as "cannot write the dataset here;
    choose another --out"."""
    from types import SimpleNamespace

    from benchmark.cli import main

    def init(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: False, init=init))
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=None))
    out = tmp_path / "out"
    assert main(["build", "icd-debug", "--out", str(out), "--distributor", "ray", "--ray-address", "auto", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no Ray cluster to join at auto" in err and "ray start --head" in err, err
    assert "--out" not in err, err


def test_a_ctrl_c_while_ray_starts_its_local_cluster_shuts_that_cluster_down(tmp_path, monkeypatch, capsys):
    """A Ctrl-C in ray.init (seconds, starting a local cluster) skipped ray.shutdown: the agents the
    cluster had started stayed running after the command, for as long as they took to see it gone."""
    from types import SimpleNamespace

    from benchmark.cli import main

    shut = []

    def init(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: shut.append(1)))
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=None))
    assert main(["build", "icd-debug", "--out", str(tmp_path / "out"), "--distributor", "ray", "--quiet"]) == 130
    assert capsys.readouterr().err == "implicit-concept build: interrupted; rerun the same command to resume\n"
    assert shut == [1]


def test_a_ray_session_started_for_a_build_leaves_the_callers_environment_and_hooks(tmp_path, monkeypatch):
    """ray.init points PYTHONBREAKPOINT at Ray's remote debugger and sets RAY_* variables, its
    excepthook and a SIGTERM handler, and ray.shutdown leaves them: a lab's process that built through
    Ray kept them (its next ``breakpoint()`` waited on a socket)."""
    from types import SimpleNamespace

    from builders.distributor import _ray

    hook, handler = sys.excepthook, signal.getsignal(signal.SIGTERM)

    def init(**kwargs):
        os.environ.update(PYTHONBREAKPOINT="ray.util.rpdb._driver_set_trace", RAY_USAGE_STATS_ENABLED="0")
        sys.excepthook = lambda *a: None
        signal.signal(signal.SIGTERM, lambda *a: None)

    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: None,
                                                            cluster_resources=lambda: {"CPU": 1}, remote=lambda **k: (lambda cls: cls)))
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=lambda actors: SimpleNamespace(map_unordered=lambda f, g: iter(()))))
    monkeypatch.delenv("PYTHONBREAKPOINT", raising=False)
    before = dict(os.environ)
    assert list(_ray(load_recipe("icd-debug"), [], tmp_path, 1, None)) == []
    assert dict(os.environ) == before
    assert sys.excepthook is hook and signal.getsignal(signal.SIGTERM) is handler


def test_killed_build_resumes_to_the_same_bytes(debug_dataset, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "benchmark.cli", "build", "icd-debug", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    # The first stats files come once a whole source shard is built for every subset (a third of
    # icd-debug): seconds on an idle machine, minutes on a saturated one.
    deadline = time.time() + 600
    while time.time() < deadline and len(list(out.rglob("*_stats.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(out.rglob("*_stats.json")))
    assert 2 <= finished < 12, "the kill must land mid-build for this test to mean anything"
    report = build_dataset(load_recipe("icd-debug"), out, workers=1, progress=False)
    assert report.skipped == finished
    assert (out / CHECKSUMS).read_text() == (debug_dataset / CHECKSUMS).read_text()
    assert not list(out.rglob(".*.tmp-*"))


def test_a_source_shard_built_for_some_subsets_only_builds_the_rest(debug_dataset, tmp_path):
    """Subsets' shards of one source shard are built together; those already finished are not redone."""
    out = tmp_path / "partial"
    shutil.copytree(debug_dataset, out)
    for subset in ("icd-text", "icd-mixed"):
        (out / subset / "train" / "00001_stats.json").unlink()
        (out / subset / "train" / "00001.tar").unlink()
    report = build_dataset(load_recipe("icd-debug"), out, workers=2, progress=False)
    assert (report.built, report.skipped) == (2, 10)
    assert (out / CHECKSUMS).read_text() == (debug_dataset / CHECKSUMS).read_text()


def test_output_of_another_recipe_is_refused(debug_dataset):
    raw = load_recipe("icd-debug").to_dict()
    raw["seed"] = 7
    with pytest.raises(ValueError, match="another recipe"):
        build_dataset(parse_recipe(raw), debug_dataset, progress=False)


def _jpeg(mode, size=(80, 80), **kw):
    buffer = io.BytesIO()
    Image.new(mode, size, **kw).save(buffer, format="JPEG" if mode in ("RGB", "L", "CMYK") else "PNG")
    return buffer.getvalue()


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = _jpeg("RGB", color=(200, 30, 30))
    files = {
        "good.jpg": good,
        "gray.jpg": _jpeg("L", color=90),
        "cmyk.jpg": _jpeg("CMYK", color=(0, 50, 50, 0)),
        "rgba.png": _jpeg("RGBA", color=(0, 0, 255, 128)),
        "sixteen.png": _jpeg("I;16", color=30000),
        "palette.png": _jpeg("P", color=3),
        "zero.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "tiny.jpg": _jpeg("RGB", size=(8, 8)),
        "nocaption.jpg": good,
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
        if name != "nocaption.jpg":
            (src / name).with_suffix(".txt").write_text(f"a photo called {name.split('.')[0]}")
    (src / "latin1.jpg").write_bytes(good)
    (src / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    recipe = parse_recipe(
        {
            "name": "folder-test",
            "seed": 3,
            "image_size": 64,
            "min_side": 32,
            "shard_size": 100,
            "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0},
            "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 1.0}],
        }
    )
    report = build_dataset(recipe, tmp_path / "out", progress=False)
    assert report.samples == 6, report
    assert sum(report.failures.values()) == 5
    assert {"missing_caption", "too_small"} <= set(report.failures)
    assert verify_dataset(tmp_path / "out").ok
    for s in iter_samples(tmp_path / "out" / "q" / "train"):
        assert s.image.mode == "RGB" and s.image.size == (64, 64) and s.meta.contaminated


def _tar_source(folder, count):
    import tarfile

    from implicit_concept.scene.grammar import ProceduralConfig, sample_scene
    from implicit_concept.scene.render import render_scene

    folder.mkdir()
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for i in range(count):
            scene = sample_scene(np.random.default_rng([9, i]), ProceduralConfig(train=1, test=1))
            buffer = io.BytesIO()
            render_scene(scene, 96).save(buffer, format="JPEG")
            for ext, data in (("jpg", buffer.getvalue()), ("txt", scene.caption.encode())):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_cli_builds_a_recipe_from_your_own_shards_and_verify_catches_corruption(tmp_path, capsys):
    from benchmark.cli import main

    _tar_source(tmp_path / "src", 12)
    recipe = tmp_path / "mine.toml"
    text = (RECIPES_DIR / "icd-v1.toml").read_text()
    recipe.write_text(text.replace("image_size = 512", "image_size = 64").replace("min_side = 384", "min_side = 64"))
    out = tmp_path / "out"
    assert main(["build", str(recipe), "--source", str(tmp_path / "src" / "{00000..00000}.tar"), "--out", str(out), "--quiet"]) == 0
    assert main(["verify", str(out)]) == 0
    assert main(["show", str(out / "icd-mixed"), "--out", str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size[0] > 256
    tar = out / "icd-qrcode" / "train" / "00000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "icd-qrcode/train/00000.tar: sha256" in capsys.readouterr().err


def test_every_label_is_the_box_of_its_visible_pixels(debug_dataset):
    """Each sample's layers, re-drawn from the recipe, give back its labels: a box is what stays
    visible of an instance, and an instance a later layer hides is not labelled."""
    from tests.visible_pixels import check_labels

    counts = check_labels(debug_dataset, "icd-debug")
    assert counts["samples"] == 4 * (64 + 32) and counts["covered"] > 0, counts


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.3", True])
def test_min_visible_is_a_share(bad):
    from builders.recipe import RecipeError

    raw = load_recipe("icd-debug").to_dict()
    assert raw["min_visible"] == 0.3
    with pytest.raises(RecipeError, match="min_visible"):
        parse_recipe({**raw, "min_visible": bad})


# --- names that become folders, caps that reach the build, hostile inputs in score/show/verify ----


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "../../x"), ("name", "/abs"), ("name", ".hidden"), ("subsets", "../../x"),
     ("subsets", "a/b"), ("subsets", "manifest.parquet"), ("subsets", "..")],
)
def test_names_that_would_escape_out_are_refused(tmp_path, field, value):
    raw = load_recipe("icd-debug").to_dict()
    if field == "name":
        raw["name"] = value
    else:
        raw["subsets"][0]["name"] = value
    with pytest.raises(ValueError, match=r"name must be 1 to 64 of letters, digits"):
        parse_recipe(raw)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "{raw["name"]}"\nseed = 1\nimage_size = 32\nshard_size = 4\n'
                      '[source]\nkind = "procedural"\ntrain = 2\ntest = 1\n'
                      f'[[subsets]]\nname = "{raw["subsets"][0]["name"]}"\nconcepts = ["qrcode"]\nfraction = 0.5\n')
    from benchmark.cli import main

    (tmp_path / "deep" / "out").mkdir(parents=True)
    assert main(["build", str(recipe), "--out", str(tmp_path / "deep" / "out"), "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "out", "r.toml"]


def _folder_recipe(src, **source):
    return parse_recipe({
        "name": "folder-test", "seed": 3, "image_size": 32, "shard_size": 100,
        "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0, **source},
        "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 1.0}],
    })


def test_the_pixel_cap_of_a_source_reaches_the_build(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (100, 100), (i, 0, 0)).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text("a photo")
    with pytest.raises(BuildError, match=r"out: no samples: all 3 source items were skipped \(too_large: 3\)"):
        build_dataset(_folder_recipe(src, max_pixels=5000), tmp_path / "out", progress=False)


def test_names_and_json_that_are_not_utf8_are_counted_not_fatal(tmp_path):
    """A lone surrogate (a file name in another encoding, a JSON escape) cannot be written as UTF-8."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("good", "name_\udcff"):
        (src / f"{name}.jpg").write_bytes(_jpeg("RGB", color=(200, 30, 30)))
        (src / f"{name}.txt").write_text("a photo")
    report = build_dataset(_folder_recipe(src), tmp_path / "folder-out", progress=False)
    assert (report.samples, report.failures) == (1, {"undecodable_name": 1})
    tar = tmp_path / "00000.tar"
    tar.write_bytes(
        hostile.good_members("good", 1, 0) + hostile.member("name_\udcff.jpg", hostile.good_jpeg(1))
        + hostile.member("name_\udcff.txt", b"a photo") + hostile.member("j.jpg", hostile.good_jpeg(2))
        + hostile.member("j.txt", b"a photo") + hostile.member("j.json", b'{"k": "\\ud800"}') + bytes(1024)
    )
    raw = _folder_recipe(src).to_dict()
    raw["source"] = {"kind": "webdataset", "urls": str(tar), "test_fraction": 0.0}
    report = build_dataset(parse_recipe(raw), tmp_path / "tar-out", progress=False)
    assert (report.samples, report.failures) == (2, {"undecodable_name": 1})
    assert verify_dataset(tmp_path / "tar-out").ok


def _plant(tar: Path, image: bytes) -> None:
    """Replace the first sample's image in ``tar``."""
    samples: list = []
    with tarfile.open(tar) as tf:
        for info in tf:
            key, ext = info.name.split(".", 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tf.extractfile(info).read()
    samples[0][1]["jpg"] = image
    with TarShardWriter(tar) as writer:
        for key, members in samples:
            writer.write(key, members)
        writer.close()


@pytest.mark.parametrize("bomb", ["warning_range", "error_range"])
def test_show_verify_and_score_name_a_pixel_bomb(debug_dataset, tmp_path, capsys, bomb):
    from benchmark.cli import main

    data = hostile.png_bomb() if bomb == "warning_range" else hostile.declared_png(20000)
    out = tmp_path / "icd-debug"
    shutil.copytree(debug_dataset, out)
    _plant(out / "icd-qrcode/train/00000.tar", data)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bomb.png").write_bytes(data)
    capsys.readouterr()
    with memory_headroom():
        assert main(["show", str(out / "icd-qrcode/train"), "--out", str(tmp_path / "grid.png")]) == 2
        assert "icd-qrcode/train/00000.tar: sample 000000000: image not decoded (too_large" in capsys.readouterr().err
        assert main(["verify", str(out)]) == 1
        assert "00000.tar:000000000: jpg not decoded (too_large" in capsys.readouterr().err
        with pytest.raises(ImageReadError, match=r"bomb\.png: too many pixels to decode"):
            list(iter_images(tmp_path / "images"))
        with pytest.raises(ValueError, match=r"00000\.tar: sample 000000000: image not decoded"):
            list(iter_images(out / "icd-qrcode"))


class _RunsCode:
    """Unpickling this creates ``marker``: a stand-in for any code a tampered shard's member would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker, 0o777, True))


def test_the_cards_loading_snippet_decodes_only_a_samples_members(debug_dataset, tmp_path):
    """The card's webdataset snippet, run as written on a shard with KEY.pyd, KEY.pickle and KEY.pth
    slipped in: webdataset's default decoders would unpickle or torch.load them. None runs, and the
    sample's own members still come back decoded; the card says to verify a downloaded copy first."""
    import pickle

    import torch

    card = (debug_dataset / "README.md").read_text()
    loading = card.split("## Loading\n", 1)[1]
    assert "`implicit-concept verify path/to/icd-debug`" in loading.split("```python\n", 1)[0]
    snippet = loading.split("```python\n", 1)[1].split("```", 1)[0]
    webdataset_part = snippet[snippet.index("import webdataset"):]
    assert ".decode(\"pil\", only=members)" in webdataset_part

    copy = tmp_path / "copy" / "icd-debug" / "icd-qrcode" / "train"
    copy.mkdir(parents=True)
    markers = {ext: tmp_path / f"{ext}-ran" for ext in ("pyd", "pickle", "pth")}
    with tarfile.open(debug_dataset / "icd-qrcode" / "train" / "00000.tar") as tf:
        members = [(info, tf.extractfile(info).read()) for info in tf.getmembers()]
    keys = list(dict.fromkeys(info.name.split(".", 1)[0] for info, _ in members))
    with tarfile.open(copy / "00000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for key in keys:  # each sample's members, then the planted ones: one sample to webdataset
            for info, data in members:
                if info.name.split(".", 1)[0] == key:
                    tf.addfile(info, io.BytesIO(data))
            pth = io.BytesIO()
            torch.save({"x": _RunsCode(markers["pth"])}, pth)
            planted = {"pyd": pickle.dumps(_RunsCode(markers["pyd"])), "pickle": pickle.dumps(_RunsCode(markers["pickle"])), "pth": pth.getvalue()}
            for ext, data in planted.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    scope: dict = {}
    exec(webdataset_part.replace("path/to/", f"{tmp_path / 'copy'}/"), scope)
    samples = list(scope["ds"])
    ran = sorted(ext for ext, marker in markers.items() if marker.exists())
    assert ran == [], f"the card's snippet ran the code in planted KEY.{'/'.join(ran)} members"
    assert len(samples) == len(keys) > 0
    for sample in samples:
        assert isinstance(sample["jpg"], Image.Image) and isinstance(sample["clean.jpg"], Image.Image)
        assert isinstance(sample["mask.png"], Image.Image) and isinstance(sample["txt"], str)
        assert isinstance(sample["json"], dict) and "instances" in sample["json"]
        assert all(isinstance(sample[ext], bytes) for ext in markers), "planted members stay undecoded bytes"
