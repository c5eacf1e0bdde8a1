"""Every source item that is not used is recorded with its id, reason and error text (img2dataset's
per-sample status in each shard's parquet); the CLI counts each bad file once; a build with no
sample, a bad ``--out`` or a mistyped ``--source`` is one clear line; GIF, TIFF and the other
formats Pillow reads are used, not silently ignored."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmark.cli import main
from builders.build import build_dataset
from builders.recipe import parse_recipe
from builders.shard_table import COLUMNS
from builders.verify import verify_dataset
from implicit_concept.shard_reader import iter_tar_members
from tests.test_sources import write_tar

FOUR_SUBSETS = [
    {"name": name, "concepts": concepts, "fraction": 0.5}
    for name, concepts in (("qr", ["qrcode"]), ("wm", ["watermark"]), ("tx", ["text"]), ("mixed", ["qrcode", "watermark", "text"]))
]


def _png(size=(48, 48), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _folder(root: Path, good: int = 4, small: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(good):
        (root / f"good{i}.png").write_bytes(_png(colour=(40 * i, 90, 90)))
        (root / f"good{i}.txt").write_text(f"a red square number {i}")
    for i in range(small):
        (root / f"small{i}.png").write_bytes(_png(size=(8, 8)))
        (root / f"small{i}.txt").write_text("a tiny picture")
    (root / "nocaption.png").write_bytes(_png())
    return root


def _recipe(src: Path, subsets=FOUR_SUBSETS, test_fraction: float = 0.5, **extra) -> dict:
    return {
        "name": "skips", "seed": 2, "image_size": 32, "min_side": 16, "shard_size": 100,
        "source": {"kind": "folder", "path": str(src), "test_fraction": test_fraction},
        "subsets": subsets, **extra,
    }


def test_every_unused_item_has_a_row_with_its_reason_and_error(tmp_path):
    src = _folder(tmp_path / "src")
    out = tmp_path / "out"
    build_dataset(parse_recipe(_recipe(src)), out, progress=False)
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.column_names == COLUMNS
    rows = manifest.to_pylist()
    assert len(rows) == 4 * 8  # every source item, in each of the four subsets
    skipped = [r for r in rows if r["status"] != "success"]
    assert {(r["source_id"], r["status"], r["reason"]) for r in skipped} == {
        *((f"small{i}.png", "failed_to_decode", "too_small") for i in range(3)),
        ("nocaption.png", "failed_to_read", "missing_caption"),
    }
    small = next(r for r in skipped if r["reason"] == "too_small")
    assert small["error_message"] == "too_small: 8x8 < 16" and small["sha256"] is None and small["caption"] == "a tiny picture"
    assert "nocaption.txt" in next(r for r in skipped if r["reason"] == "missing_caption")["error_message"]
    for shard in out.rglob("*.parquet"):
        if shard.name == "manifest.parquet":
            continue
        table = pq.read_table(shard).to_pylist()
        jpgs = {key: m["jpg"] for key, m in iter_tar_members(shard.with_suffix(".tar"))}
        assert [r["key"] for r in table] == sorted(r["key"] for r in table)
        assert {r["key"]: r["sha256"] for r in table if r["status"] == "success"} == {k: hashlib.sha256(v).hexdigest() for k, v in jpgs.items()}
    assert verify_dataset(out).ok


def test_the_cli_counts_each_bad_file_once_whatever_the_subsets(tmp_path, capsys):
    """Three too-small files read by four subsets are three, not twelve."""
    src = _folder(tmp_path / "src")
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(_recipe(src)))
    assert main(["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert '{"missing_caption": 1, "too_small": 3}' in line and "each counted once" in line


def _toml(raw: dict) -> str:
    lines = [f'name = "{raw["name"]}"', f'seed = {raw["seed"]}', f'image_size = {raw["image_size"]}',
             f'min_side = {raw["min_side"]}', f'shard_size = {raw["shard_size"]}', "[source]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in raw["source"].items()]
    for s in raw["subsets"]:
        lines += ["[[subsets]]", f'name = "{s["name"]}"', f"concepts = {s['concepts']!r}".replace("'", '"'), f'fraction = {s["fraction"]}']
    return "\n".join(lines) + "\n"


def test_a_build_with_no_sample_exits_non_zero_saying_why(tmp_path, capsys):
    src = _folder(tmp_path / "src", good=0)
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(_recipe(src)))
    assert main(["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no samples: all 4 source items were skipped (missing_caption: 1, too_small: 3)" in err[0]
    assert main(["verify", str(tmp_path / "out"), "--quiet"]) == 1  # a failed build is never OK
    captured = capsys.readouterr()
    assert "no samples: every source item was skipped, so the build failed" in captured.err and "FAILED" in captured.out


def test_a_build_with_no_sample_quotes_one_skip_of_its_commonest_reason(tmp_path, capsys):
    """The one line of a build that made nothing quotes a skip's message, which says what to do:
    here every caption is named after another file (a folder per sample)."""
    src = tmp_path / "src"
    for i in range(3):
        (src / f"s{i}").mkdir(parents=True)
        (src / f"s{i}" / "image.png").write_bytes(_png())
        (src / f"s{i}" / "prompt.txt").write_text("a red square")
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(_recipe(src)))
    assert main(["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert ("no samples: all 6 source items were skipped (missing_caption: 3, no_image: 3); e.g. s0/image.png: "
            "missing_caption: no s0/image.txt; s0/prompt.txt is the only caption in its folder, but a caption is read "
            "from the image's name: s0/image.txt; each one's reason is in") in err, err


@pytest.mark.parametrize("workers", [1, 2])
def test_out_problems_are_one_line(tmp_path, capsys, workers):
    recipe = Path(__file__).parents[1] / "manifests" / "icd-debug.toml"
    (tmp_path / "a-file").write_text("not a folder")
    for out, said in ((tmp_path / "a-file", "exists and is not a folder"), (tmp_path / "a-file" / "below", "which is a file")):
        assert main(["build", str(recipe), "--out", str(out), "--workers", str(workers), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and said in err[0], err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_write_a_worker_cannot_make_is_one_line(tmp_path, capsys, monkeypatch, workers):
    """A shard's place taken by a folder: the worker that builds it fails to write (as on a read-only
    or full disk), and the error reaches the command line as one line, not a worker's traceback."""
    import builders.build as build_module

    recipe = Path(__file__).parents[1] / "manifests" / "icd-debug.toml"
    out = tmp_path / "out"
    claimed = build_module._claim_output

    def claim_then_block(*args, **kwargs):  # once the folder is the build's (a new one is refused if not empty)
        record = claimed(*args, **kwargs)
        (out / "icd-text" / "train" / "00001.tar").mkdir(parents=True)
        return record

    monkeypatch.setattr(build_module, "_claim_output", claim_then_block)
    assert main(["build", str(recipe), "--out", str(out), "--workers", str(workers), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: cannot write the dataset here: Is a directory" in err[0] and "00001.tar" in err[0], err


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0, reason="root writes to read-only folders")
def test_a_read_only_out_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    recipe = Path(__file__).parents[1] / "manifests" / "icd-debug.toml"
    assert main(["build", str(recipe), "--out", str(out), "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_mistyped_source_folder_is_named(tmp_path, capsys):
    wrong = tmp_path / "imagse"
    assert main(["build", "icd-v1", "--source", str(wrong), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--source {wrong}: no such folder" in err and "icd-v1.toml" not in err
    assert main(["build", "icd-v1", "--source", f"{tmp_path}/{{00000..00001}}.tar", "--quiet"]) == 2
    assert f"2 of 2 tar files do not exist, first '{tmp_path}/00000.tar'" in capsys.readouterr().err


def test_a_gzipped_tar_builds_as_tgz_or_tar_gz_and_another_file_is_named(tmp_path, capsys):
    members = [("a.png", _png()), ("a.txt", b"a red square")]
    with tarfile.open(tmp_path / "00000.tgz", "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "00000.tar.gz").write_bytes((tmp_path / "00000.tgz").read_bytes())
    for name in ("00000.tgz", "00000.tar.gz"):
        assert main(["build", "icd-debug", "--source", str(tmp_path / name), "--out", str(tmp_path / name.replace(".", "_")), "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "shards.zip").write_bytes(b"PK")
    assert main(["build", "icd-debug", "--source", str(tmp_path / "shards.zip"), "--out", str(tmp_path / "zip"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--source {tmp_path / 'shards.zip'}: a file, but not a tar shard" in err and "no such folder" not in err


@pytest.mark.parametrize("kind", ["webdataset", "folder"])
def test_nan_and_infinity_in_a_source_json_become_null_in_strict_json(tmp_path, kind):
    """img2dataset's sidecars hold NaN/Infinity, in its tars and in its ``files`` folders alike; what
    a build writes is JSON any strict parser reads, with the sidecar in the sample's source meta."""
    sidecar = b'{"url": "http://x/a.jpg", "similarity": NaN, "pwatermark": Infinity, "low": [-Infinity, 1.5]}'
    files = (("a.png", _png()), ("a.txt", b"a red square"), ("a.json", sidecar))
    raw = _recipe(tmp_path, FOUR_SUBSETS[:1], test_fraction=0.0)
    if kind == "webdataset":
        with tarfile.open(tmp_path / "00000.tar", "w") as tf:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        raw["source"] = {"kind": "webdataset", "urls": str(tmp_path / "00000.tar"), "test_fraction": 0.0}
    else:
        (tmp_path / "files").mkdir()
        for name, data in files:
            (tmp_path / "files" / name).write_bytes(data)
        raw["source"] = {"kind": "folder", "path": str(tmp_path / "files"), "test_fraction": 0.0}
    build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)

    def strict(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    [(_, members)] = list(iter_tar_members(tmp_path / "out" / "qr" / "train" / "00000.tar"))
    record = json.loads(members["json"], parse_constant=strict)
    assert json.loads(record["source"]["meta"], parse_constant=strict)["json"] == {
        "url": "http://x/a.jpg", "similarity": None, "pwatermark": None, "low": [None, 1.5]}
    assert verify_dataset(tmp_path / "out").ok


def test_gif_tiff_and_other_pillow_formats_are_used(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    frames = [Image.new("P", (40, 40), i) for i in range(3)]
    frames[0].save(src / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (40, 40), (10, 200, 10)).save(src / "page.tiff", save_all=True, append_images=[Image.new("RGB", (40, 40))])
    Image.new("I;16", (40, 40), 30000).save(src / "deep.tif")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(src / "photo.jfif", "JPEG")
    Image.new("RGBA", (40, 40), (1, 2, 3, 100)).save(src / "web.avif")
    for name in ("animated", "page", "deep", "photo", "web"):
        (src / f"{name}.txt").write_text(f"a picture called {name}")
    report = build_dataset(parse_recipe(_recipe(src, FOUR_SUBSETS[:1], test_fraction=0.0)), tmp_path / "out", progress=False)
    assert report.samples == 5 and report.failures == {}, report


def test_an_image_no_decoder_path_foresaw_is_a_counted_skip(tmp_path):
    """A 32-bit integer TIFF once raised a bare ValueError that ended the build; any decoder error on
    one item is that item's recorded skip (here one the conversion does not handle: mode F)."""
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (48, 48), (90, 90, 90)).save(src / "good.jpg")
    Image.fromarray(np.arange(48 * 48, dtype=np.int32).reshape(48, 48) * 30).save(src / "int32.tif")
    Image.new("F", (48, 48), 0.5).save(src / "float.tif")
    for name in ("good", "int32", "float"):
        (src / f"{name}.txt").write_text(f"a picture called {name}")
    report = build_dataset(parse_recipe(_recipe(src, FOUR_SUBSETS[:1], test_fraction=0.0)), tmp_path / "out", progress=False)
    assert report.samples == 2 and report.failures == {"unsupported_mode": 1}
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert {(r["source_id"], r["status"]) for r in rows} == {("good.jpg", "success"), ("int32.tif", "success"), ("float.tif", "failed_to_decode")}


def test_one_picture_in_two_formats_is_one_sample_in_one_split(tmp_path):
    """The tester's train/test leak: photo8.jpg and photo8.png beside photo8.txt."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"photo{i}.jpg").write_bytes(_png(colour=(20 * i, 90, 90)))
        (src / f"photo{i}.png").write_bytes(_png(colour=(20 * i, 90, 90)))
        (src / f"photo{i}.txt").write_text(f"picture {i}")
    build_dataset(parse_recipe(_recipe(src, FOUR_SUBSETS[:1])), tmp_path / "out", progress=False)
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    samples = {r["source_id"]: r["split"] for r in rows if r["status"] == "success"}
    assert set(samples) == {f"photo{i}.jpg" for i in range(12)} and set(samples.values()) == {"train", "test"}
    assert {(r["source_id"], r["reason"], r["split"]) for r in rows if r["status"] != "success"} == {
        (f"photo{i}.png", "duplicate_image", samples[f"photo{i}.jpg"]) for i in range(12)
    }
    assert verify_dataset(tmp_path / "out").ok


def test_a_hard_link_in_a_source_tar_is_followed(tmp_path):
    image = _png()
    with tarfile.open(tmp_path / "00000.tar", "w") as tf:
        for name, data in (("a.png", image), ("a.txt", b"first"), ("b.txt", b"second")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = tarfile.LNKTYPE, "a.png"
        tf.addfile(link)
    raw = _recipe(tmp_path, FOUR_SUBSETS[:1], test_fraction=0.0)
    raw["source"] = {"kind": "webdataset", "urls": str(tmp_path / "00000.tar"), "test_fraction": 0.0}
    report = build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    assert (report.samples, report.failures) == (2, {}), report


def _members(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    write_tar(path, members)
    return path.read_bytes()


def test_every_count_is_per_source_item_in_the_cli_the_card_and_the_rows(tmp_path, capsys):
    """A tar holding a hidden member, a second image of a key, a key repeated after others, a key with
    no caption and another tar joined on with cat, read by two subsets and both splits: the CLI, the
    card and the report count each item once (the joined tar, met by each split's read, once; the
    repeated key twice, as it is read twice), and used + skipped items add up to the items, which
    are one subset's rows."""
    good = _png()
    tar = tmp_path / "00000.tar"
    joined = _members(tmp_path / "other.tar", [("z.png", good), ("z.txt", b"never read")])
    data = _members(tar, [("a.png", good), ("a.txt", b"a red square"), ("b.png", good), ("b.jpg", good), ("b.txt", b"two files"),
                          ("._c.png", b"\x00\x05\x16\x07"), ("c.png", good), ("c.txt", b"after a hidden member"),
                          ("d.png", good), ("a.png", good), ("a.txt", b"again")])
    tar.write_bytes(data + joined)
    raw = _recipe(tmp_path, FOUR_SUBSETS[:2])
    raw["source"] = {"kind": "webdataset", "urls": str(tar), "test_fraction": 0.5}
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(raw))
    assert main(["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    skipped = {"data_after_end_of_archive": 1, "duplicate_image": 1, "duplicate_key": 1, "hidden_file": 1, "missing_caption": 1}
    assert f"skipped source items (each counted once, whatever the subsets that read it): {json.dumps(skipped)}" in capsys.readouterr().out
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    one_subset = [r for r in rows if r["subset"] == "qr"]
    assert len(rows) == 2 * len(one_subset) == 2 * (7 + 2)  # seven items, and the joined tar met by each split
    assert sorted(r["source_id"] for r in one_subset if r["status"] == "success") == ["00000.tar/a", "00000.tar/b", "00000.tar/c"]
    report = build_dataset(parse_recipe(raw), tmp_path / "out", progress=False)
    assert (report.summary.items, report.summary.used, report.failures, report.samples) == (8, 3, skipped, 6)
    card = (tmp_path / "out" / "README.md").read_text()
    assert ("8 source items (each counted once, whatever the subsets that read it): 3 made samples, 5 skipped "
            "(data_after_end_of_archive 1, duplicate_image 1, duplicate_key 1, hidden_file 1, missing_caption 1)") in card
    assert verify_dataset(tmp_path / "out").ok


def test_a_build_with_no_sample_counts_each_item_once(tmp_path, capsys):
    """The reasons of "all N source items were skipped" add up to N, however often a source id recurs."""
    tar = tmp_path / "00000.tar"
    _members(tar, [("._a.png", b"\x00\x05\x16\x07"), ("a.txt", b"a caption"), ("b.txt", b"another"), ("a.txt", b"again")])
    raw = _recipe(tmp_path, FOUR_SUBSETS[:2])
    raw["source"] = {"kind": "webdataset", "urls": str(tar), "test_fraction": 0.0}
    recipe = tmp_path / "r.toml"
    recipe.write_text(_toml(raw))
    assert main(["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no samples: all 4 source items were skipped (duplicate_key: 1, hidden_file: 1, no_image: 2)" in err


def test_an_error_naming_a_file_with_a_newline_or_an_escape_is_one_line(tmp_path, capsys):
    """A name holding a line break or a terminal escape sequence, quoted in an error, is shown
    escaped: the error stays one line, and the terminal shows no colour or cursor trick."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "new\nline\x1b[2J.png").write_bytes(_png())
    assert main(["build", "icd-debug", "--source", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert "e.g. new\\nline\\x1b[2J.png: missing_caption: no new\\nline\\x1b[2J.txt;" in err and "\x1b" not in err, err
    assert main(["build", "icd-debug", "--source", str(tmp_path / "no\nsuch"), "--out", str(tmp_path / "out2")]) == 2
    [err] = capsys.readouterr().err.strip().splitlines()
    assert "no\\nsuch: no such folder" in err, err


def test_a_skip_over_a_source_cap_names_the_field_that_raises_it(tmp_path):
    """An image over ``max_file_bytes``, a member over ``max_member_bytes`` or an image over
    ``max_pixels``: each record says which recipe field would let it in."""
    src = _folder(tmp_path / "src", good=2, small=0)
    (src / "nocaption.png").unlink()
    (src / "big.png").write_bytes(_png(size=(600, 600)) + bytes(5000))
    (src / "big.txt").write_text("a big picture")
    (src / "wide.png").write_bytes(_png(size=(400, 100)))
    (src / "wide.txt").write_text("a wide picture")
    source = {"kind": "folder", "path": str(src), "test_fraction": 0.0, "max_file_bytes": 6000, "max_pixels": 30000}
    build_dataset(parse_recipe({**_recipe(src), "source": source}), tmp_path / "out", progress=False)
    write_tar(tmp_path / "00000.tar", [("a.png", _png()), ("a.txt", b"a red square"), ("b.png", _png() + bytes(5000)), ("b.txt", b"big")])
    tars = {"kind": "webdataset", "urls": str(tmp_path / "00000.tar"), "test_fraction": 0.0, "max_member_bytes": 4096}
    build_dataset(parse_recipe({**_recipe(src), "source": tars}), tmp_path / "tars", progress=False)
    rows = [r for out in ("out", "tars") for r in pq.read_table(tmp_path / out / "manifest.parquet").to_pylist()]
    said = {r["reason"]: r["error_message"] for r in rows if r["status"] != "success"}
    assert said["file_too_large"].endswith("; to read it, raise max_file_bytes in a recipe's [source]"), said
    assert said["too_large"] == "too_large: 400x100 pixels > the cap of 30000; to read it, raise max_pixels in a recipe's [source]"
    assert said["member_too_large"].endswith("over the cap of 4096; to read it, raise max_member_bytes in a recipe's [source]")
