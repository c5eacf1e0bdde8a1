"""Which processes are still alive, read from /proc: a test that stops a command checks that none of
its workers (its process group) or of its terminal's processes (its session) outlived it."""
from pathlib import Path

_GROUP, _SESSION = 2, 3  # fields of /proc/PID/stat after the command's name


def alive_in_group(pgid: int) -> list[int]:
    return _alive(_GROUP, pgid)


def alive_in_session(sid: int) -> list[int]:
    return _alive(_SESSION, sid)


def _alive(field: int, value: int) -> list[int]:
    """The pids whose ``field`` is ``value``, zombies (ended, not yet reaped) left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                found.append(int(entry.name))
    return found
