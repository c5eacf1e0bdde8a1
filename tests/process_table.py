"""Which processes are still alive, read from /proc: a test that stops a command checks that none of
its workers (its process group) or of its terminal's processes (its session) outlived it."""
import os
import signal
import time
from pathlib import Path

_PARENT, _GROUP, _SESSION = 1, 2, 3  # fields of /proc/PID/stat after the command's name


def alive_in_group(pgid: int) -> list[int]:
    return _alive(_GROUP, pgid)


def alive_in_session(sid: int) -> list[int]:
    return _alive(_SESSION, sid)


def running_children(pid: int) -> list[int]:
    """``pid``'s child processes still running (an ended one not yet reaped is not)."""
    return _alive(_PARENT, pid)


def parent_of(pid: int) -> int | None:
    """``pid``'s parent, or None once it has ended."""
    fields = _stat(pid)
    return int(fields[_PARENT]) if fields else None


def left_in_group(pgid: int, seconds: float) -> list[int]:
    """The processes of group ``pgid`` still running once it empties or ``seconds`` pass (killed then,
    so a failing test leaves none behind)."""
    return _left(alive_in_group, pgid, seconds)


def left_in_session(sid: int, seconds: float) -> list[int]:
    """The processes of session ``sid`` still running once it empties or ``seconds`` pass (killed then)."""
    return _left(alive_in_session, sid, seconds)


def _left(alive, value: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive(value):
        time.sleep(0.1)
    left = alive(value)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def _alive(field: int, value: int) -> list[int]:
    """The pids whose ``field`` is ``value``, zombies (ended, not yet reaped) left out."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[field]) == value and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (its state first), or None once it has ended."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def ended_or_killed(pid: int, seconds: float) -> tuple[bool, int]:
    """Wait up to ``seconds`` for the child ``pid`` to end, killing it then: (hung, its exit code)."""
    deadline = time.monotonic() + seconds
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    hung = ended[0] == 0
    if hung:
        os.kill(pid, signal.SIGKILL)
        ended = os.waitpid(pid, 0)
    return hung, os.waitstatus_to_exitcode(ended[1])
