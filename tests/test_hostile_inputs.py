"""A build over every hostile input of issue 11 (pixel bombs, a sparse member declaring 2 GiB, a
2 MB .tar.gz of 2 GiB of zeros, an oversized header record and a chain of them, deep and large
KEY.json, /dev/zero, FIFO and symlinked captions, sparse files, names that are not UTF-8) keeps its
peak memory under 1 GiB and counts every one as a skip: ``python -m benchmark.perf.hostile_inputs``."""
import pytest

from benchmark.perf.hostile_inputs import TARGET_PEAK, run


@pytest.mark.slow
def test_every_hostile_input_is_a_counted_skip_within_1_gib(tmp_path):
    for result in run(tmp_path):
        assert result.returncode == 0, result.stderr
        assert result.failures == dict(result.expected), result.source
        assert result.samples == result.good, result.source
        assert result.peak_bytes < TARGET_PEAK, f"{result.source}: peak {result.peak_bytes >> 20} MiB"


@pytest.mark.slow
def test_a_builds_peak_is_its_own_not_the_memory_its_parent_held_at_the_fork(tmp_path):
    import numpy as np

    held = np.ones(1_500_000_000 // 8)  # a long test session's parent process can hold this much
    peaks = [r.peak_bytes for r in run(tmp_path)]
    assert held.sum() > 0 and all(p < 1_000_000_000 for p in peaks), [p >> 20 for p in peaks]
