import json
import tarfile

import pytest

from implicit_concept.files import sha256_file
from implicit_concept.shard_reader import ShardError, iter_tar_members, list_shards
from implicit_concept.shard_writer import TarShardWriter


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


def test_list_shards_names_a_missing_file(tmp_path):
    with pytest.raises(ShardError, match="00001.tar"):
        (tmp_path / "00000.tar").write_bytes(b"")
        list_shards(str(tmp_path / "{00000..00001}.tar"))
