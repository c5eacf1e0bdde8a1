"""Hostile or damaged inputs to the builders, ``verify`` and the build command: a damaged shard
table or stats file is rebuilt by a rerun (never copied into the manifest), ``--out`` and recipe
files that are not what they should be are one line naming the file, ``verify`` checks a build
against its recorded plan, keys of any index and shard id read back, nothing unreadable vanishes
without a record, and what reaches a caption or ``source.meta`` is what the README promises."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmark.cli import main
from builders import build as build_module
from builders.build import BuildError, build_dataset
from builders.recipe import RecipeError, load_recipe, parse_recipe, source_from_spec
from builders.shard_builder import WorkUnit, is_complete, sample_key
from builders.sources.caption_text import read_caption
from builders.sources.source_json import read_source_json
from builders.sources.webdataset_source import _name
from builders.verify import _SHARD_PATH, verify_dataset
from implicit_concept import validate

SUBSETS = [{"name": "qr", "concepts": ["qrcode"], "fraction": 0.5}]


def _png(colour=(200, 40, 40), size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _folder(root: Path, count: int = 12, start: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        (root / f"img{i:03d}.png").write_bytes(_png(colour=(10 * i % 255, 90, 120)))
        (root / f"img{i:03d}.txt").write_text(f"a picture number {i}")
    return root


def _raw(src: Path, shard_size: int = 3, test_fraction: float = 0.3) -> dict:
    return {
        "name": "hostile", "seed": 3, "image_size": 32, "min_side": 16, "shard_size": shard_size,
        "source": {"kind": "folder", "path": str(src), "test_fraction": test_fraction},
        "subsets": SUBSETS,
    }


def _files(out: Path) -> dict[str, object]:
    """Every file a build writes, its bytes (a stats file's fields but its duration)."""
    def content(p: Path) -> object:
        if p.name.endswith("_stats.json"):
            return {k: v for k, v in json.loads(p.read_text()).items() if k != "duration_s"}
        return p.read_bytes()
    return {p.relative_to(out).as_posix(): content(p) for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and p.name not in ("README.md", "recipe.json")}


@pytest.fixture
def built(tmp_path):
    """A small folder build (several shards per split) and a copy of its files."""
    recipe = parse_recipe(_raw(_folder(tmp_path / "src")))
    out = tmp_path / "out"
    build_dataset(recipe, out, progress=False)
    return recipe, out, _files(out)


# --- F10: a rerun rebuilds a damaged or foreign shard table or stats file -----------------------------


@pytest.mark.parametrize("damage", ["garbage", "another shard's table", "missing", "another shard's stats"])
def test_a_rerun_rebuilds_a_damaged_or_foreign_shard_table_or_stats(built, damage):
    recipe, out, before = built
    folder = out / "qr" / "train"
    if damage == "garbage":
        (folder / "00000.parquet").write_bytes(os.urandom(300))
    elif damage == "another shard's table":
        shutil.copy(folder / "00001.parquet", folder / "00000.parquet")
    elif damage == "missing":
        (folder / "00000.parquet").unlink()
    else:  # the tar, table and stats of shard 1, all consistent with each other, in shard 0's place
        for suffix in (".tar", ".parquet", "_stats.json"):
            shutil.copy(folder / f"00001{suffix}", folder / f"00000{suffix}")
    assert not is_complete(out, WorkUnit("qr", "train", 0), recipe.sha256)
    report = build_dataset(recipe, out, progress=False)
    assert report.built == 1
    assert _files(out) == before  # the shard, its table and the manifest are as a build that never broke
    assert verify_dataset(out).ok


def test_a_table_the_stats_do_not_record_is_rebuilt(built):
    """A table whose bytes are not the ones its stats record (edited rows, same shape) is rebuilt."""
    recipe, out, before = built
    path = out / "qr" / "train" / "00000.parquet"
    table = pq.read_table(path).to_pylist()
    table[0]["caption"] = "edited"
    from builders.shard_table import write_table
    write_table(path, table)
    assert build_dataset(recipe, out, progress=False).built == 1
    assert _files(out) == before


@pytest.mark.parametrize("damage", ["another shard's table", "garbage"])
def test_stats_that_predate_the_tables_sha256_still_catch_a_wrong_table(built, damage):
    """A build written before stats recorded the table's sha256: the table must still be this
    shard's, with as many rows as its stats count, or the shard is rebuilt."""
    recipe, out, before = built
    folder = out / "qr" / "train"
    for stats_file in folder.glob("*_stats.json"):
        stats = json.loads(stats_file.read_text())
        del stats["parquet_sha256"]
        stats_file.write_text(json.dumps(stats))
    assert build_dataset(recipe, out, progress=False).built == 0  # an intact older build is finished
    if damage == "garbage":
        (folder / "00000.parquet").write_bytes(b"PAR1" + os.urandom(100))
    else:
        shutil.copy(folder / "00001.parquet", folder / "00000.parquet")
    assert build_dataset(recipe, out, progress=False).built == 1
    assert (folder / "00000.parquet").read_bytes() == before["qr/train/00000.parquet"]
    assert (out / "manifest.parquet").read_bytes() == before["manifest.parquet"]


def test_the_manifest_is_never_written_from_a_table_that_does_not_check_out(built, monkeypatch):
    recipe, out, before = built
    (out / "qr" / "train" / "00000_stats.json").unlink()  # so this run rebuilds the shard
    run_units = build_module.run_units

    def built_then_broken(*args, **kwargs):  # as if a worker's write went wrong after it finished
        run_units(*args, **kwargs)
        (out / "qr" / "train" / "00000.parquet").write_bytes(b"not parquet")

    monkeypatch.setattr(build_module, "run_units", built_then_broken)
    with pytest.raises(BuildError, match=r"qr/train/00000.parquet: .*Rerun the build"):
        build_dataset(recipe, out, progress=False)
    assert (out / "manifest.parquet").read_bytes() == before["manifest.parquet"]


# --- F04/F05: --out that is not a build, a recipe.json that is not a build record --------------------


def test_an_out_folder_that_is_not_a_build_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    (out / "notes.txt").write_text("my data\n")
    assert main(["build", "icd-debug", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: exists, is not empty (README.md, notes.txt)" in err[0] and "not a build" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "notes.txt"]
    assert (out / "README.md").read_text() == "# my notes\n"


@pytest.mark.parametrize("content, said", [
    (b"[]", "holds a JSON list, not an object"),
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"a": 1}', "not a build record"),
    (b"[" * 100000, "nested too deeply"),
])
def test_a_recipe_json_in_out_that_is_not_a_build_record_is_one_line(tmp_path, capsys, content, said):
    out = tmp_path / "out"
    out.mkdir()
    (out / "recipe.json").write_bytes(content)
    assert main(["build", "icd-debug", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / 'recipe.json'}: " in err[0] and said in err[0], err
    assert (out / "recipe.json").read_bytes() == content and sorted(os.listdir(out)) == ["recipe.json"]


def test_claim_names_a_record_that_is_not_a_json_object(tmp_path):
    from implicit_concept.files import FolderClaimError, claim
    (tmp_path / "run.json").write_text("[1]")
    with pytest.raises(FolderClaimError, match=r"run.json: holds a JSON list"):
        claim(tmp_path / "run.json", {"a": 1}, "use another --name")


# --- F06: the recipe argument -----------------------------------------------------------------------


def test_a_recipe_path_that_is_a_folder_unreadable_or_not_utf8_is_one_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "x\xff"\n')
    for path, said in ((folder, "is a folder, not a recipe file"), (bad, "not UTF-8 text")):
        assert main(["build", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path}: {said}" in err[0], err
    locked = tmp_path / "locked.toml"
    locked.write_text('name = "x"\n')
    def denied(*args, **kwargs):  # as chmod 000 is for anyone but root
        raise PermissionError(13, "Permission denied", str(locked))

    monkeypatch.setattr(validate, "read_regular_file", denied)
    with pytest.raises(RecipeError, match=r"locked.toml: cannot read the recipe file \(Permission denied\)"):
        load_recipe(locked)


# --- F07: verify checks what was built, whatever the source holds now --------------------------------


@pytest.mark.parametrize("change", ["grown", "shrunk"])
def test_verify_checks_a_build_against_its_recorded_plan_not_the_source_now(built, change):
    recipe, out, _ = built
    src = Path(recipe.source["path"])
    if change == "grown":
        _folder(src, count=30, start=100)
    else:
        for p in sorted(src.glob("img00[0-8].*")):
            p.unlink()
    report = verify_dataset(out)
    assert report.ok, report.problems
    assert any("the source has changed since this build started" in n for n in report.notes)
    assert json.loads((out / "recipe.json").read_text())["plan"] == {"train": 3, "test": 2}


# --- F08/F09: keys and shard ids of any count -------------------------------------------------------


def test_keys_past_the_index_width_sort_and_read_back():
    from builders.shard_builder import key_index
    recipe = replace(load_recipe("icd-debug"), shard_size=1000)  # all a key depends on
    for shard_id in (0, 7, 99999, 100000, 231349):
        unit = WorkUnit("qr", "train", shard_id)
        indices = [0, 1, 9998, 9999, 10000, 10001, 99999, 100000, 123456, 999999999]
        keys = [sample_key(recipe, unit, i) for i in indices]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert [key_index(k, unit, recipe.shard_size) for k in keys] == indices
        assert [key_index(k, unit) for k in keys] == indices  # no recipe: any width
        assert key_index(keys[3] + "0", unit, recipe.shard_size) is None
    # What shipped builds hold is unchanged: index in 4 digits after a 5-digit shard id.
    assert sample_key(recipe, WorkUnit("qr", "train", 3), 17) == "000030017"


def test_verify_accepts_the_writers_shard_names_and_keys_past_99999():
    assert _SHARD_PATH.fullmatch("qr/train/100000.tar") and _SHARD_PATH.fullmatch("qr/test/99999.tar")
    assert not _SHARD_PATH.fullmatch("qr/train/0100000.tar")
    from builders.verify import _key_index, _Problems, _ShardContents, VerifyReport
    recipe = replace(load_recipe("icd-debug"), shard_size=1000)  # all a key depends on
    unit = WorkUnit("qr", "train", 100000)
    report = VerifyReport()
    problems = _Problems(report)
    contents = _ShardContents()
    for i in (0, 1, 10000):
        assert _key_index(Path("100000.tar"), sample_key(recipe, unit, i), unit, recipe, contents, problems) == i
    problems.close()
    assert report.problems == []


def _json_tar(path: Path, empty_keys: int, good: int) -> None:
    with tarfile.open(path, "w") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for i in range(empty_keys):
            add(f"{i:06d}.json", b"{}")
        for i in range(empty_keys, empty_keys + good):
            add(f"{i:06d}.png", _png(colour=(i % 255, 30, 30)))
            add(f"{i:06d}.txt", b"a red square")


def test_a_tar_with_more_items_than_the_key_width_builds_and_verifies(tmp_path):
    _json_tar(tmp_path / "00000.tar", 10000, 2)
    raw = _raw(tmp_path, shard_size=1000, test_fraction=0.0)
    raw["source"] = {"kind": "webdataset", "urls": str(tmp_path / "00000.tar"), "test_fraction": 0.0}
    out = tmp_path / "out"
    report = build_dataset(parse_recipe(raw), out, progress=False)
    assert report.samples == 2
    keys = pq.read_table(out / "qr" / "train" / "00000.parquet").column("key").to_pylist()
    assert len(keys) == 10002 and keys == sorted(keys) and keys[-1] == "00000" + "9999" + "5" + "10001"
    assert verify_dataset(out).ok, verify_dataset(out).problems[:3]


# --- F01: nothing unreadable vanishes without a record ----------------------------------------------


_LOCKED_BUILD = r"""
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
from builders.build import build_dataset
from builders.recipe import parse_recipe
from builders.sources import FolderConfig, FolderSource
src, out, locked = map(Path, sys.argv[1:4])
try:
    FolderSource(FolderConfig(str(locked)), shard_size=4)
except ValueError as e:
    print("ROOT", e)
raw = json.loads(sys.argv[4])
report = build_dataset(parse_recipe(raw), out, progress=False)
rows = pq.read_table(out / "manifest.parquet").to_pylist()
print("SKIPPED", json.dumps(report.failures))
print("ROWS", json.dumps(sorted({(r["source_id"], r["status"], r["error_message"]) for r in rows if r["status"] != "success"})))
"""


@pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0, reason="needs setpriv to drop root's file access")
def test_an_unreadable_sub_folder_is_a_counted_skip_and_an_unreadable_source_says_so(tmp_path):
    src = _folder(tmp_path / "src", count=6)
    locked = _folder(src / "locked", count=3)
    locked.chmod(0)
    tmp_path.chmod(0o777)
    out = tmp_path / "out"
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-dac_override,-dac_read_search"] \
        if os.geteuid() == 0 else []
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run([*drop, sys.executable, "-c", _LOCKED_BUILD, str(src), str(out), str(locked),
                               json.dumps(_raw(src, shard_size=4))], capture_output=True, text=True, env=env, timeout=120)
    finally:
        locked.chmod(0o755)
    if drop and done.returncode != 0 and done.stderr.startswith("setpriv"):
        pytest.skip(f"setpriv cannot drop root's file access here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert "cannot be listed (Permission denied)" in lines["ROOT"] and str(locked) in lines["ROOT"]
    assert json.loads(lines["SKIPPED"]) == {"unreadable_folder": 1}
    [(source_id, status, message)] = json.loads(lines["ROWS"])
    assert (source_id, status) == ("locked/", "failed_to_read") and "Permission denied" in message


def test_an_unreadable_folder_changes_the_source_fingerprint(tmp_path, monkeypatch):
    from builders.sources import FolderConfig, FolderSource
    import builders.sources.folder as folder_module
    src = _folder(tmp_path / "src", count=4)
    (src / "sub").mkdir()
    readable = FolderSource(FolderConfig(str(src)), shard_size=4).fingerprint()
    real = folder_module._list

    def with_sub_unlisted(root):
        listed, unlisted, linked = real(root)
        return listed, {**unlisted, "sub": "Permission denied"}, linked

    monkeypatch.setattr(folder_module, "_list", with_sub_unlisted)
    assert FolderSource(FolderConfig(str(src)), shard_size=4).fingerprint() != readable


def test_two_builds_over_hostile_images_write_the_same_tables_and_say_what_each_file_is(tmp_path):
    """Scraped files that are not images (an HTML page, PostScript) or cost time their size does not
    show (a PNG of 70000 empty chunks), all named .jpg or .png: each is a skip whose message says
    what the bytes are and holds nothing that differs between runs (no memory address), so two
    builds write the same tables and manifest, not only the same tars."""
    src = _folder(tmp_path / "src", count=4)
    png = _png()
    hostile = {
        "page.jpg": b"<html><body>403 Forbidden</body></html>",
        "postscript.jpg": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 40\nshowpage\n",
        "flood.png": png[:33] + (b"\0\0\0\0zzZz" + zlib.crc32(b"zzZz").to_bytes(4, "big")) * 70_000 + png[33:],
    }
    for name, data in hostile.items():
        (src / name).write_bytes(data)
        (src / name).with_suffix(".txt").write_text("a photo")
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for out in outs:
        build_dataset(parse_recipe(_raw(src)), out, progress=False)
    assert _files(outs[0]) == _files(outs[1])
    rows = {r["source_id"]: (r["reason"], r["error_message"]) for r in pq.read_table(outs[0] / "manifest.parquet").to_pylist()
            if r["status"] != "success"}
    assert rows == {
        "page.jpg": ("unreadable_image", "unreadable_image: cannot identify an image format (starts with '<html><body>403 ')"),
        "postscript.jpg": ("unsupported_format", "unsupported_format: EPS (by its signature; it starts with '%!PS-Adobe-3.0 E') "
                                                 "is not one of the formats read (JPEG, PNG, GIF, TIFF, WebP, AVIF, BMP)"),
        "flood.png": ("too_many_chunks", "too_many_chunks: a PNG of more than 65536 chunks before its first image ends"),
    }


# --- F03/F14: what a sidecar and a caption may carry ------------------------------------------------


def test_numbers_a_double_cannot_hold_become_null():
    meta, skipped = read_source_json(b'{"s": 1e999, "w": -1e400, "n": NaN, "ok": 0.5, "big": 12345678901234567890}')
    assert skipped is None
    assert meta["json"] == {"s": None, "w": None, "n": None, "ok": 0.5, "big": 12345678901234567890}
    json.dumps(meta, allow_nan=False)


def test_every_line_break_in_a_caption_becomes_a_space():
    breaks = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    caption, error, _ = read_caption(("a" + "b".join(breaks) + "c").encode("utf-8"))
    assert error is None and caption.splitlines() == [caption] and "\u2028" not in caption and "\u2029" not in caption
    assert read_caption("a dog\u2028on a beach".encode("utf-8"))[:2] == ("a dog on a beach", None)


# --- F02/F11/F12: sources' names and spellings, --out inside --source --------------------------------


def test_a_pipe_commands_tar_is_named_by_the_tar_it_reads():
    assert _name("pipe:aws s3 cp s3://bucket/00007.tar -") == "00007.tar"
    assert _name("pipe:curl -s -L 'https://host/a b/00001.tar.gz'") == "00001.tar.gz"
    assert _name("pipe:cat /data/00002.tar") == "00002.tar"
    assert _name("/data/00003.tar") == "00003.tar"
    assert _name("pipe:sh -c 'curl -fsS https://host/00004.tar.zst | zstd -dc'") == "00004.tar.zst"
    assert _name("pipe:sh -c 'cat /data/00005.tar; echo done >&2'") == "00005.tar"
    assert _name("https://host/shards/00006.tar?download=true&token=a1b2") == "00006.tar"


def test_two_streamed_tars_build_with_the_ids_of_the_same_tars_on_disk(tmp_path):
    from builders.sources import WebDatasetConfig, WebDatasetSource
    for i in range(2):
        _json_tar(tmp_path / f"{i:05d}.tar", 0, 2)
    streamed = WebDatasetSource(WebDatasetConfig(urls=f"pipe:cat {tmp_path}/{{00000..00001}}.tar -", test_fraction=0.5))
    local = WebDatasetSource(WebDatasetConfig(urls=f"{tmp_path}/{{00000..00001}}.tar", test_fraction=0.5))
    ids = [[item.source_id for s in ("train", "test") for sid in src.shard_ids(s) for item in src.read(s, sid)]
           for src in (streamed, local)]
    assert ids[0] == ids[1] and ids[0] and ids[0][0].startswith("0000")


def test_the_same_source_folder_spelled_another_way_is_the_same_recipe(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src", count=2)
    monkeypatch.chdir(tmp_path)
    specs = [source_from_spec(s) for s in ("src", "src/", str(src), f"{tmp_path}/./src")]
    assert all(spec == specs[0] for spec in specs) and specs[0]["path"] == str(src.resolve())


@pytest.mark.parametrize("inside", ["src/out", "src"])
def test_an_out_inside_the_source_folder_is_refused(tmp_path, inside):
    src = _folder(tmp_path / "src", count=4)
    before = sorted(p.name for p in src.rglob("*"))
    with pytest.raises(BuildError, match=r"is inside the source folder"):
        build_dataset(parse_recipe(_raw(src)), tmp_path / inside, progress=False)
    assert sorted(p.name for p in src.rglob("*")) == before


def test_the_same_folder_spelled_apart_resumes_and_another_recipe_names_what_differs(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src", count=6)
    monkeypatch.chdir(tmp_path)
    raw = _raw(src)
    for spelling in ("src", "src/", str(src)):
        raw["source"] = source_from_spec(spelling, test_fraction=0.3)
        build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    raw["seed"] = 4
    with pytest.raises(ValueError, match=r"out: holds a build of another recipe \(seed: 3 then, 4 now\)"):
        build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)


def test_a_bad_source_given_in_place_of_the_recipes_is_not_blamed_on_the_recipe_file(tmp_path):
    for i in range(2):
        (tmp_path / f"{i}").mkdir()
        _json_tar(tmp_path / f"{i}" / "00000.tar", 0, 1)
    spec = f"{tmp_path}/{{0,1}}/00000.tar"
    with pytest.raises(RecipeError) as caught:
        load_recipe("icd-debug", {"source": source_from_spec(spec)})
    message = str(caught.value)
    assert "share the name '00000.tar'" in message and "the source given, in place of icd-debug.toml's" in message
    assert not message.startswith(str(Path(__file__).parents[1]))


# --- F13: a tar with data after its end-of-archive block --------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_data_after_a_tars_end_block_is_a_counted_skip(tmp_path, stream):
    _json_tar(tmp_path / "a.tar", 0, 2)
    _json_tar(tmp_path / "b.tar", 0, 2)
    (tmp_path / "00000.tar").write_bytes((tmp_path / "a.tar").read_bytes() + (tmp_path / "b.tar").read_bytes())
    raw = _raw(tmp_path, test_fraction=0.0)
    url = f"pipe:cat {tmp_path}/00000.tar" if stream else str(tmp_path / "00000.tar")
    raw["source"] = {"kind": "webdataset", "urls": url, "test_fraction": 0.0}
    report = build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    assert report.samples == 2 and report.failures == {"data_after_end_of_archive": 1}
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    skips = [r for r in rows if r["status"] != "success"]  # one per split that read the tar
    assert skips and all(r["source_id"] == "00000.tar" and "after the end-of-archive block" in r["error_message"] for r in skips)
    # A tar padded with zeros (as tar and tarfile write them) is not: only data counts.
    (tmp_path / "00000.tar").write_bytes((tmp_path / "a.tar").read_bytes() + bytes(20480))
    assert build_dataset(parse_recipe(raw), tmp_path / "out2", progress=False).failures == {}


# --- F15: verify checks the card and the top of the folder -------------------------------------------


@pytest.mark.parametrize("tamper", ["empty card", "edited count", "stray top-level file"])
def test_verify_checks_the_card_and_stray_top_level_files(built, tamper):
    _, out, _ = built
    assert verify_dataset(out).ok
    card = out / "README.md"
    if tamper == "empty card":
        card.write_text("")
    elif tamper == "edited count":
        card.write_text(card.read_text().replace("| qr | train | 3 |", "| qr | train | 4 |"))
    else:
        (out / "extra.parquet").write_text("stray")
    report = verify_dataset(out)
    said = "unexpected file" if tamper == "stray top-level file" else "is not this build's dataset card"
    assert not report.ok and any(said in p for p in report.problems), report.problems
    if tamper != "stray top-level file":  # one problem does not hide another
        (out / "extra.parquet").write_text("stray")
        problems = verify_dataset(out).problems
        assert any("extra.parquet: unexpected file" in p for p in problems) and any(said in p for p in problems), problems


def test_a_file_no_reader_takes_for_data_at_the_top_is_a_note_not_a_problem(built):
    """`make dataset` writes its contact sheet beside the shards; a note someone leaves there is not
    a reason to refuse the data, a table a reader would take in is."""
    _, out, _ = built
    (out / "preview.png").write_bytes(b"a contact sheet")
    report = verify_dataset(out)
    assert report.ok and any("preview.png: a file the build did not write" in n for n in report.notes), report


def test_verify_of_a_folder_that_is_not_there_is_one_problem(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, said in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "file", "is not a folder")):
        report = verify_dataset(path)
        assert len(report.problems) == 1 and said in report.problems[0] and str(path) in report.problems[0]


def test_a_contact_sheet_refuses_a_count_below_one_and_a_folder_as_its_file(built, tmp_path):
    from builders.preview import preview_dataset
    _, out, _ = built
    with pytest.raises(ValueError, match="count must be an integer >= 1, got -3"):
        preview_dataset(out, tmp_path / "sheet.png", count=-3)
    for name in ("count", "columns"):
        with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got 0"):
            preview_dataset(out, tmp_path / "sheet.png", **{name: 0})
    (tmp_path / "sheet").mkdir()
    with pytest.raises(ValueError, match="sheet: is a folder"):
        preview_dataset(out, tmp_path / "sheet", count=2)


@pytest.mark.parametrize("name", ["sheet.png", "sheet.jpg", "sheet.webp"])
def test_a_contact_sheet_records_what_it_shows_and_what_built_it(built, tmp_path, name, monkeypatch):
    from builders.preview import preview_dataset
    from implicit_concept.shard_reader import iter_samples
    _, out, _ = built
    shown = list(iter_samples(out / "qr" / "train", with_extras=False))[:3]
    monkeypatch.chdir(out)
    sheet = Image.open(preview_dataset(Path("qr/train"), tmp_path / name, count=3))
    assert sheet.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[name.split(".")[1]], "saved as its name says"
    exif = sheet.getexif()
    record = json.loads(exif[0x010E])
    # Named from the sheet's folder, not by this machine's path (the same samples, the same sheet anywhere).
    assert record["shards"] == os.path.relpath(out / "qr" / "train", tmp_path) and record["contaminated_only"] is False
    assert record["keys"] == [s.meta.key for s in shown]
    assert record["recipe_sha256"] == [shown[0].meta.recipe_sha256] and record["built_by"] == [shown[0].meta.version]
    assert exif[0x0131].startswith("implicit-concept ")


def test_a_contact_sheet_of_contaminated_samples_shows_those_alone_and_says_so(built, tmp_path):
    from builders.preview import preview_dataset
    from implicit_concept.shard_reader import iter_samples
    _, out, _ = built
    every = list(iter_samples(out / "qr" / "train", with_extras=False))
    assert any(s.meta.contaminated for s in every) and not all(s.meta.contaminated for s in every)
    for only, name in ((True, "dirty.png"), (False, "all.png")):
        sheet = Image.open(preview_dataset(out / "qr" / "train", tmp_path / name, count=len(every), contaminated_only=only))
        record = json.loads(sheet.getexif()[0x010E])
        assert record["keys"] == [s.meta.key for s in every if s.meta.contaminated or not only]
        assert record["contaminated_only"] is only


def test_a_contact_sheet_draws_every_box_in_its_concepts_colour_with_a_caption_row_per_tile(tmp_path):
    """Each tile is its image scaled up to about 256 px with every ground-truth box outlined where it is;
    tiles sit ``columns`` to a row, each with a caption line under it; ``--out``'s folder is made."""
    from builders.preview import preview_dataset
    from implicit_concept.concepts import concept
    from implicit_concept.shard_reader import iter_samples
    raw = _raw(_folder(tmp_path / "src", count=6), test_fraction=0.0)
    raw.update(image_size=64, min_side=16)
    raw["subsets"] = [{"name": "qr", "concepts": ["qrcode"], "fraction": 1.0, "instances": [2, 2]}]
    build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    folder = tmp_path / "out" / "qr" / "train"
    shown = list(iter_samples(folder, with_extras=False))[:3]
    sheet = Image.open(preview_dataset(folder, tmp_path / "new" / "sheet.png", count=3, columns=2)).convert("RGB")
    scale, pad, tile, caption = 256 // 64, 4, 256, 12
    assert sheet.size == (2 * (tile + pad) + pad, 2 * (tile + caption + pad) + pad)
    assert any(len(s.meta.instances) == 2 for s in shown), "a tile with two boxes"
    for i, sample in enumerate(shown):
        left, top = pad + (i % 2) * (tile + pad), pad + (i // 2) * (tile + caption + pad)
        for instance in sample.meta.instances:
            _, _, x2, y2 = (int(v) for v in instance.box.as_list())
            corner = (left + x2 * scale - 1, top + y2 * scale - 1)
            assert sheet.getpixel(corner) == concept(instance.concept).colour, (sample.meta.key, instance)


def test_a_contact_sheet_of_images_larger_than_a_tile_and_of_no_contaminated_sample(tmp_path):
    """Images over 256 px are shown at their own size; a selection that holds no sample is one line."""
    from builders.preview import preview_dataset
    raw = _raw(_folder(tmp_path / "src", count=2), test_fraction=0.0)
    raw.update(image_size=300, min_side=16)
    raw["subsets"] = [{"name": "clean", "concepts": ["qrcode"], "fraction": 0.0}]
    build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    folder = tmp_path / "out" / "clean" / "train"
    assert Image.open(preview_dataset(folder, tmp_path / "sheet.png", count=1, columns=1)).size == (300 + 8, 300 + 12 + 8)
    with pytest.raises(ValueError, match="clean/train: no samples to show"):
        preview_dataset(folder, tmp_path / "dirty.png", contaminated_only=True)


def test_a_contact_sheet_that_fails_while_saving_leaves_the_earlier_one_whole(built, tmp_path, monkeypatch):
    from builders.preview import preview_dataset
    _, out, _ = built
    dest = preview_dataset(out / "qr" / "train", tmp_path / "sheet.png", count=2)
    before = dest.read_bytes()

    def killed(self, fp, *args, **kwargs):
        fp.write(before[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        preview_dataset(out / "qr" / "train", dest, count=4)
    assert dest.read_bytes() == before


# --- F16: strip never leaves a caption that names a concept, nor empty brackets ------------------------


@pytest.mark.parametrize("caption, stripped", [
    ("water text mark on a lake", "on a lake"),
    ("a dog (watermark)", "a dog"),
    ('dog with "text" on a sofa', "dog with on a sofa"),
    ("a dog [text, logo] runs", "a dog runs"),
])
def test_strip_screens_what_it_leaves_again_and_drops_emptied_brackets(caption, stripped):
    from builders.caption_screen import CaptionScreen
    screen = CaptionScreen("strip")
    verdict = screen.check(caption)
    assert verdict.caption == stripped and verdict.stripped and verdict.names
    assert screen.check(verdict.caption).names == ()
    assert CaptionScreen("strip").check("quick words response code").reason == "caption_empty_after_screen"


def test_a_negative_worker_count_is_refused(tmp_path):
    recipe = parse_recipe(_raw(_folder(tmp_path / "src", count=2)))
    with pytest.raises(BuildError, match=r"workers must be an integer >= 0 .*, got -1"):
        build_dataset(recipe, tmp_path / "out", workers=-1, progress=False)
    assert not (tmp_path / "out").exists()
