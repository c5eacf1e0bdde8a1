"""Who holds a folder's lock is said as the pid it recorded, whatever the lock file held before."""
import os

import pytest

from implicit_concept.file_locks import FolderBusyError, lock_path, locked


def test_the_holders_pid_is_said_whole_over_a_longer_one_an_earlier_holder_left(tmp_path):
    """The lock file outlives its holders: a pid written over a longer one left its tail, and the
    refusal named a pid that never ran (``pid 12345\\n000``)."""
    folder = tmp_path / "run"
    folder.mkdir()
    lock_path(folder).write_text(f"{os.getpid()}0000\n", encoding="ascii")
    with locked(folder):
        with pytest.raises(FolderBusyError, match=rf"^{folder}: in use by another process \(pid {os.getpid()}\); wait for it to finish$"):
            with locked(folder, wait=False):
                pass


def test_the_root_folder_is_refused_saying_so():
    """Its lock would lie beside it, above the root: refused in the project's words, not as pathlib's
    "has an empty name"."""
    with pytest.raises(ValueError, match=r"^/: the root folder cannot be locked; choose a folder below it$"):
        lock_path("/")
