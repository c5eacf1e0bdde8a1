"""Real runs for tests, built cheaply: a stand-in (``SimpleNamespace(track=..., root=...)``) broke
whenever a stage read a field it lacked, and passed where the real object would have failed."""
from dataclasses import replace
from pathlib import Path

from benchmark.benchmark_run import BenchmarkRun
from benchmark.track import Track, load_track


def real_run(root, track=None, **fields):
    """A ``BenchmarkRun`` whose folder is ``root``, on the debug track with the fields in ``track``
    replaced (or on ``track``, a ``Track``): a stage reading a field a test did not name gets the real
    one. Its cache and data folders are under ``root`` unless named, and it draws no progress bars."""
    root = Path(root)
    track = track if isinstance(track, Track) else replace(load_track("debug"), **(track or {}))
    fields = {"cache": root / ".cache", "data_root": root / "data", "progress": False, **fields}
    return BenchmarkRun(track=track, name=root.name, runs_root=root.parent, **fields)
