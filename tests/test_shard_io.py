import io
import json
import os
import tarfile

import pytest
from PIL import Image

from benchmark.perf import hostile_inputs as hostile
from implicit_concept.content_hashes import sha256_file
from implicit_concept.shard_reader import ShardError, group_members, iter_samples, iter_tar_members, list_shards
from implicit_concept.shard_writer import TarShardWriter
from tests.bounded_memory import memory_headroom


def _write(path, samples):
    with TarShardWriter(path) as w:
        for key, members in samples:
            w.write(key, members)
        return w.close()


def test_tar_is_byte_reproducible_and_renamed_only_when_complete(tmp_path):
    samples = [("000000000", {"txt": b"a", "json": b"{}"}), ("000000001", {"txt": b"b", "json": b"{}"})]
    sha_a = _write(tmp_path / "a.tar", samples)
    sha_b = _write(tmp_path / "b.tar", samples)
    assert sha_a == sha_b == sha256_file(tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["000000000.txt", "000000000.json", "000000001.txt", "000000001.json"]
    assert {i.mtime for i in infos} == {0}
    assert not list(tmp_path.glob(".*tmp*"))


def test_an_aborted_shard_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with TarShardWriter(tmp_path / "00000.tar") as w:
            w.write("000000000", {"txt": b"a"})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_shard_that_cannot_take_its_place_is_named_not_its_hidden_temporary(tmp_path):
    """A folder where the finished shard goes (a copy gone wrong, another tool): the rename fails,
    and the error names the shard a user knows, not the hidden temporary it was written as."""
    (tmp_path / "00000.tar").mkdir()
    with pytest.raises(OSError) as raised:
        _write(tmp_path / "00000.tar", [("000000000", {"txt": b"a"})])
    assert raised.value.filename == str(tmp_path / "00000.tar")
    assert ".tmp" not in str(raised.value) and "->" not in str(raised.value)
    assert [p.name for p in tmp_path.iterdir()] == ["00000.tar"]


def test_keys_with_dots_are_refused(tmp_path):
    with TarShardWriter(tmp_path / "x.tar") as w:
        with pytest.raises(ValueError, match="must not contain"):
            w.write("a.b", {"txt": b""})
        w.close()


def test_members_group_by_key_before_the_first_dot(tmp_path):
    _write(tmp_path / "s.tar", [("k1", {"jpg": b"1", "clean.jpg": b"2", "json": json.dumps({}).encode()})])
    [(key, members)] = list(iter_tar_members(tmp_path / "s.tar"))
    assert key == "k1" and set(members) == {"jpg", "clean.jpg", "json"}


def test_truncated_tar_is_a_clear_error(tmp_path):
    _write(tmp_path / "s.tar", [(f"k{i}", {"txt": b"x" * 5000}) for i in range(4)])
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "s.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(ShardError, match="s.tar"):
        list(iter_tar_members(tmp_path / "s.tar"))


@pytest.mark.parametrize("cut", ["member_header", "end_block"])
def test_a_tar_cut_at_a_member_boundary_is_refused_not_read_as_a_shorter_shard(tmp_path, cut):
    """tarfile stops without a word where a header is missing: a copy cut at a block boundary would
    be read (and exported, trained and scored on) as a complete shard of fewer samples."""
    _write(tmp_path / "s.tar", [(f"k{i}", {"txt": b"x" * 5000}) for i in range(4)])
    with tarfile.open(tmp_path / "s.tar") as tar:
        offsets = [info.offset for info in tar]
        end = tar.offset
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "s.tar").write_bytes(data[: offsets[2] if cut == "member_header" else end])
    with pytest.raises(ShardError, match=r"s\.tar: truncated tar: no end-of-archive block after sample k"):
        list(iter_tar_members(tmp_path / "s.tar"))


def test_tars_joined_with_cat_are_refused_not_read_up_to_the_first_end(tmp_path):
    _write(tmp_path / "a.tar", [("k0", {"txt": b"a"})])
    _write(tmp_path / "b.tar", [("k1", {"txt": b"b"})])
    (tmp_path / "ab.tar").write_bytes((tmp_path / "a.tar").read_bytes() + (tmp_path / "b.tar").read_bytes())
    with pytest.raises(ShardError, match=r"ab\.tar: data at byte \d+, after the end-of-archive block \(after sample k0\)"):
        list(iter_tar_members(tmp_path / "ab.tar"))
    assert list(iter_tar_members(tmp_path / "a.tar")) == [("k0", {"txt": b"a"})]


@pytest.mark.parametrize(
    "data, what",
    [(b"", "an empty file (0 bytes), not a tar"), (b"<html>Not Found</html>", "text, not a tar"), (b"PK\x03\x04" + b"\0" * 600, "a zip archive")],
)
def test_a_file_that_is_not_a_tar_is_a_one_line_error_saying_what_it_is(tmp_path, data, what):
    """tarfile's own text is a line per compression it tried; the command's error is one line."""
    (tmp_path / "s.tar").write_bytes(data)
    with pytest.raises(ShardError) as e:
        list(iter_samples(tmp_path / "s.tar"))
    assert "\n" not in str(e.value) and f"s.tar: unreadable or truncated tar ({what}" in str(e.value)


def test_list_shards_names_a_missing_file(tmp_path):
    with pytest.raises(ShardError, match="00001.tar"):
        (tmp_path / "00000.tar").write_bytes(b"")
        list_shards(str(tmp_path / "{00000..00001}.tar"))



@pytest.mark.parametrize("make, said", [
    (lambda p: p.mkdir(), "a folder, not a shard file"),
    (lambda p: p.symlink_to(p.name), "a symlink to '00000.tar', which leads to no file"),
    (lambda p: p.symlink_to("gone.tar"), "a symlink to 'gone.tar', which leads to no file"),
    (lambda p: os.mkfifo(p), r"a FIFO \(named pipe\), not a regular file; not read"),
])
def test_what_stands_in_a_shard_files_place_is_named(tmp_path, make, said):
    """A folder named like a shard, a symlink loop or a FIFO left by a bad copy is said as what it
    is, not as a missing file the user can see is there."""
    make(tmp_path / "00000.tar")
    with pytest.raises(ShardError, match=r"00000\.tar: " + said):
        list_shards(tmp_path)

# --- bounded reading: a tar's headers say how much memory it takes, and a hostile one lies ---------


def _hostile_shard(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_sparse_member_is_refused_not_read(tmp_path):
    shard = _hostile_shard(tmp_path / "s.tar", hostile.good_members("a", 1, 0) + hostile.sparse_member("b.jpg") + bytes(1024))
    with memory_headroom(), pytest.raises(ShardError, match=r"s\.tar: refused \(sparse_member\)"):
        list(iter_tar_members(shard))


def test_a_member_over_the_cap_is_not_read(tmp_path):
    shard = _hostile_shard(tmp_path / "z.tar.gz", hostile.zeros_tar_gz(b"", hostile.big_member_header("k.jpg", 200 << 20), b"", size=200 << 20))
    with memory_headroom(), pytest.raises(ShardError, match=r"z\.tar\.gz: sample k: member 'k.jpg' is 209715200 bytes, over the cap"):
        list(iter_tar_members(shard))
    _write(tmp_path / "small.tar", [("k", {"jpg": b"x" * 5000, "json": b"{}"})])
    with pytest.raises(ShardError, match="over the cap of 4096"):
        list(iter_tar_members(tmp_path / "small.tar", max_member_bytes=4096))


def test_a_hard_link_to_a_member_over_the_cap_is_refused_as_that_member_is(tmp_path):
    """A link header says size 0: the cap is on what it points at, or a link to another sample's
    oversized member (itself refused) would be read whole, past the hostile-input memory cap."""
    import io

    with tarfile.open(tmp_path / "linked.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        big = tarfile.TarInfo("a.jpg")
        big.size = 8192
        tf.addfile(big, io.BytesIO(b"\0" * 8192))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.LNKTYPE, "a.jpg"
        tf.addfile(link)
        caption = tarfile.TarInfo("b.txt")
        caption.size = 1
        tf.addfile(caption, io.BytesIO(b"b"))
    with tarfile.open(tmp_path / "linked.tar") as tar:
        runs = list(group_members(tar, max_member_bytes=4096))
    assert [(r.key, r.refused and r.refused.reason, r.members) for r in runs] == [
        ("a", "member_too_large", {}), ("b", "member_too_large", {})]
    assert "'b.jpg' is 8192 bytes" in runs[1].refused.detail


def test_an_oversized_header_record_is_refused(tmp_path):
    shard = _hostile_shard(tmp_path / "l.tar.gz", hostile.zeros_tar_gz(b"", hostile.long_name_header(200 << 20), hostile.member("k.jpg", b""), size=200 << 20))
    with memory_headroom(), pytest.raises(ShardError, match=r"refused \(tar_header_too_large\)"):
        list(iter_tar_members(shard))


def test_a_chain_of_header_records_is_refused_not_a_recursion_error(tmp_path):
    shard = _hostile_shard(tmp_path / "c.tar", hostile.header_chain(3000) + bytes(1024))
    with pytest.raises(ShardError, match=r"refused \(tar_header_too_large\)"):
        list(iter_tar_members(shard))


def test_headers_are_forgotten_once_read(tmp_path):
    """tarfile keeps every header it reads: a tar of millions of empty members would fill memory."""
    _write(tmp_path / "many.tar", [(f"k{i:05d}", {"txt": b""}) for i in range(3000)])
    with tarfile.open(tmp_path / "many.tar") as tar:
        assert len(list(group_members(tar, keep={"txt"}))) == 3000
        assert len(tar.members) <= 1


@pytest.mark.parametrize("bomb", ["warning_range", "error_range"])
def test_a_pixel_bomb_in_a_shard_is_an_error_naming_the_shard(tmp_path, bomb):
    data = hostile.png_bomb() if bomb == "warning_range" else hostile.declared_png(20000)
    _write(tmp_path / "b.tar", [("k", {"jpg": data, "txt": b"a", "json": json.dumps(_META).encode()})])
    with memory_headroom(), pytest.raises(ShardError, match=r"b\.tar: sample k: image not decoded \(too_large"):
        list(iter_samples(tmp_path / "b.tar"))


def test_a_deeply_nested_key_json_is_an_error_naming_the_shard(tmp_path):
    _write(tmp_path / "d.tar", [("k", {"jpg": b"", "json": b"[" * 100000 + b"]" * 100000})])
    with pytest.raises(ShardError, match=r"d\.tar: sample k: KEY.json is 200000 bytes|d\.tar: sample k: KEY.json: nested"):
        list(iter_samples(tmp_path / "d.tar"))
    _write(tmp_path / "e.tar", [("k", {"jpg": b"", "json": b"[" * 5000 + b"]" * 5000})])
    with pytest.raises(ShardError, match=r"e\.tar: sample k: KEY.json: nested too deeply"):
        list(iter_samples(tmp_path / "e.tar"))


_META = {
    "key": "k", "caption": "a", "width": 64, "height": 64, "split": "train", "subset": "q", "source": {},
    "instances": [], "seed": [0], "recipe": "r", "recipe_sha256": "0", "version": "0",
}
_INSTANCE = {"concept": "qrcode", "box": [1, 1, 9, 9], "visible": 1.0, "params": "{}"}


@pytest.mark.parametrize(
    "change, complaint",
    [
        ({"caption": 5}, "caption: expected a string, got 5"),
        ({"width": "64"}, "width: expected an integer, got '64'"),
        ({"height": 0}, "width, height: expected at least 1"),
        ({"seed": [0.5]}, "seed: expected a list of integers"),
        ({"instances": [{**_INSTANCE, "box": [1, 1, 70, 9]}]}, r"instances\[0\]: qrcode box \[1, 1, 70, 9\] outside the image \(64x64\)"),
        ({"instances": [{**_INSTANCE, "box": [-4, 1, 9, 9]}]}, r"instances\[0\]: qrcode box \[-4, 1, 9, 9\] outside"),
        ({"instances": [{**_INSTANCE, "box": [1.5, 1, 9, 9]}]}, r"instances\[0\].box: expected four integers"),
        ({"instances": [{**_INSTANCE, "concept": ["qrcode"]}]}, r"instances\[0\].concept: expected a string"),
        ({"instances": [{**_INSTANCE, "concept": "logo"}]}, r"instances\[0\].concept: 'logo' is not an ICD concept"),
        ({"instances": [{**_INSTANCE, "visible": 1.5}]}, r"instances\[0\].visible: expected a number in \[0, 1\]"),
    ],
)
def test_a_key_json_no_writer_makes_is_an_error_naming_the_field(tmp_path, change, complaint):
    """KEY.json is checked when read, not only by verify: a wrong type would fail far away as a
    traceback, and a box outside the image would become a wrong label."""
    jpg = io.BytesIO()
    Image.new("RGB", (64, 64)).save(jpg, "JPEG")
    _write(tmp_path / "m.tar", [("k", {"jpg": jpg.getvalue(), "txt": b"a", "json": json.dumps({**_META, **change}).encode()})])
    with pytest.raises(ShardError, match=r"m\.tar: sample k: KEY.json is not an ICD sample record \(ValueError: " + complaint):
        list(iter_samples(tmp_path / "m.tar"))




def _image(size, mode="RGB", fmt="JPEG"):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "member, data, complaint",
    [
        ("jpg", _image((32, 32)), "jpg is 32x32, its KEY.json says 64x64"),
        ("clean.jpg", _image((64, 48)), "clean.jpg is 64x48, its KEY.json says 64x64"),
        ("mask.png", _image((10, 10), "L", "PNG"), "mask.png is 10x10, its KEY.json says 64x64"),
        ("mask.png", _image((64, 64), "RGBA", "PNG"), "mask.png is in mode RGBA, not L"),
    ],
    ids=["jpg_size", "clean_size", "mask_size", "mask_mode"],
)
def test_an_image_of_another_size_than_its_key_json_is_refused_naming_the_sample(tmp_path, member, data, complaint):
    """The boxes are in KEY.json's pixel grid: read with an image of another size (a sample from
    another recipe's build pasted in, a re-encoded image), training's loss weights and a contact
    sheet's boxes would mark the wrong pixels, without a word."""
    record = {**_META, "instances": [_INSTANCE]}
    members = {"jpg": _image((64, 64)), "txt": b"a", "json": json.dumps(record).encode(),
               "clean.jpg": _image((64, 64)), "mask.png": _image((64, 64), "L", "PNG")}
    _write(tmp_path / "ok.tar", [("k", members)])
    assert [s.key for s in iter_samples(tmp_path / "ok.tar")] == ["k"]
    _write(tmp_path / "m.tar", [("k", {**members, member: data})])
    with pytest.raises(ShardError, match=r"m\.tar: sample k: " + complaint):
        list(iter_samples(tmp_path / "m.tar"))

def test_our_shards_are_grouped_by_the_sources_rule_hidden_members_and_repeats_included(tmp_path):
    """One grouping rule for every tar: a macOS ``._a.jpg`` never splits a sample of our own shards
    either, and a key repeated after other keys' members is a broken shard, named."""
    from tests.test_sources import write_tar

    write_tar(tmp_path / "ok.tar", [("a.jpg", b"1"), ("._a.jpg", b"meta"), ("a.txt", b"2"), (".DS_Store", b"x"), ("b.txt", b"3")])
    assert list(iter_tar_members(tmp_path / "ok.tar")) == [("a", {"jpg": b"1", "txt": b"2"}), ("b", {"txt": b"3"})]
    write_tar(tmp_path / "repeat.tar", [("a.txt", b"1"), ("b.txt", b"2"), ("a.jpg", b"3")])
    with pytest.raises(ShardError, match=r"repeat.tar: sample a: key 'a' again"):
        list(iter_tar_members(tmp_path / "repeat.tar"))
