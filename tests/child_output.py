"""A child's output read a line at a time, then the rest by ``communicate``: ``readline`` on a
pipe takes whatever has arrived into its buffer, and ``communicate`` reads the pipe itself, so
lines written together with the first (a child ahead of a loaded test) were lost to it."""
import os
import subprocess


def read_line(proc: subprocess.Popen) -> str:
    """The next line of ``proc``'s stdout (up to its end), read a byte at a time so that what follows
    stays in the pipe for ``communicate``."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(proc.stdout.fileno(), 1)
        if not byte:
            break
        line += byte
    return line.decode()
