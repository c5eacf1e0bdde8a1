"""A file someone handed over is read whole only when it is a regular file of at most the bytes a
file of its kind holds; anything else is refused, naming it, before a byte is read."""
import os
import subprocess
import sys

import pytest

from implicit_concept.bounded_reads import read_regular_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_file_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(tmp_path):
    """The limit is the most a file of its kind holds: one that size is that kind's largest, not too large."""
    path = tmp_path / "record.json"
    path.write_bytes(b"x" * 16)
    assert read_regular_file(path, 16) == b"x" * 16
    path.write_bytes(b"x" * 17)
    with pytest.raises(ValueError, match=rf"^{path}: over 16 bytes, more than a file of this kind holds; not read$"):
        read_regular_file(path, 16)


def test_a_fifo_with_no_writer_is_refused_without_waiting_for_one(tmp_path):
    """Opening a FIFO for reading waits for a writer: a FIFO put where a record was, with none,
    hung the command before anything could refuse it. Read in a child, so a hang fails this test."""
    fifo = tmp_path / "record.json"
    os.mkfifo(fifo)
    read = "import sys\nfrom implicit_concept.bounded_reads import read_regular_file\nread_regular_file(sys.argv[1], 16)\n"
    try:
        done = subprocess.run([sys.executable, "-c", read, str(fifo)], cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": REPO})
    except subprocess.TimeoutExpired:
        pytest.fail("the read waited for a writer")
    assert done.returncode == 1 and f"ValueError: {fifo}: a FIFO (named pipe), where a file was expected" in done.stderr, done.stderr
