"""A folder's content hash is its files' paths and bytes: what names a cache entry or a model.
Hidden files (a lock, a temporary) are not content, and a file rewritten in place is hashed anew
whatever this process remembers of it."""
import os

from implicit_concept.content_hashes import folder_sha256


def _folder(root):
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "weights.bin").write_bytes(b"aaaa")
    (root / "model_index.json").write_bytes(b"{}")
    return root


def test_hidden_files_in_a_folder_are_not_its_content(tmp_path):
    """The lock a maker holds in a run's folder, or a temporary beside a weights file while it is
    written, changed the hash every cache key and published model is checked by."""
    folder = _folder(tmp_path / "pipe")
    before = folder_sha256(folder)
    (folder / ".implicit-concept.lock").write_bytes(b"1234\n")
    (folder / "unet" / ".weights.bin.tmp").write_bytes(b"half")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "entry").write_bytes(b"x")
    assert folder_sha256(folder) == before
    (folder / "unet" / "extra.bin").write_bytes(b"")
    assert folder_sha256(folder) != before


def test_a_file_rewritten_in_place_at_the_same_size_is_hashed_anew(tmp_path):
    """Remembered by path, size and inode only, a weights file overwritten in place (same size, same
    inode: ``open(path, "r+b")``) kept its old hash for the rest of the process."""
    folder = _folder(tmp_path / "pipe")
    before = folder_sha256(folder)
    weights = folder / "unet" / "weights.bin"
    stat = weights.stat()
    with open(weights, "r+b") as f:
        f.write(b"bbbb")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a coarse clock's writes can share an mtime
    assert weights.stat().st_ino == stat.st_ino and weights.stat().st_size == stat.st_size
    assert folder_sha256(folder) != before


def test_a_file_hashed_another_way_is_not_given_the_hash_remembered_for_its_bytes(tmp_path):
    """``digest`` (a config hashed without the path it was loaded from) and the sha256 of the same
    file's bytes are remembered apart: whichever was asked second got the first's."""
    folder = _folder(tmp_path / "pipe")
    plain = folder_sha256(folder)

    def one_for_every_file(path):
        return "0" * 64

    assert folder_sha256(folder, digest=one_for_every_file) != plain
    assert folder_sha256(folder) == plain
