"""A ``pipe:`` command or http(s) URL opened as a stream of bytes, failing in words and never waiting forever.

These are the commands webdataset's ``gopen`` runs (a shell for ``pipe:``, ``curl`` for http), but
its failure text is its Popen arguments and an exit number (``(('false',), {...}): exit 1``), what
the command said goes to the terminal, interleaved across workers, and a stalled command or
connection is waited on forever, hanging the build without a word. Here the command's stderr is
kept and its last lines end the error, curl's exit codes are said in words, and a stream that
sends no byte for :data:`STALL_SECONDS` is stopped and raises. Each failure says whether another
read may not meet it (``transient``: a dropped connection, a stall), so a reader may read again.

The command runs in a process group of its own, out of the terminal's Ctrl-C, which this process
ends when it stops (:func:`~implicit_concept.worker_processes.own_group`). A process killed outright
(SIGKILL, the OOM killer) runs nothing more, so the group also holds a guard that waits on a pipe
only this process writes to: its end closed, by this process's exit however it came, or by the
command's end here, the guard ends the group (a command waiting on the network once outlived the
build for as long as it waited).
"""
from __future__ import annotations

import io
import os
import select
import shutil
import signal
import subprocess
import tempfile

from implicit_concept.worker_processes import own_group, release_group, starting_group

#: A stream that sends no byte for this long is stopped (a stalled connection or command).
STALL_SECONDS = 600.0
#: How long a command may take to exit once its output is no longer read, before it is stopped.
EXIT_SECONDS = 10.0
#: What of a failed command's stderr ends its error.
STDERR_TAIL_BYTES = 600

#: ``curl`` as webdataset's ``gopen`` runs it for http(s), with ``-S`` (its error text on stderr) and
#: ``--netrc-optional`` (credentials from ``~/.netrc``, never from a URL a recipe records).
CURL = ("curl", "--netrc-optional", "--connect-timeout", "30", "--retry", "30", "--retry-delay", "2", "-f", "-s", "-S", "-L")

#: Exit statuses of a command whose output was closed before its end (SIGPIPE; curl's write error).
_CLOSED_EARLY = {141, -13}
_CURL_CLOSED_EARLY = {23}

#: What curl's commonest exit codes mean, for a person reading a skip record.
_CURL_EXITS = {
    6: "could not resolve the host",
    7: "could not connect to the server",
    18: "the connection closed before the whole file came (partial file)",
    22: "the server answered with an HTTP error (404 not found, 403 forbidden, 5xx...)",
    28: "timed out",
    35: "the TLS handshake failed",
    52: "the server sent nothing",
    56: "the connection failed while receiving (reset or dropped)",
    60: "the server's TLS certificate was refused",
}


#: curl's exits that another read may not meet, once bytes came: a transfer cut or timed out.
_CURL_TRANSIENT = {18, 28, 52, 55, 56}


class StreamFailed(OSError):
    """A stream's command failed, or its stream stalled; the message names the stream. ``transient``:
    another read may not fail so: it failed after bytes came (a dropped connection, a stall, a
    command's error mid-way; not an HTTP error, which curl has retried already)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def open_stream(location: str) -> io.RawIOBase:
    """The bytes of ``location`` (``pipe:CMD`` run by the shell, or an http(s) URL fetched by curl).

    Unbuffered, so that no byte read before a failure is lost: a read after the output's end
    raises :class:`StreamFailed` when the command exited with an error status or sent nothing for
    :data:`STALL_SECONDS`, and so does closing the stream if no read did;
    closing it before its end stops the command (not a failure, unless it had failed already)."""
    if location.startswith("pipe:"):
        args, shell, curl = location[len("pipe:"):], True, False
    elif location.startswith(("http://", "https://")):
        args, shell, curl = [*CURL, location], False, True
    else:
        raise ValueError(f"{location}: not a pipe: command or an http(s) URL")
    return _CommandStream(location, args, shell, curl, STALL_SECONDS)


def _guarded(command: list[str]) -> list[str]:
    """``command`` run by a shell that first starts the guard of its process group: a subshell that
    reads the shell's stdin (the guard's pipe) until its writer has closed it, then kills the group,
    itself last. The command's stdin is /dev/null."""
    return ["/bin/sh", "-c", 'exec 3<&0 </dev/null; (read _ <&3; kill -s KILL 0) >/dev/null 2>&1 & exec 3<&- "$@"', "sh", *command]


class _CommandStream(io.RawIOBase):
    """A command's stdout, read with a bound on waiting; its stderr kept in a file for the error."""

    def __init__(self, location: str, args: str | list[str], shell: bool, curl: bool, stall_seconds: float) -> None:
        self.location, self.curl, self.stall_seconds = location, curl, stall_seconds
        if curl and shutil.which(args[0]) is None:  # the shell that runs it would say so only as status 127
            raise StreamFailed(f"{location}: cannot run curl: No such file or directory")
        self.stderr = tempfile.TemporaryFile()
        watched, self.guard = os.pipe()  # the guard's end, and this process's (kept from every command it starts)
        try:
            with starting_group():  # out of the terminal's group: ended here when this process stops
                # Unbuffered: a buffer would hold bytes that poll() does not see as ready.
                # A group of its own, so that stopping it stops what its shell started too (a pipeline's commands).
                self.proc = subprocess.Popen(_guarded(["/bin/sh", "-c", args] if shell else args), bufsize=0, stdin=watched,
                                             stdout=subprocess.PIPE, stderr=self.stderr, start_new_session=True)
                own_group(self.proc.pid)
        except OSError as e:
            self.stderr.close()
            os.close(self.guard)
            raise StreamFailed(f"{location}: cannot run {'curl' if curl else 'the command'}: {e.strerror or e}") from None
        finally:
            os.close(watched)
        self.ended = self.stopped = self.said = False
        self.received = 0
        # poll, not select: a process holding over 1024 files has descriptors select cannot watch.
        self.poll = select.poll()
        self.poll.register(self.proc.stdout, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.failure: StreamFailed | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        """Bytes as they come; at the output's end, or a stall, 0 (the end) first, so a reader keeps
        what came before, then the failure on the next read or at close."""
        if self.failure is not None and not self.said:
            self.said = True
            raise self.failure
        if self.ended:
            return 0
        if not self.poll.poll(self.stall_seconds * 1000):
            self._stop()
            self.ended = True
            self.failure = StreamFailed(f"{self.location}: no data for {self.stall_seconds:g} s: the stream stalled and was stopped",
                                        self.received > 0)
            return 0
        data = self.proc.stdout.read(len(buffer))
        if data:
            buffer[: len(data)] = data
            self.received += len(data)
            return len(data)
        self.ended = True
        self._wait()
        self.failure = self._failed(closed_early=False)
        return 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            ended = self.ended
            self.proc.stdout.close()
            self._wait()
            failure = self.failure or self._failed(closed_early=not ended)
        finally:
            self.stderr.close()
            super().close()
        if failure is not None and not self.said:
            self.said = True
            raise failure

    def __del__(self) -> None:
        """A stream dropped unclosed stops its command quietly: a failure is said by a read or close."""
        try:
            self.close()
        except (StreamFailed, AttributeError):  # AttributeError: its command never started
            pass

    def _wait(self) -> None:
        try:
            self.proc.wait(EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._stop()
            return
        self.stopped = release_group(self.proc.pid) or self.stopped  # ended as this process stopped (Ctrl-C): no failure
        self._release_guard()

    def _stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:  # the group has ended already
            pass
        self.proc.wait()
        release_group(self.proc.pid)
        self.stopped = True
        self._release_guard()

    def _release_guard(self) -> None:
        """The command has ended: its guard ends what the command left in its group, and itself."""
        if self.guard >= 0:
            os.close(self.guard)
            self.guard = -1

    def _failed(self, closed_early: bool) -> StreamFailed | None:
        """The error of a command that exited with a failure, or None (a command stopped here, or one
        whose output was closed before its end, did not fail)."""
        status = self.proc.returncode
        if status == 0 or self.stopped:
            return None
        if closed_early and (status in _CLOSED_EARLY or (self.curl and status in _CURL_CLOSED_EARLY)):
            return None
        meaning = f" ({_CURL_EXITS[status]})" if self.curl and status in _CURL_EXITS else ""
        what = f"curl exited with status {status}{meaning}" if self.curl else f"the command exited with status {status}"
        said = self._stderr_tail()
        # Failing once bytes came is a transfer cut short; failing before any, a command that does not
        # work as given (no such bucket, access denied), whose own retries (curl's, aws's) are spent.
        transient = self.received > 0 and (status in _CURL_TRANSIENT if self.curl else True)
        return StreamFailed(f"{self.location}: {what}{f': {said}' if said else ''}", transient)

    def _stderr_tail(self) -> str:
        self.stderr.seek(0, io.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - STDERR_TAIL_BYTES))
        text = self.stderr.read().decode("utf-8", "replace")
        lines: list[list] = []  # [line, times]: curl's retries repeat one line
        for line in (" ".join(raw.split()) for raw in text.splitlines() if raw.strip()):
            if lines and lines[-1][0] == line:
                lines[-1][1] += 1
            else:
                lines.append([line, 1])
        said = " | ".join(line if times == 1 else f"{line} ({times} times)" for line, times in lines)
        return ("..." if size > STDERR_TAIL_BYTES else "") + said
