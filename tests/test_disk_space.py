"""What a write that ran out of room says: the file, what ran out and, where free space is what
ran out, how much is free there now."""
import errno

from implicit_concept.disk_space import space_message


def test_the_file_size_limit_is_said_without_the_disks_free_space(tmp_path):
    """``ulimit -f`` is hit whatever the disk holds: its free space beside it sent users to make room
    on a disk that had plenty."""
    path = tmp_path / "shard-000.tar"
    said = space_message(OSError(errno.EFBIG, "File too large", str(path)))
    assert said == (f"{path}: cannot be written: the file size limit was hit (ulimit -f) (File too large); "
                    "make room and rerun the same command to resume")
    assert "free there now" in space_message(OSError(errno.ENOSPC, "No space left on device", str(path)))
