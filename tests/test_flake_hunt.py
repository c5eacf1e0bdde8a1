"""Races of the suite itself, forced: what a loaded CI machine did once by chance is done here every time."""
import subprocess
import sys

from tests.child_output import read_line

TWO_LINES = "import os; os.write(1, b'working\\n'); os.write(1, b'done 0.0\\n')"


def test_a_child_ahead_of_its_reader_keeps_the_lines_after_the_first():
    """test_pool_ends' executor wrote its first line and its result before the loaded test read the
    first: readline took both into its buffer and communicate returned '' (CI-like load, 1 run of 6)."""
    proc = subprocess.Popen([sys.executable, "-c", TWO_LINES], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.wait(timeout=60)  # both lines are in the pipe before the first is read
    assert read_line(proc) == "working\n"
    assert proc.communicate(timeout=60) == ("done 0.0\n", "")


def test_a_line_without_its_newline_is_read_to_the_end_of_the_output():
    proc = subprocess.Popen([sys.executable, "-c", "import os; os.write(1, b'cut')"], stdout=subprocess.PIPE, text=True)
    proc.wait(timeout=60)
    assert (read_line(proc), read_line(proc)) == ("cut", "")
    proc.communicate(timeout=60)
