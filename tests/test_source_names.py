"""Names as other labs' sources hold them: the same images under names in another Unicode form (a
copy through a Mac writes them decomposed, NFD) are the same dataset, split, keys and bytes; two
files whose names are one in two forms are a recorded clash, never merged; a caption typed on a Mac
is screened and stored as the same caption composed."""
from __future__ import annotations

import codecs
import os
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from builders.build import build_dataset
from builders.caption_screen import CaptionScreen
from builders.recipe import parse_recipe
from builders.sources import FolderConfig, FolderSource, WebDatasetConfig, WebDatasetSource
from builders.sources.caption_text import read_caption
from builders.sources.folder import file_split
from tests.test_sources import jpeg, read_all, write_tar

#: Names whose composed and decomposed forms differ (Latin, Hangul, kana), one in a sub-folder whose
#: name differs too, and one a Kelvin sign, which NFC makes a plain K.
NAMES = ["café", "Ångström", "naïve/über", "사진", "ゴジラ", "été/plage", "\u212aelvin", "zebra"]


def _nf(form: str, name: str) -> str:
    return unicodedata.normalize(form, name)


def _folder(root: Path, form: str, caption_form: str | None = None) -> Path:
    """``NAMES`` as images and captions in ``form`` (the captions' own names in ``caption_form``),
    every file's time the same, as ``cp -a`` keeps it."""
    for i, name in enumerate(NAMES):
        image = root / f"{_nf(form, name)}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), (25 * i, 60, 200 - 20 * i)).save(image)
        caption = image.parent / f"{_nf(caption_form or form, Path(name).name)}.txt"
        caption.write_text(f"a picture of a field number {i}")
    for path in root.rglob("*"):
        os.utime(path, ns=(10**18, 10**18))
    return root


def _files(out: Path) -> dict[str, bytes]:
    """Every file of a build but the shards' stats (which hold how long each took)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith("_stats.json") and not p.name.startswith(".")}


def _build(src: Path, out: Path) -> dict[str, bytes]:
    recipe = {"name": "names", "seed": 3, "image_size": 32, "shard_size": 3,
              "source": {"kind": "folder", "path": str(src), "test_fraction": 0.4},
              "subsets": [{"name": "q", "concepts": ["qrcode", "text"], "fraction": 0.5}]}
    report = build_dataset(parse_recipe(recipe), out, progress=False)
    assert report.failures == {}
    return _files(report.out)


def test_a_folder_copied_through_a_mac_is_the_same_dataset(tmp_path: Path):
    """The same images under NFD names (a Mac's copy), or with captions in NFC beside NFD images,
    build the bytes of the NFC folder: split, source ids, key order, records and recipe.json's
    fingerprint alike (a build started from one resumes from the other). They built another split
    and other bytes while the split hash and source ids took the names as written."""
    composed = _build(_folder(tmp_path / "nfc" / "src", "NFC"), tmp_path / "nfc" / "out")
    for form, caption_form in (("NFD", None), ("NFD", "NFC")):
        folder = tmp_path / f"{form}-{caption_form}"
        built = _build(_folder(folder / "src", form, caption_form), folder / "out")
        assert built.keys() == composed.keys() and [k for k in built if built[k] != composed[k]] == [], (form, caption_form)
    source = FolderSource(FolderConfig(str(tmp_path / "NFD-None" / "src"), test_fraction=0.4), shard_size=100)
    ids = {i.source_id for split in ("train", "test") for i in read_all(source, split)}
    assert ids == {f"{_nf('NFC', n)}.png" for n in NAMES} and "Kelvin.png" in ids
    assert sorted(source.files("train") + source.files("test")) == sorted(f"{_nf('NFD', n)}.png" for n in NAMES), "read by real names"


def test_the_split_a_folder_writer_asks_for_is_the_one_the_source_reads():
    for name in [*NAMES, *(f"{n}{i}" for n in NAMES for i in range(40))]:
        assert file_split(f"{_nf('NFD', name)}.jpg", 0.5) == file_split(f"{_nf('NFC', name)}.jpg", 0.5), name


def test_two_files_one_name_in_two_forms_are_recorded_never_merged(tmp_path: Path):
    """Linux holds "café.jpg" composed and decomposed side by side (a Mac's copy unpacked beside the
    original); which is meant is unknown: every file of the key is a ``name_form_clash`` record that
    spells both names in escapes, and the key is not read. A folder in two forms alike. Keys beside
    them are read as before."""
    for form in ("NFC", "NFD"):
        (tmp_path / f"{_nf(form, 'café')}.jpg").write_bytes(jpeg((10 * len(form), 0, 0)))
        (tmp_path / _nf(form, "été")).mkdir()
        (tmp_path / _nf(form, "été") / "a.jpg").write_bytes(jpeg())
        (tmp_path / _nf(form, "été") / "a.txt").write_text(f"a beach, {form}")
    (tmp_path / "café.txt").write_text("a cafe")
    (tmp_path / "ok.jpg").write_bytes(jpeg())
    (tmp_path / "ok.txt").write_text("a plain name")
    source = FolderSource(FolderConfig(str(tmp_path), test_fraction=0.0), shard_size=100)
    items = read_all(source, "train")
    assert [(i.source_id, i.caption, i.error) for i in items if i.error != "name_form_clash"] == [("ok.jpg", "a plain name", None)]
    clashes = sorted((i.source_id, i.detail) for i in items if i.error == "name_form_clash")
    assert sorted(s for s, _ in clashes) == sorted([
        "caf\u00e9.jpg", "cafe\u0301.jpg", "caf\u00e9.txt",
        "\u00e9t\u00e9/a.jpg", "e\u0301te\u0301/a.jpg", "\u00e9t\u00e9/a.txt", "e\u0301te\u0301/a.txt"])
    said = dict(clashes)
    assert said["cafe\u0301.jpg"] == (
        "caf\u00e9.jpg: the file 'cafe\\u0301.jpg' and 'caf\\xe9.jpg' are one name in two Unicode forms (composed NFC, "
        "decomposed NFD: a Mac's copy beside the original?), so which is meant is unknown and neither is read; keep one")
    assert said["caf\u00e9.txt"].startswith("caf\u00e9.txt: not read: caf\u00e9.jpg of the same key is 2 files in two Unicode forms")
    assert all(d.encode("utf-8") for _, d in clashes)


def _tar_members(form: str, prefix: str = "") -> list[tuple[str, bytes]]:
    """``NAMES``' members in ``form``, sorted by name as ``tar --sort=name`` writes them."""
    members = []
    for i, name in sorted(enumerate(NAMES), key=lambda n: _nf(form, n[1])):
        members += [(f"{prefix}{_nf(form, name)}.jpg", jpeg((25 * i, 60, 90))), (f"{prefix}{_nf(form, name)}.txt", f"a field number {i}".encode())]
    return [*members, (f"{prefix}{_nf(form, 'Ångström')}", b"no extension")]


def test_a_tar_made_on_a_mac_gives_the_items_of_the_same_tar_made_elsewhere(tmp_path: Path):
    """A tar's members named in NFD, or each after a './' (``tar -cf shard.tar -C DIR .``), give the
    source ids, splits, captions and records of the NFC tar (in the tar's order: a stream is not sorted;
    a skip's message names a member as the tar writes it, './' and all)."""
    got = {}
    for form, prefix in (("NFC", ""), ("NFD", ""), ("NFC", "./"), ("NFD", "././")):
        folder = tmp_path / f"{form}{len(prefix)}"
        folder.mkdir()
        write_tar(folder / "00000.tar", _tar_members(form, prefix))
        source = WebDatasetSource(WebDatasetConfig(str(folder / "00000.tar"), test_fraction=0.5))
        got[form, prefix] = [sorted(((i.source_id, i.caption, i.meta, i.error, i.detail.replace(prefix, "") if prefix else i.detail)
                                     for i in read_all(source, s)), key=repr) for s in ("train", "test")]
    composed = got["NFC", ""]
    assert all(composed) and [k for k in got if got[k] != composed] == []
    assert {item[0] for split in composed for item in split} >= {f"00000.tar/{_nf('NFC', n)}" for n in NAMES}


def test_a_tar_key_in_two_forms_is_a_recorded_clash(tmp_path: Path):
    """"café.jpg" decomposed and "café.txt" composed in one tar are two keys of one recorded name, as
    are "./ok.jpg" and "ok.txt": the later one is a ``name_form_clash`` naming both in escapes, not a
    second item of the same source id."""
    write_tar(tmp_path / "00000.tar", [("cafe\u0301.jpg", jpeg()), ("caf\u00e9.txt", b"a cafe"), ("./ok.jpg", jpeg()), ("ok.txt", b"ok")])
    items = read_all(WebDatasetSource(WebDatasetConfig(str(tmp_path / "00000.tar"), test_fraction=0.0)), "train")
    assert [(i.source_id, i.error) for i in items] == [
        ("00000.tar/caf\u00e9", "missing_caption"), ("00000.tar/caf\u00e9", "name_form_clash"),
        ("00000.tar/ok", "missing_caption"), ("00000.tar/ok", "name_form_clash")]
    assert items[1].detail == (
        "00000.tar/caf\u00e9: key 'caf\\xe9' and the earlier key 'cafe\\u0301' are one name written two ways (Unicode forms NFC "
        "and NFD: members added on a Mac?; or with and without './'): its members 'caf\\xe9.txt' are not read; give the key's "
        "members one name")


CONCEPT_CAPTIONS = {
    "사진 워터마크가 있는": "watermark",  # Korean: decomposed, Hangul is jamo
    "한국어 자막 영상": "text",  # ...three jamo to a syllable with a final consonant (막)
    "ロゴ入りの写真": "watermark",  # Japanese: a voiced kana is two characters decomposed
    "ﾛｺﾞ入りの写真": "watermark",  # ...and in half-width kana whatever the form
    "foto com marca d'água": "watermark",
    "un subtítulo aquí": "text",
    "une photo sous-titrée": "text",
}


def test_a_decomposed_caption_names_its_concept(tmp_path: Path):
    """A caption saved on a Mac decomposed named no concept to the screen ("워터마크" as jamo,
    "ロゴ" as ロコ and a combining mark): each character was normalised alone. Stripped, the rest of
    the caption is kept as written."""
    screen, strip = CaptionScreen(), CaptionScreen(policy="strip")
    for caption, concept in CONCEPT_CAPTIONS.items():
        for form in ("NFC", "NFD"):
            text = _nf(form, caption)
            assert screen.check(text).names == (concept,), (form, caption)
            assert _nf("NFC", strip.check(text).caption) == strip.check(_nf("NFC", caption)).caption, (form, caption)


def test_a_caption_is_stored_composed():
    """A decomposed caption, in UTF-8 or UTF-16 with its BOM, is the caption of the composed one."""
    for data in (_nf("NFD", "un café à Seoul, 사진").encode(), codecs.BOM_UTF16_LE + _nf("NFD", "un café à Seoul, 사진").encode("utf-16-le")):
        assert read_caption(data) == ("un caf\u00e9 \u00e0 Seoul, \uc0ac\uc9c4", None, "")


def test_names_that_are_not_utf8_are_recorded_in_every_kind_of_record(tmp_path: Path):
    """A Latin-1 name (``os.fsdecode`` gives it lone surrogates) in a record other than an image's
    own (a caption alone, an image beside a preferred one, a hidden file, a symlink to a folder, a
    folder's files): each is a record with a readable name, and the build's tables are written."""
    src = tmp_path / "src"
    src.mkdir()
    latin = os.fsdecode(b"caf\xe9")
    (src / "ok.png").write_bytes(jpeg())
    (src / "ok.txt").write_text("a red square")
    (src / f"._{latin}.jpg").write_bytes(b"\x00\x05\x16\x07")
    (src / f"alone {latin}.txt").write_text("a caption without an image")
    (src / f"{latin}.jpg").write_bytes(jpeg())
    (src / f"{latin}.png").write_bytes(jpeg())
    (src / f"{latin}.txt").write_text("a caption")
    (src / latin).mkdir()
    (src / latin / "x.jpg").write_bytes(jpeg())
    (src / latin / "x.txt").write_text("in a Latin-1 folder")
    (src / f"link {latin}").symlink_to(src / latin)
    recipe = {"name": "latin", "seed": 3, "image_size": 32, "shard_size": 100,
              "source": {"kind": "folder", "path": str(src), "test_fraction": 0.0},
              "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5}]}
    report = build_dataset(parse_recipe(recipe), tmp_path / "out", progress=False)
    rows = pq.read_table(report.out / "manifest.parquet").to_pylist()
    assert sorted((r["source_id"], r["reason"]) for r in rows) == [
        ("._caf\\xe9.jpg", "hidden_file"), ("alone caf\\xe9.txt", "no_image"), ("caf\\xe9.jpg", "undecodable_name"),
        ("caf\\xe9.png", "duplicate_image"), ("caf\\xe9/x.jpg", "undecodable_name"), ("link caf\\xe9", "not_a_regular_file"),
        ("ok.png", None)]
    assert all(r["error_message"] is None or r["error_message"].isprintable() for r in rows)


def test_what_a_skip_says_names_its_files_and_folders_as_recorded(tmp_path: Path, monkeypatch):
    """A skip's message and a folder that cannot be listed are recorded (the tables, the fingerprint
    a resume compares): named as the files are read, decomposed, a Mac's copy recorded other bytes
    than the original and did not resume from it."""
    import builders.sources.folder as folder_module
    from builders.sources.folder import NotRegularFile, read_regular_file

    big = tmp_path / "big" / _nf("NFD", "été")
    big.mkdir(parents=True)
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(big / f"{_nf('NFD', 'café')}.png")
    (big / f"{_nf('NFD', 'café')}.txt").write_text("a noisy picture")
    [item] = read_all(FolderSource(FolderConfig(str(tmp_path / "big"), test_fraction=0.0, max_file_bytes=4096), shard_size=10), "train")
    assert (item.source_id, item.error) == ("\u00e9t\u00e9/caf\u00e9.png", "file_too_large")
    assert item.detail.startswith("\u00e9t\u00e9/caf\u00e9.png: ") and _nf("NFD", "été") not in item.detail, item.detail

    (tmp_path / _nf("NFD", "déjà")).symlink_to(big)
    try:
        read_regular_file(tmp_path, f"{_nf('NFD', 'déjà')}/a.png", 4096, "d\u00e9j\u00e0/a.png")
    except NotRegularFile as e:
        assert str(e).startswith("d\u00e9j\u00e0/a.png: its folder d\u00e9j\u00e0 is "), str(e)
    else:
        raise AssertionError("a symlinked folder was followed")

    real = folder_module._list
    seen = {}
    for form in ("NFC", "NFD"):
        monkeypatch.setattr(folder_module, "_list", lambda root, form=form: (real(root)[0], {_nf(form, "été"): "Permission denied"}, set()))
        source = FolderSource(FolderConfig(str(tmp_path / "big"), test_fraction=0.0), shard_size=10)
        seen[form] = source.fingerprint(), sorted(i.source_id for i in read_all(source, "train") if i.error == "unreadable_folder")
    assert seen["NFD"] == seen["NFC"] and seen["NFC"][1] == ["\u00e9t\u00e9/"], seen


def test_a_hidden_file_and_a_linked_folder_are_recorded_by_their_composed_names(tmp_path: Path):
    """A Mac's "._café.jpg" and a symlink to a folder, both named decomposed: their skip records held
    the names as written, other source ids than the same folder's copy elsewhere."""
    records = {}
    for form in ("NFC", "NFD"):
        src = tmp_path / form
        (src / "real").mkdir(parents=True)
        (src / "ok.jpg").write_bytes(jpeg())
        (src / "ok.txt").write_text("a plain name")
        (src / f"._{_nf(form, 'café')}.jpg").write_bytes(b"\x00\x05\x16\x07")
        (src / _nf(form, "déjà")).symlink_to(src / "real")
        items = read_all(FolderSource(FolderConfig(str(src), test_fraction=0.0), shard_size=10), "train")
        records[form] = sorted((i.source_id, i.error, i.detail) for i in items if i.error)
    assert records["NFD"] == records["NFC"] and {r[0] for r in records["NFC"]} == {"._caf\u00e9.jpg", "d\u00e9j\u00e0"}, records


def test_two_tars_whose_names_are_one_in_two_forms_are_refused(tmp_path: Path):
    """Source ids start with the tar's name in NFC: "café.tar" from two folders, one decomposed,
    would give one source id to two items, so the recipe is refused naming both."""
    tars = []
    for form in ("NFC", "NFD"):
        (tmp_path / form).mkdir()
        tars.append(str(tmp_path / form / f"{_nf(form, 'café')}.tar"))
        write_tar(Path(tars[-1]), [("a.jpg", jpeg()), ("a.txt", b"a caption")])
    with pytest.raises(ValueError, match="share the name 'caf\u00e9.tar'"):
        WebDatasetSource(WebDatasetConfig(tars))


def test_a_tars_items_and_skips_name_it_and_its_members_as_recorded(tmp_path: Path, monkeypatch):
    """A tar named decomposed, one cut short after a decomposed key, one that cannot be opened and
    one that fails while read: source ids and skip messages (recorded in the tables) are those of the
    same tars named composed, and no message names the folder the tars lie in."""
    import tarfile

    import builders.sources.webdataset_source as webdataset_source

    records = {}
    for form in ("NFC", "NFD"):
        folder = tmp_path / form
        folder.mkdir()
        whole = folder / f"{_nf(form, 'café')}.tar"
        write_tar(whole, [(f"{_nf(form, 'café')}.jpg", jpeg()), (f"{_nf(form, 'café')}.txt", b"a cafe"),
                          ("zz.jpg", jpeg()), ("zz.txt", b"cut short")])
        with tarfile.open(whole) as tar:
            cut = tar.getmember("zz.jpg").offset_data + 10
        (folder / f"{_nf(form, 'déjà')}.tar").write_bytes(whole.read_bytes()[:cut])
        source = WebDatasetSource(WebDatasetConfig([str(whole), str(folder / f"{_nf(form, 'déjà')}.tar")], test_fraction=0.0))
        records[form] = [(i.source_id, i.error, i.meta, i.detail) for i in read_all(source, "train")]
    assert records["NFD"] == records["NFC"], records
    assert [(r[0], r[1]) for r in records["NFC"]] == [
        ("caf\u00e9.tar/caf\u00e9", None), ("caf\u00e9.tar/zz", None), ("d\u00e9j\u00e0.tar/caf\u00e9", None), ("d\u00e9j\u00e0.tar", "corrupt_tar")]
    assert records["NFC"][-1][3].endswith("(after 'caf\u00e9')")

    tar = str(tmp_path / "NFD" / f"{_nf('NFD', 'café')}.tar")

    def refused(path):
        raise PermissionError(13, "Permission denied", path)

    def failing(tf, *args):
        yield from ()
        raise OSError(5, "Input/output error", tar)

    for patch, said in ((("open_tar", refused), "caf\u00e9.tar: PermissionError: Permission denied"),
                        (("group_runs", failing), "OSError: Input/output error (before any sample of the split)")):
        with monkeypatch.context() as m:
            m.setattr(webdataset_source, *patch)
            [item] = read_all(WebDatasetSource(WebDatasetConfig(tar, test_fraction=0.0)), "train")
        assert item.detail == said, item.detail
