"""What a benchmark or scoring command leaves under a final name when it is stopped mid-write: the
whole file or none, so that rerunning the same command reads nothing cut short (the kill trials of
the scoring side: score-pipeline, score-images, the benchmark's report files)."""
from types import SimpleNamespace

from benchmark.prompts import Prompt, read_prompts


class _StoppedAfter(list):
    """The prompts being written when Ctrl-C (or a kill) arrives after ``n`` of them."""

    def __init__(self, items, n):
        super().__init__(items)
        self.n = n

    def __iter__(self):
        for i, item in enumerate(list.__iter__(self)):
            if i == self.n:
                raise KeyboardInterrupt
            yield item


def test_a_runs_prompts_file_stopped_mid_write_is_written_whole_on_resume(tmp_path, monkeypatch):
    """``prompts = "test-split"`` (the paper tracks): the run writes ``prompts-<subset>.csv`` once and
    reads it back on every resume. A write cut short left a shorter CSV under that name, and the
    resumed run scored its rows: silently fewer prompts than the track's num_prompts."""
    import pytest

    from benchmark import method_evaluation

    prompts = [Prompt(i, f"a photo of scene {i}", 1000 + i) for i in range(5)]
    stopping = {"now": True}
    monkeypatch.setattr(method_evaluation, "shard_prompts",
                        lambda path, count: _StoppedAfter(prompts[:count], 3) if stopping["now"] else prompts[:count])
    run = SimpleNamespace(track=SimpleNamespace(prompts="test-split", num_prompts=5), root=tmp_path)
    subset = tmp_path / "data" / "icd-qrcode"
    with pytest.raises(KeyboardInterrupt):
        method_evaluation.evaluation_prompts(run, subset)
    written = tmp_path / "prompts-icd-qrcode.csv"
    assert not written.exists(), f"a cut-short prompts file under its final name: {len(read_prompts(written))} rows"
    assert not list(tmp_path.glob(".*")), "no temporary is left behind by an interrupt"
    stopping["now"] = False
    assert method_evaluation.evaluation_prompts(run, subset) == prompts
