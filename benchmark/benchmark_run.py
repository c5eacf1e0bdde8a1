"""One benchmark run: where it lives, what it was asked to do, and the record that claims its folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.track import Track

DEFAULT_CACHE = Path(".cache") / "implicit-concept"


@dataclass
class BenchmarkRun:
    """Where one run lives and what it was asked to do (recorded in ``run.json``)."""

    track: Track
    name: str
    runs_root: Path = Path("runs")
    data_root: Path = Path("data")
    cache: Path = DEFAULT_CACHE
    pretrained: Path | None = None
    detector: Path | None = None
    source: str | None = None
    methods: tuple[str, ...] = ()
    workers: int = 2
    #: Fine-tunes, then methods, run side by side (one process, one torch thread each); the results of one at a time.
    jobs: int = 1
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.runs_root / self.name

    def record(self) -> dict[str, Any]:
        return {
            "track": self.track.to_dict(),
            "track_sha256": self.track.sha256,
            "pretrained": str(self.pretrained) if self.pretrained else None,
            "detector": str(self.detector) if self.detector else None,
            "source": self.source,
        }
