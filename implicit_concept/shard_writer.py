"""Where a shard is written: one tar in img2dataset's layout, byte-reproducible and crash-safe.

The tar is written under a temporary name and renamed only when complete, members carry fixed
metadata (mtime 0, uid 0, mode 0644), so a rerun gives the same bytes and a crash never leaves a
truncated ``00000.tar`` behind.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from implicit_concept.content_hashes import sha256_file
from implicit_concept.disk_space import naming
from implicit_concept.files import temporary_name


class TarShardWriter:
    """Writes ``KEY.ext`` members into ``path`` via a temporary file; ``close`` renames it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = temporary_name(self.path)
        try:
            self._file = open(self.tmp, "wb")
        except OSError as e:
            raise naming(e, self.path, self.tmp) from None
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            try:
                self._tar.addfile(info, io.BytesIO(data))
            except OSError as e:  # a full disk, a file size limit: name the shard being written
                raise naming(e, self.path, self.tmp) from None

    def close(self) -> str:
        """Finish the tar, move it into place and return its sha256."""
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise naming(e, self.path, self.tmp) from None
        return sha256_file(self.path)

    def abort(self) -> None:
        """Drop the partial tar. Closing may fail again (the full disk that stopped the writing
        fails the end-of-archive blocks too): the temporary is removed whatever closing does."""
        try:
            self._tar.close()
        except OSError:
            pass
        finally:
            try:
                self._file.close()
            except OSError:
                pass
            finally:
                self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
