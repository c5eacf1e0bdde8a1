"""What a benchmark or scoring command leaves under a final name when it is stopped mid-write: the
whole file or none, so that rerunning the same command reads nothing cut short (the kill trials of
the scoring side: score-pipeline, score-images, the benchmark's report files)."""

from benchmark.prompts import Prompt, read_prompts
from tests.real_runs import real_run


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
    run = real_run(tmp_path, {"prompts": "test-split", "num_prompts": 5})
    subset = tmp_path / "data" / "icd-qrcode"
    with pytest.raises(KeyboardInterrupt):
        method_evaluation.evaluation_prompts(run, subset)
    written = tmp_path / "prompts-icd-qrcode.csv"
    assert not written.exists(), f"a cut-short prompts file under its final name: {len(read_prompts(written))} rows"
    assert not list(tmp_path.glob(".*")), "no temporary is left behind by an interrupt"
    stopping["now"] = False
    assert method_evaluation.evaluation_prompts(run, subset) == prompts


def _cut_short(real_write):
    """A writer stopped (Ctrl-C, a kill) half way through its bytes: what reaches its target is the
    first half of what it would have written."""
    import io

    def write(self, target, *args, **kwargs):
        if not hasattr(target, "write") and not args:  # the format a path's suffix names
            kwargs.setdefault("format", str(target).rsplit(".", 1)[-1])
        buffer = io.BytesIO()
        real_write(self, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if hasattr(target, "write"):
            target.write(half)
        else:
            with open(target, "wb") as f:
                f.write(half)
        raise KeyboardInterrupt

    return write


def _decodes(path):
    from PIL import Image

    with Image.open(path) as image:
        image.load()
    return True


def test_a_sample_grid_and_the_icr_plot_stopped_mid_write_leave_the_earlier_whole_file(tmp_path, monkeypatch):
    """``grids/<subset>/<method>.png`` and ``icr.png`` were saved in place: a run stopped while saving
    one left half a PNG under its final name (and ``results.html`` inlined it until that method was
    scored again). Each is renamed into place whole, so the earlier file stays as it was."""
    import matplotlib.figure
    import pytest
    from PIL import Image

    from benchmark.report import plot_icr
    from benchmark.sample_grid import method_grid

    image = tmp_path / "0_0.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    records = [{"detections": [{"concept": "qrcode", "confidence": 0.9, "box": [4, 4, 30, 30]}]}]
    grid = tmp_path / "run" / "grids" / "icd-qrcode" / "sd.png"
    method_grid([image], records, grid, title="icd-qrcode / sd")
    ratio = {"value": 0.25, "ci": [0.1, 0.5], "count": 2, "n": 8}
    results = {"name": "run", "track": "debug", "fp_rate": {"qrcode": ratio},
               "rows": [{"concept": "qrcode", "method": "sd", "status": "ok", "icr": ratio}]}
    plot = plot_icr(results, tmp_path / "run" / "icr.png")
    before = {grid: grid.read_bytes(), plot: plot.read_bytes()}

    monkeypatch.setattr(Image.Image, "save", _cut_short(Image.Image.save))
    with pytest.raises(KeyboardInterrupt):
        method_grid([image], records, grid, title="icd-qrcode / sd")
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _cut_short(matplotlib.figure.Figure.savefig))
    with pytest.raises(KeyboardInterrupt):
        plot_icr(results, plot)
    for path, whole in before.items():
        assert path.read_bytes() == whole and _decodes(path), f"{path.name}: cut short under its final name"
    assert not [p.name for p in tmp_path.rglob(".*")], "no temporary is left behind by an interrupt"


def test_the_results_page_and_the_leaderboard_are_renamed_into_place_never_rewritten_in_place(tmp_path):
    """A reader holding the earlier ``results.html`` or ``leaderboard.html`` (a hard link here) keeps it
    whole: the new file is written beside it and renamed over it, so a stop mid-write cuts nothing short."""
    import json
    import os

    from benchmark.leaderboard import write_leaderboard
    from benchmark.results_page import write_results_page

    run = tmp_path / "run"
    run.mkdir()
    ratio = {"value": 0.25, "ci": [0.1, 0.5], "count": 2, "n": 8}
    results = {"name": "run", "track": "debug", "fp_rate": {"qrcode": ratio}, "config": {"track_sha256": "t"},
               "detector": {"sha256": "d"}, "rows": [{"concept": "qrcode", "method": "sd", "status": "ok", "icr": ratio}]}
    (run / "results.json").write_text(json.dumps(results))
    for write, page in ((lambda: write_results_page(results, run), run / "results.html"),
                        (lambda: write_leaderboard([run], tmp_path / "lb"), tmp_path / "lb" / "leaderboard.html")):
        write()
        os.link(page, tmp_path / "held.html")
        held = page.read_bytes()
        page.write_bytes(held + b"<!-- stale -->")
        os.unlink(tmp_path / "held.html")
        os.link(page, tmp_path / "held.html")
        write()
        assert (tmp_path / "held.html").read_bytes() == held + b"<!-- stale -->" and page.read_bytes() == held
        os.unlink(tmp_path / "held.html")


def test_a_folder_renamed_into_place_drops_the_temporaries_of_writers_that_are_gone(tmp_path):
    """A worker killed while saving a fine-tune's pipeline (a kill trial of benchmark --jobs 2) left
    ``.pipeline.tmp-<pid>`` beside it; the resumed run saved under its own pid and kept the other
    forever. The next save of that folder removes it, and leaves a running writer's alone."""
    import os

    from implicit_concept.files import atomic_dir, temporary_name

    final = tmp_path / "contaminated-0123" / "pipeline"
    final.parent.mkdir()
    dead = final.with_name(f"{temporary_name(final).name.rsplit('-', 1)[0]}-{_a_pid_that_is_gone()}")
    (dead / "unet").mkdir(parents=True)
    (dead / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"half the weights")
    running = final.with_name(f"{temporary_name(final).name.rsplit('-', 1)[0]}-{os.getppid()}")
    running.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert (final / "model_index.json").is_file()
    assert not dead.exists(), "the killed writer's temporary is kept"
    assert running.is_dir(), "a running writer's temporary is removed under it"


def test_a_file_written_whole_drops_the_temporaries_of_writers_that_are_gone(tmp_path):
    """A benchmark killed while writing ``results.html`` (a kill trial of the debug track: 4.5 MB), a
    score file or an image left ``.results.html.tmp-<pid>`` beside it, and every resumed run, writing
    under its own pid, kept it forever. The next write of that file removes it, and leaves a running
    writer's alone."""
    import os

    from implicit_concept.files import atomic_write_text, temporary_name

    final = tmp_path / "runs" / "debug" / "results.html"
    final.parent.mkdir(parents=True)
    stem = temporary_name(final).name.rsplit("-", 1)[0]
    dead = final.with_name(f"{stem}-{_a_pid_that_is_gone()}")
    dead.write_text("<html>half a page")
    running = final.with_name(f"{stem}-{os.getppid()}")
    running.write_text("<html>being written")
    atomic_write_text(final, "<html>the page</html>")
    assert final.read_text() == "<html>the page</html>"
    assert not dead.exists(), "the killed writer's temporary is kept"
    assert running.is_file(), "a running writer's temporary is removed under it"


def _a_pid_that_is_gone() -> int:
    """The pid of a process that has ended (a writer killed mid-write)."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(gone.stdout)
