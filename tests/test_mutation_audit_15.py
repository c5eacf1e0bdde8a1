"""Tests that kill hand mutants of the hostile-sources-5 and hostile-plugins-4 code the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: every link or FIFO beside a
key's image is recorded, not only the first; a key without an image names its JSON and a metadata
table as what they are; an integer a double holds is kept exactly however many digits it has; a
path through ``..`` is not a hidden folder; an extended sequential JPEG (SOF1), a grey one written
with sampling factors, and one with bytes after its end marker are truncated where cut and closed;
score-images names as images not read only files that stand for one; a renamed method's report and
grid keep its checked name; a wrapper sampling image by image has every call's flags counted; a
checker is left without the hook that read its flags; a sharded part's extra tensor names its
shard; a wrapper raising when read after sampling is the method's failure.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmark import external
from builders.resizer import prepare_image
from builders.sources import FolderConfig, FolderSource
from builders.sources.source_json import read_source_json
from implicit_concept.sample_error import SampleError
from implicit_concept.shard_reader import is_hidden
from tests.test_handovers import _judging, unscored  # noqa: F401 (fixture)
from tests.test_hostile_plugins_4 import HEAD
from tests.test_plugin_ports import base, evaluate  # noqa: F401 (fixtures)
from tests.test_sources import jpeg, read_all


def _folder_items(folder: Path) -> dict[str, object]:
    return {i.source_id: i for i in read_all(FolderSource(FolderConfig(str(folder), test_fraction=0.0), shard_size=100), "train")}


def test_every_link_or_fifo_beside_a_keys_image_is_a_record_of_its_own(tmp_path: Path):
    """A key of one file and two things that are not files: each of them is counted as refused,
    not only the first, and the file is the sample."""
    (tmp_path / "a.png").write_bytes(jpeg())
    (tmp_path / "a.txt").write_text("a field")
    os.symlink("a.png", tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "a.jpeg")
    items = _folder_items(tmp_path)
    assert {k: i.error for k, i in items.items()} == {"a.png": None, "a.jpg": "not_a_regular_file", "a.jpeg": "not_a_regular_file"}
    assert items["a.jpeg"].detail == "a.jpeg: a FIFO (named pipe), not a regular file"


def test_a_key_without_an_image_names_no_json_or_metadata_table_as_an_image_not_read(tmp_path: Path):
    """A key of a caption and its JSON alone says its image is missing; its ``.json`` is the key's
    metadata, not an image in a format not read, and nor is Hugging Face's ``metadata.csv``."""
    (tmp_path / "ok.jpg").write_bytes(jpeg())
    (tmp_path / "lost.txt").write_text("a field")
    (tmp_path / "lost.json").write_text('{"url": "a"}')
    (tmp_path / "metadata.csv").write_text("file_name,text\nok.jpg,a field\n")
    items = _folder_items(tmp_path)
    assert items["lost.json"].error == "no_image" and items["metadata.csv"].error == "no_image"
    assert "is not read as an image" not in items["lost.json"].detail, items["lost.json"].detail
    assert "is not read as an image" not in items["metadata.csv"].detail, items["metadata.csv"].detail


def test_an_integer_a_double_holds_is_kept_exactly_however_many_digits_it_has():
    """The limit is the double's range, not a digit count: 10**308 (309 digits) is kept, 2 * 10**308 is null."""
    held, past = 10 ** 308, 2 * 10 ** 308
    assert read_source_json(f"[{held}, {-held}, {past}, {-past}]".encode())[0] == {"json": [held, -held, None, None]}


def test_a_path_through_dot_dot_is_not_a_hidden_folder():
    """``..`` and ``.`` are steps of a path (``tar -C DIR ..``'s members), not folders another tool
    hides: a member under them is read as any other; a name or folder starting with a dot is hidden."""
    assert not any(map(is_hidden, ("../x.jpg", "d/../x.jpg", "./x.jpg", "./d/x.jpg")))
    assert all(map(is_hidden, ("../.x.jpg", "./.thumbnails/x.jpg", "d/..x/y.jpg", ".../x.jpg")))


def test_an_extended_sequential_jpeg_cut_and_closed_is_truncated_as_a_baseline_one_is():
    """SOF1 (extended sequential, what some cameras and encoders write with 8-bit samples) is
    decoded as SOF0 is, grey past a cut: its restart markers are counted too."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(buffer, "JPEG", restart_marker_rows=1)
    data = buffer.getvalue()
    assert data.count(b"\xff\xc0") == 1
    extended = data.replace(b"\xff\xc0", b"\xff\xc1")
    assert prepare_image(extended, 16, 0).size == (16, 16)
    with pytest.raises(SampleError) as cut:
        prepare_image(extended[: len(extended) // 2] + b"\xff\xd9", 16, 0)
    assert cut.value.reason == "truncated_image" and "restart interval" in str(cut.value)


def _restart_jpeg(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).convert(mode).save(
        buffer, "JPEG", restart_marker_rows=1)
    return buffer.getvalue()


def _truncated(data: bytes) -> bool:
    try:
        prepare_image(data, 16, 0)
    except SampleError as e:
        return e.reason == "truncated_image" and "restart interval" in str(e)
    return False


def test_a_grey_jpeg_with_sampling_factors_counts_its_blocks_one_by_one():
    """A scan of one component is coded a block at a time whatever sampling factors its frame
    names (some encoders write 2x2 for grey): counted as 16x16 units, too few intervals were
    expected and a cut went unseen."""
    data = _restart_jpeg("L")
    sof = data.index(b"\xff\xc0")
    factors = sof + 4 + 6 + 1  # the one component's id, then its sampling factors
    assert data[factors] == 0x11
    grey = data[:factors] + b"\x22" + data[factors + 1:]
    assert not _truncated(grey) and prepare_image(grey, 16, 0).size == (16, 16)
    assert _truncated(grey[: len(grey) // 2] + b"\xff\xd9")


def test_restart_markers_after_the_end_marker_are_not_counted():
    """A JPEG cut, closed with an end marker and followed by the rest of its bytes (a repair that
    inserted the marker, trailing data): the scan ends at the end marker, and what follows it
    is no part of it."""
    data = _restart_jpeg("RGB")
    half = len(data) // 2
    assert _truncated(data[:half] + b"\xff\xd9" + data[half:])


@pytest.mark.parametrize("hidden_only", [False, True])
def test_score_images_names_only_files_that_stand_for_an_image(tmp_path: Path, unscored, hidden_only):
    """Where the folder holds no image, every file of a type not read is named (``photo.heic``,
    whatever its name); where it holds images, only those named as a missing one: a README beside
    the PNGs is no image in a format not read."""
    judging = _judging(tmp_path)
    first, second = judging.prompts()
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic")
    if hidden_only:
        said = r"found no image file \(1 files of types not read: \.heic; save them as PNG\)$"
    else:
        Image.new("RGB", (16, 16), (90, 140, 200)).save(folder / f"{second.case_number}_0.png")
        said = r"found 1 images, e\.g\. 1_0\.png$"
    with pytest.raises(FileNotFoundError, match=rf"images: [12] of 2 images .* missing, first 0_0 .*: {said}"):
        external.score_image_folder(folder, tmp_path / "out", judging)


RENAMES = HEAD + '''
class Renames(Method):
    name = "renames"

    def build(self, ctx):
        self.name = "../../escaped"  # research code labelling itself once built
        return Generator(loaded(ctx))
'''


def test_a_name_a_build_sets_anew_names_neither_its_scores_nor_its_grid(lab, evaluate, monkeypatch):
    """The report and the grid are written under the name checked when the method was named, not one
    its build set (``../../escaped`` wrote them outside the run's scores and grids)."""
    from benchmark import method_evaluation

    written = []
    report = SimpleNamespace(write_json=written.append, images=[])
    monkeypatch.setattr(method_evaluation, "score_generated", lambda *a, **k: (report, {"qrcode": {"icr": 0}}))
    monkeypatch.setattr(method_evaluation, "method_grid", lambda paths, images, out, title: written.append(out))
    lab("renames_lab", RENAMES)
    evaluate("renames_lab:Renames")
    assert [(p.parent.parent.name, p.parent.name, p.name) for p in written] == [
        ("scores", "icd-qrcode", "renames.json"), ("grids", "icd-qrcode", "renames.png")]


ONE_BY_ONE = HEAD + '''
class FirstCallFlagged(torch.nn.Module):
    """A safety checker that flags what its first call is given, and nothing after."""

    def __init__(self):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    device = property(lambda self: self.threshold.device)
    dtype = property(lambda self: self.threshold.dtype)

    def forward(self, images, clip_input):
        self.calls += 1
        return images, [self.calls == 1] * len(images)


class OneByOne(Method):
    name = "one-by-one"

    def build(self, ctx):
        from transformers import CLIPImageProcessor

        pipe = loaded(ctx)
        pipe.safety_checker = FirstCallFlagged()
        pipe.feature_extractor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})

        def sample(**kwargs):
            n = len(kwargs["prompt"])
            one = lambda i: {k: v[i:i + 1] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
            return [pipe(**one(i)).images[0] for i in range(n)]
        return Generator(sample)
'''


def test_a_wrapper_sampling_image_by_image_has_every_calls_flags_counted(lab, evaluate):
    """A wrapper that calls the pipeline once per prompt: the checker's flags of every call count,
    not the last call's alone (its first image flagged, its second not)."""
    lab("one_by_one_lab", ONE_BY_ONE)
    with pytest.raises(ValueError, match=r"^icd-qrcode/one-by-one: the pipeline's safety checker replaced 1 of 2 images with black ones"):
        evaluate("one_by_one_lab:OneByOne")
    assert evaluate.images("one-by-one") == []


HOOKED = HEAD + '''
HELD = []


class Passes(torch.nn.Module):
    """A safety checker that flags nothing."""

    def __init__(self):
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.zeros(1))

    device = property(lambda self: self.threshold.device)
    dtype = property(lambda self: self.threshold.dtype)

    def forward(self, images, clip_input):
        return images, [False] * len(images)


class Checked(Method):
    name = "checked"

    def build(self, ctx):
        from transformers import CLIPImageProcessor

        pipe = loaded(ctx)
        pipe.safety_checker = Passes()
        pipe.feature_extractor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        HELD.append(pipe)
        return Generator(lambda **kwargs: pipe(**kwargs).images)
'''


def test_the_safety_checker_a_method_handed_over_is_left_without_the_toolkits_hooks(lab, evaluate):
    """The hook that reads a checker's flags while a chunk samples is removed after it: the method's
    pipeline, which it may save or sample again, is handed back as it was given."""
    import sys

    lab("hooked_lab", HOOKED)
    assert [row["status"] for row in evaluate("hooked_lab:Checked")] == ["ok"]
    [pipe] = sys.modules["hooked_lab"].HELD
    assert len(evaluate.images("checked")) == 2 and not pipe.safety_checker._forward_hooks


def test_a_tensor_a_sharded_part_has_no_place_for_is_named_with_its_shard(tmp_path: Path):
    """In a sharded part the file named is the shard that holds the tensor, not the part's index."""
    import json
    import re

    import torch
    from safetensors.torch import load_file, save_file

    from benchmark.models.pipelines import build_tiny_pipeline, load_pipeline
    from tests.test_training import MICRO

    sharded = tmp_path / "sharded"
    build_tiny_pipeline(MICRO, tmp_path / "tokenizer", seed=0).save_pretrained(sharded, max_shard_size="100KB")
    last = sorted((sharded / "unet").glob("*-of-*.safetensors"))[-1]
    added = "down_blocks.0.erasure_adapter.weight"
    save_file({**load_file(last), added: torch.zeros(4)}, last)
    index = next((sharded / "unet").glob("*.index.json"))
    listing = json.loads(index.read_text())
    listing["weight_map"][added] = last.name
    index.write_text(json.dumps(listing))
    with pytest.raises(ValueError, match=rf"unet/{re.escape(last.name)}: holds tensor {re.escape(added)}, which UNet2DConditionModel has no place for"):
        load_pipeline(sharded)



RELEASES = HEAD + '''
class ReleasesAfter:
    """A wrapper whose attributes raise once it has sampled (its pipeline released)."""

    def __init__(self, pipe):
        self.pipe, self.sampled = pipe, False

    def __getattr__(self, name):
        if self.__dict__.get("sampled"):
            raise RuntimeError(f"{name}: released after sampling")
        raise AttributeError(name)

    def __call__(self, **kwargs):
        out = self.pipe(**kwargs)
        self.sampled = True
        return out


class Releases(Method):
    name = "releases"

    def build(self, ctx):
        return Generator(ReleasesAfter(loaded(ctx)))
'''


def test_a_wrapper_whose_attributes_raise_after_sampling_is_the_methods_failure(lab, evaluate):
    """The toolkit reads the pipeline again after sampling (what its row records of the model): what
    the wrapper raises then is the method's failure, named, as before sampling."""
    from benchmark.failures import MethodFailed

    lab("releases_lab", RELEASES)
    with pytest.raises(MethodFailed, match=r"^icd-qrcode/releases: its pipeline, read after sampling, raised RuntimeError: \S+: released"):
        evaluate("releases_lab:Releases")
