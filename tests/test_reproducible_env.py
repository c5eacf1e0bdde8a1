"""Same source, same bytes, whatever should not matter: where the source (or the screen's detector)
lies and how its path was typed, the working folder, TZ, the locale, PYTHONHASHSEED, thread counts,
workers, umask, TMPDIR, the order files were made in and their times. And no record names this
machine's folders: what a build, a sheet or a skip's message writes is what another lab can hold."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from builders.build import build_dataset
from builders.preview import preview_dataset
from builders.recipe import parse_recipe, source_from_spec, with_screen_detector
from builders.source_screen import detector_fingerprint
from builders.verify import verify_dataset
from implicit_concept.files import FolderClaimError
from implicit_concept.provenance import config_hash
from tests.test_sources import jpeg, write_tar
from tests.test_streaming import served  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_DETECTOR = REPO / "benchmark" / "published" / "detector-tiny"


def _images(folder: Path, reverse: bool = False) -> Path:
    """Eight captioned images (created last to first with ``reverse``), and one over the recipe's
    file cap: a skip whose message the tables record."""
    folder.mkdir(parents=True)
    for i in reversed(range(8)) if reverse else range(8):
        Image.new("RGB", (48, 40), (25 * i, 60, 200 - 20 * i)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a picture number {i} of a field")
    noise = b"".join(hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(64 * 64 * 3 // 32))
    Image.frombytes("RGB", (64, 64), noise).save(folder / "big.png")
    (folder / "big.txt").write_text("a noisy picture")
    return folder


def _tars(folder: Path) -> Path:
    """Tars of captioned images, one a saved error page and one two tars joined with cat: skips
    whose messages name a tar."""
    folder.mkdir(parents=True)
    for t in range(2):
        write_tar(folder / f"{t:05d}.tar", [m for i in range(3) for m in ((f"{t}{i}.jpg", jpeg((40 * i, 90, 30 * t))),
                                                                           (f"{t}{i}.txt", b"a picture of a field"))])
    (folder / "00002.tar").write_text("<html>403 Forbidden</html>")
    (folder / "00003.tar").write_bytes((folder / "00000.tar").read_bytes() + (folder / "00001.tar").read_bytes())
    return folder


def _raw(source: dict, **screen) -> dict:
    return {"name": "rp", "seed": 3, "image_size": 32, "shard_size": 3, "source": {**source, **screen.pop("extra", {})},
            "subsets": [{"name": "q", "concepts": ["qrcode", "text"], "fraction": 0.5}]}


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a build but the shards' stats (which hold how long each took)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith("_stats.json") and not p.name.startswith(".")}


def _naming(files: dict[str, bytes], *folders: Path) -> list[str]:
    """The files whose bytes name any of ``folders`` (JSON text escapes nothing of a plain path)."""
    return sorted(name for name, data in files.items() for f in folders if str(f).encode() in data)


@pytest.mark.parametrize("kind", ["folder", "tars"])
def test_two_copies_of_a_source_at_other_paths_build_the_same_bytes_and_no_file_names_either(tmp_path, monkeypatch, kind):
    """Lab A types an absolute path; lab B, deeper, a relative one through a symlink, from another
    working folder. Copies keep times (``cp -a``), so even ``recipe.json`` is the same bytes."""
    make = _images if kind == "folder" else _tars
    a = make(tmp_path / "lab-a" / "src")
    b = tmp_path / "lab-b" / "deeper" / "src"
    shutil.copytree(a, b)
    (tmp_path / "lab-b" / "deeper" / "link").symlink_to(b)
    spec = "link" if kind == "folder" else "link/{00000..00003}.tar"
    extra = {"max_file_bytes": 1024} if kind == "folder" else {}
    first = build_dataset(parse_recipe(_raw(source_from_spec(str(a) if kind == "folder" else f"{a}/{{00000..00003}}.tar", 0.3),
                                            extra=extra)), tmp_path / "lab-a" / "out", progress=False)
    monkeypatch.chdir(b.parent)
    second = build_dataset(parse_recipe(_raw(source_from_spec(spec, 0.3), extra=extra)), Path("out"), progress=False)
    skipped = {"folder": {"file_too_large": 1}, "tars": {"corrupt_tar": 1, "data_after_end_of_archive": 1}}[kind]
    assert first.failures == second.failures == skipped, "the hostile items are there, and each is a recorded skip"
    one, two = _files(first.out), _files(second.out)
    assert one.keys() == two.keys() and [k for k in one if one[k] != two[k]] == []
    assert _naming(one, tmp_path) == [] and _naming(two, tmp_path) == []
    record = json.loads(one["recipe.json"])
    assert record["source_location"]["path" if kind == "folder" else "urls"].startswith("../src"), "where it lies, from the dataset"
    assert verify_dataset(first.out).ok and verify_dataset(second.out).ok


def test_a_source_moved_whole_resumes_to_the_bytes_of_a_build_that_never_stopped(tmp_path):
    src = _images(tmp_path / "old" / "src")
    whole = build_dataset(parse_recipe(_raw(source_from_spec(str(src), 0.3))), tmp_path / "whole", progress=False)
    out = tmp_path / "out"
    build_dataset(parse_recipe(_raw(source_from_spec(str(src), 0.3))), out, progress=False)
    for stats in sorted(out.rglob("*_stats.json"))[1:]:  # killed: one shard finished
        stats.unlink()
    moved = tmp_path / "new" / "disk" / "src"
    moved.parent.mkdir(parents=True)
    src.rename(moved)  # mv keeps names, sizes and times: the same source
    report = build_dataset(parse_recipe(_raw(source_from_spec(str(moved), 0.3))), out, progress=False)
    assert report.built > 0 and report.skipped == 1
    assert _files(out) == {**_files(whole.out), "recipe.json": (out / "recipe.json").read_bytes()}
    assert json.loads((out / "recipe.json").read_text())["source_location"]["path"] == "../new/disk/src"
    checked = verify_dataset(out)
    assert checked.ok and not checked.notes
    (moved / "img0.txt").write_text("changed after the build")
    assert any("the source has changed since this build started" in n for n in verify_dataset(out).notes), \
        "verify finds the moved source from recipe.json's relative location"


def test_verify_finds_the_source_of_a_dataset_built_through_a_symlinked_folder(tmp_path):
    """``source_location`` is relative to the dataset's real folder: ``..`` read back from a link
    leads where the link points, not where its name stands."""
    src = _images(tmp_path / "src")
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    out = build_dataset(parse_recipe(_raw(source_from_spec(str(src), 0.3))), tmp_path / "link" / "out", progress=False).out
    assert verify_dataset(out).ok and not verify_dataset(out).notes
    (src / "img0.txt").write_text("changed after the build")
    assert any("the source has changed since this build started" in n for n in verify_dataset(out).notes)


def test_a_build_whose_recipe_was_hashed_with_its_source_path_is_named_as_such(tmp_path):
    """A build made before recipes left the source's path out holds that older hash on every
    sample: a resume and verify say so in one line each, not as another recipe or a problem per sample."""
    src = _images(tmp_path / "src")
    recipe = parse_recipe(_raw(source_from_spec(str(src), 0.3)))
    out = build_dataset(recipe, tmp_path / "out", progress=False).out
    record = json.loads((out / "recipe.json").read_text())
    record["recipe"]["source"]["path"] = str(src)  # as an earlier version recorded it, and hashed it
    record["recipe_sha256"] = config_hash(record["recipe"])
    (out / "recipe.json").write_text(json.dumps(record))
    with pytest.raises(FolderClaimError, match=r"out: built by an earlier version, whose recipe_sha256 \(on every sample\) "
                                               r"hashed where its source lay; .* Build into another --out"):
        build_dataset(recipe, out, progress=False)
    checked = verify_dataset(out)
    assert not checked.ok and len(checked.problems) == 1 and "built by an earlier version" in checked.problems[0]


def test_a_screen_detector_is_one_recipe_wherever_its_folder_lies_and_however_typed(tmp_path, monkeypatch):
    """The same weights screen alike: the recipe (and every sample's recipe_sha256) holds their
    sha256, not the folder typed after --screen-detector."""
    a, b = tmp_path / "lab-a" / "det", tmp_path / "lab-b" / "det"
    shutil.copytree(PUBLISHED_DETECTOR, a)
    shutil.copytree(PUBLISHED_DETECTOR, b)
    src = _images(tmp_path / "src")
    base = parse_recipe(_raw(source_from_spec(str(src), 0.3)))
    monkeypatch.chdir(tmp_path / "lab-b")
    first, second = with_screen_detector(base, str(a)), with_screen_detector(base, "./det/")
    assert first.sha256 == second.sha256 != base.sha256
    weights = detector_fingerprint(str(a))["sha256"]
    assert detector_fingerprint("det") == {"sha256": weights}, "the resume record names the weights, not their folder"
    assert first.to_dict()["source_screen"]["detector"] == f"sha256:{weights}"
    assert parse_recipe(json.loads(json.dumps(first.to_dict())), check_components=False).sha256 == first.sha256, \
        "the recorded recipe, read back by verify, has the sha256 it was built with"


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http(s) URLs with curl")
def test_a_presigned_urls_token_is_in_no_record_and_a_build_signed_again_resumes(served, tmp_path):
    """A presigned URL's query is a credential that expires: the recipe, its sha256, the fingerprint
    and a skip's message hold the URL without it, so a build resumed with URLs signed again goes on
    (to the bytes of one that never stopped) and nothing published holds either token."""
    folder, base = served
    shutil.copytree(_tars(tmp_path / "tars"), folder, dirs_exist_ok=True)

    def urls(token: str) -> list[str]:
        return [f"{base}/{{00000..00001}}.tar?X-Amz-Signature={token}", f"{base}/missing.tar?X-Amz-Signature={token}"]

    whole = build_dataset(parse_recipe(_raw({"kind": "webdataset", "urls": urls("FIRST"), "test_fraction": 0.3})),
                          tmp_path / "whole", progress=False)
    assert whole.failures == {"unreadable_tar": 1}
    out = tmp_path / "out"
    build_dataset(parse_recipe(_raw({"kind": "webdataset", "urls": urls("FIRST"), "test_fraction": 0.3})), out, progress=False)
    for stats in sorted(out.rglob("*_stats.json"))[1:]:
        stats.unlink()
    again = build_dataset(parse_recipe(_raw({"kind": "webdataset", "urls": urls("SECOND"), "test_fraction": 0.3})), out, progress=False)
    assert again.built > 0 and _files(out) == _files(whole.out)
    assert [name for name, data in _files(out).items() if b"FIRST" in data or b"SECOND" in data] == []


def test_a_contact_sheet_of_the_same_samples_is_the_same_bytes_wherever_they_lie(tmp_path, monkeypatch):
    built = build_dataset(parse_recipe(_raw(source_from_spec(str(_images(tmp_path / "src")), 0.3))),
                          tmp_path / "lab-a" / "rp", progress=False)
    moved = tmp_path / "lab-b" / "deeper" / "rp"
    shutil.copytree(built.out, moved)
    one = preview_dataset(built.out / "q" / "train", built.out / "preview.png", count=4)
    monkeypatch.chdir(moved)
    two = preview_dataset(Path("q/train"), Path("preview.png"), count=4)
    assert one.read_bytes() == two.read_bytes() and str(tmp_path).encode() not in one.read_bytes()
    assert json.loads(Image.open(one).getexif()[0x010E])["shards"] == "q/train"


#: What a build must not depend on, each set in a process of its own (with the working folder and
#: the source's spelling, file creation order and times, ``--workers`` and umask).
ENVIRONMENTS = {
    "TZ and locale": {"TZ": "Pacific/Kiritimati", "LC_ALL": "tr_TR.UTF-8", "LANG": "tr_TR.UTF-8"},
    "C locale, hash seed": {"LC_ALL": "C", "LANG": "C", "PYTHONHASHSEED": "12345"},
    "threads": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    "TMPDIR": {"TMPDIR": "{tmp}"},
}

_BUILD = """
import sys
from pathlib import Path
from builders.build import build_dataset
from builders.recipe import parse_recipe, source_from_spec
from tests.test_reproducible_env import _raw
build_dataset(parse_recipe(_raw(source_from_spec(sys.argv[1], 0.3))), Path(sys.argv[2]), workers=int(sys.argv[3]), progress=False)
"""


def _build_in_process(source: str, out: Path, cwd: Path, env: dict[str, str], workers: int = 1, umask: int | None = None) -> None:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env}
    subprocess.run([sys.executable, "-c", _BUILD, source, str(out), str(workers)], cwd=cwd, env=full, check=True,
                   preexec_fn=(lambda: os.umask(umask)) if umask is not None else None, timeout=300)


def test_the_environment_the_order_and_the_times_of_files_do_not_change_a_build(tmp_path):
    src = _images(tmp_path / "src")
    _build_in_process(str(src), tmp_path / "base", tmp_path, {})
    base = _files(tmp_path / "base")
    for i, (name, env) in enumerate(ENVIRONMENTS.items()):
        (tmp_path / f"tmp{i}").mkdir()
        env = {k: v.format(tmp=tmp_path / f"tmp{i}") for k, v in env.items()}
        _build_in_process(str(src), tmp_path / f"env{i}", tmp_path, env, workers=2 if i % 2 else 1, umask=0o077 if i == 3 else None)
        assert _files(tmp_path / f"env{i}") == base, f"{name} changed the build's bytes"
    # Made last to first, every time moved, typed relatively from another working folder: the
    # shards, tables, manifest and card are the same (only recipe.json's fingerprint sees the times).
    other = _images(tmp_path / "elsewhere" / "src", reverse=True)
    for f in other.iterdir():
        os.utime(f, ns=(10**18, 10**18))
    _build_in_process("src", tmp_path / "reversed", other.parent, {})
    again = _files(tmp_path / "reversed")
    assert json.loads(again.pop("recipe.json"))["source_fingerprint"] != json.loads(base.pop("recipe.json"))["source_fingerprint"]
    assert again == base


@pytest.mark.parametrize("source", [
    {"kind": "folder", "path": "{root}/images"},
    {"kind": "webdataset", "urls": "{root}/tars/{00000..00001}.tar"},
    {"kind": "webdataset", "urls": ["{root}/tars/00000.tar", "{root}/more/00009.tar"]},
    {"kind": "webdataset", "urls": "/{00000..00001}.tar"},  # tars at the filesystem root
])
def test_a_source_location_read_back_from_the_dataset_folder_is_where_it_was(tmp_path, monkeypatch, source):
    """``recipe.json``'s ``source_location`` is relative to the dataset's folder and read back from it
    by verify, whatever the working folder: a tar pattern read from the working folder instead, or a
    tar at ``/`` taken as one in the working folder, sends verify to other files or none."""
    from builders.recipe import absolute_source, relative_source

    spelled = json.loads(json.dumps(source).replace("{root}", str(tmp_path)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    base = tmp_path / "datasets" / "out"
    assert absolute_source(relative_source(spelled, base), base) == spelled


_REFUSALS = """
import sys
from benchmark.cli import main
out, runs = sys.argv[1], sys.argv[2]
codes = [main(["build", "icd-debug", "--out", out + "/d", "--quiet"]), main(["verify", out, "--quiet"]),
         main(["benchmark", "--track", "debug", "--runs", runs, "--data", out + "/data", "--cache", out + "-cache", "--quiet"])]
print(codes)
"""


def test_a_utf8_folder_under_a_python_reading_names_as_ascii_is_refused_for_that_not_its_name(tmp_path):
    """Under ``LC_ALL=C`` with ``PYTHONUTF8=0`` Python holds ``café`` as escaped bytes that pyarrow and
    tokenizers refuse. The name is valid UTF-8, so build, verify and benchmark say what to set, not
    that the name is wrong (which sent a lab renaming a folder that was fine)."""
    folder = tmp_path / "café"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", _REFUSALS, str(folder), str(folder / "runs")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, errors="backslashreplace", timeout=300)
    assert done.stdout.splitlines()[-1] == "[2, 1, 2]", done.stderr
    lines = [line for line in done.stderr.splitlines() if "caf" in line]
    assert len(lines) == 3 and all("rerun with PYTHONUTF8=1" in line for line in lines), done.stderr
    assert "not valid UTF-8" not in done.stderr, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == [], "refused before anything was made"
