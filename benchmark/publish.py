"""Make the models the repository publishes for a track (its base, then its detector) the way
``make benchmark`` would, and write them into ``benchmark/published/``: what a maintainer runs once
the data or a model's recipe changes, and commits.

A published model is trusted only once its record's sha256 is pinned in
``benchmark/published_models.py`` (``PINNED_RECORDS``): this prints the lines to put there, replacing
the old ones, and tests/test_published_models.py fails until they are committed with the folders."""
from __future__ import annotations

from pathlib import Path

from benchmark import stages
from benchmark.benchmark_run import BenchmarkRun
from benchmark.models.base_model import BASE_FILE, base_dir, pretrain_base
from benchmark.published_models import PUBLISHED_DIR, pin_line, publish_base, publish_detector
from implicit_concept.json_records import read_json_object


def publish_track_models(run: BenchmarkRun, root: Path = PUBLISHED_DIR) -> dict[str, Path]:
    """Train (or take from the cache) and publish the track's base and detector; their folders.
    Prints the :data:`~benchmark.published_models.PINNED_RECORDS` lines that trust them."""
    dataset = stages.dataset(run)
    config = run.track.base_model_config()
    trained = pretrain_base(config, run.cache / "bases", progress=run.progress)
    record = read_json_object(base_dir(config, run.cache / "bases") / BASE_FILE)
    published = {"base": publish_base(trained, config, {k: record[k] for k in ("seconds", "environment")}, root)}
    base = stages.pretrain_base_model(run)  # the published base, as every run will load it
    detector = stages.detector(run, dataset, base)
    identity = stages.detector_identity(run, dataset, base)
    published["detector"] = publish_detector(detector.path.parent, identity, run.track.name, root)
    print("Pin these records in benchmark/published_models.py (PINNED_RECORDS), replacing their old lines, and commit them with the folders:")
    for folder in published.values():
        print(pin_line(folder))
    return published
