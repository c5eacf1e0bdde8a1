"""Behaviour of session 41's code that the suite let a hand mutant change (mutation-audit-13): each
test here failed on such a mutant and passes on the code, and guards what a user sees."""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmark.track import TrackError, load_track
from builders.recipe import RecipeError, load_recipe
from implicit_concept import files
from implicit_concept.detector.training import ScaleError, load_scale
from implicit_concept.validate import MAX_TOML_FILE_BYTES

LOADERS = [(load_recipe, RecipeError), (load_track, TrackError), (lambda path: load_scale("debug", path), ScaleError)]


@pytest.mark.parametrize("load,error", LOADERS)
@pytest.mark.parametrize("kind", ["fifo", "oversized", "nested"])
def test_a_config_file_refused_on_read_is_the_loaders_own_error_in_one_line(tmp_path, load, error, kind):
    """A caller catching RecipeError, TrackError or ScaleError caught a FIFO's or an oversized file's
    refusal only while read_toml raised it as its loader's; a TOML nested past the parser's depth
    raised RecursionError (a traceback) unless caught there."""
    path = tmp_path / "config.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "oversized":
        path.write_text("#" * (MAX_TOML_FILE_BYTES + 1))
    else:
        path.write_text("a = " + "[" * 100_000)
    with pytest.raises(error) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


@pytest.fixture
def ascii_names(monkeypatch):
    """A Python that reads file names as ASCII (``LC_ALL=C`` with ``PYTHONUTF8=0``), as far as the
    check can tell: the encoding it names for file names."""
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "ascii")


def test_an_ascii_folder_under_a_python_reading_names_as_ascii_is_accepted(ascii_names, tmp_path):
    """Only a name beyond ASCII is misread there: a lab on a C locale built into plain folders."""
    from implicit_concept.utf8_paths import utf8_path_problem

    assert utf8_path_problem(tmp_path / "plain", "the dataset's tables") is None
    assert "rerun with PYTHONUTF8=1" in utf8_path_problem(tmp_path / "café", "the dataset's tables")


def test_a_folder_beyond_ascii_under_a_python_reading_names_as_utf8_is_accepted(tmp_path, monkeypatch):
    """The usual case: ``café/`` is handed to pyarrow and tokenizers as the bytes on disk."""
    from builders.verify import verify_dataset
    from implicit_concept.utf8_paths import utf8_path_problem

    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "utf-8")
    (tmp_path / "café").mkdir()
    assert utf8_path_problem(tmp_path / "café", "the dataset's tables") is None
    assert not any("file names" in p for p in verify_dataset(tmp_path / "café").problems)


def test_verify_of_a_relative_folder_counts_the_working_folders_name(ascii_names, tmp_path, monkeypatch):
    """``verify data`` run inside ``café/`` hands pyarrow ``café/data`` all the same."""
    from builders.verify import verify_dataset

    (tmp_path / "café" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "café")
    problems = verify_dataset(Path("data")).problems
    assert len(problems) == 1 and problems[0].startswith("data: this Python reads file names as ascii"), problems


def test_writing_a_folder_into_place_leaves_the_callers_umask(tmp_path):
    """The modes are the umask's, read by setting it: a umask not set back made every later file of
    the process (a lab's own) take the one it was read with."""
    before = os.umask(0o077)
    try:
        with files.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
        (tmp_path / "after").write_text("later")
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(before)
    assert (tmp_path / "after").stat().st_mode & 0o777 == 0o600


def test_a_folder_whose_modes_cannot_be_set_leaves_no_temporary_behind(tmp_path, monkeypatch):
    def refused(folder):
        raise PermissionError(1, "Operation not permitted", str(folder))

    monkeypatch.setattr(files, "umask_modes", refused)
    with pytest.raises(PermissionError):
        with files.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
    assert list(tmp_path.iterdir()) == []


def _fake_ray(monkeypatch, initialized):
    """A Ray whose session is the caller's (``initialized``) or not, recording init and shutdown."""
    calls = []
    ray = SimpleNamespace(is_initialized=lambda: initialized, init=lambda **k: calls.append("init"),
                          shutdown=lambda: calls.append("shutdown"), cluster_resources=lambda: {"CPU": 1},
                          remote=lambda **k: (lambda cls: cls))
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=lambda actors: SimpleNamespace(map_unordered=lambda f, g: iter(()))))
    return calls


@pytest.mark.parametrize("initialized,expected", [(True, []), (False, ["init", "shutdown"])])
def test_a_ray_build_stops_the_session_it_started_and_leaves_the_callers_running(tmp_path, monkeypatch, initialized, expected):
    """A lab's own Ray session (initialized before the build) is joined and left running for its
    later work; a local cluster the build started is stopped with it."""
    from builders.distributor import _ray

    calls = _fake_ray(monkeypatch, initialized)
    assert list(_ray(load_recipe("icd-debug"), [], tmp_path, 1, None)) == []
    assert calls == expected


@pytest.mark.parametrize("steps,refused", [(0, True), (-1, True), (1, False), (100_000, False), (100_001, True), (1000.0, True)])
def test_a_schedule_of_no_steps_or_longer_than_any_model_trains_on_is_refused(tmp_path, steps, refused):
    """A schedule of 0 steps builds, then fails once sampling starts (PNDM: an IndexError, DDIM: an
    error naming no file)."""
    from benchmark.models.config_sizes import check_schedule_size

    file = tmp_path / "scheduler_config.json"
    if not refused:
        check_schedule_size({"num_train_timesteps": steps}, file)
        return
    with pytest.raises(ValueError, match=rf"^{file}: num_train_timesteps = {steps!r}; expected an integer in \[1, 100000\]$"):
        check_schedule_size({"num_train_timesteps": steps}, file)


@pytest.mark.parametrize("config,refused", [(None, True), ({"model_max_length": 0}, True), ({"model_max_length": 1}, False),
                                            ({"model_max_length": 77}, False), ({"model_max_length": 78}, True)])
def test_a_tokenizer_padding_prompts_to_no_tokens_or_past_the_encoders_positions_is_refused(tmp_path, config, refused):
    """Without tokenizer_config.json transformers pads to 10**30 tokens, as without its
    model_max_length; 0 tokens leaves every prompt empty."""
    import json

    from benchmark.models.config_sizes import check_prompt_length

    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    if not refused:
        check_prompt_length(tmp_path, 77, tmp_path / "config.json")
        return
    if config is None:  # said missing, not as a field of a file that is not there
        with pytest.raises(FileNotFoundError, match=rf"^{tmp_path / 'tokenizer_config.json'}: missing \(it names model_max_length"):
            check_prompt_length(tmp_path, 77, tmp_path / "config.json")
        return
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'tokenizer_config.json'}: model_max_length = "):
        check_prompt_length(tmp_path, 77, tmp_path / "config.json")


def test_a_part_that_cannot_be_built_from_its_config_is_one_line_whatever_the_library_says(tmp_path):
    """Libraries' errors run over several lines (a reason, then the values it saw); the refusal is
    the file and the first of them, as every refusal of a handed-over folder is one line."""
    from benchmark.models.config_sizes import check_part_size

    class Part:
        @classmethod
        def load_config(cls, folder):
            return {}

        @classmethod
        def from_config(cls, config):
            raise ValueError("\n  block_out_channels must be a list of integers\n  got: 'wide'\n")

    with pytest.raises(ValueError) as caught:
        check_part_size(tmp_path, Part, [])
    assert str(caught.value) == (f"{tmp_path / 'config.json'}: cannot build a Part from it "
                                 "(ValueError: block_out_channels must be a list of integers)")


def test_a_part_sized_past_any_memory_is_refused_for_its_size_before_a_byte_is_allocated(tmp_path):
    """A text encoder whose config names 10**14 tokens: built on the meta device, it is refused as
    larger than its weights, not by the allocator (a machine's memory) after it tried."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from benchmark.models.config_sizes import check_part_size

    CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                   vocab_size=10**14).save_pretrained(tmp_path)
    save_file({"w": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'config.json'}: the CLIPTextModel it describes is larger than its "
                                         r"weights files hold \(4 values in 1 tensors\); not built$"):
        check_part_size(tmp_path, CLIPTextModel, [tmp_path / "model.safetensors"])


def test_a_part_whose_weights_hold_what_its_config_builds_passes_however_many_tensors(tmp_path):
    """The budget is what the weights hold (twice, plus a slack): a deep text encoder of 80 layers,
    some 1300 tensors, is as welcome as the tiny ones the suite's pipelines have."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from benchmark.models.config_sizes import check_part_size

    config = CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=80, num_attention_heads=2,
                            vocab_size=100, max_position_embeddings=8, eos_token_id=2)
    config.save_pretrained(tmp_path)
    with torch.device("meta"):
        state = CLIPTextModel(config).state_dict()
    assert len(state) > 1280
    save_file({name: torch.zeros(value.shape, dtype=torch.uint8) for name, value in state.items()}, str(tmp_path / "model.safetensors"))
    check_part_size(tmp_path, CLIPTextModel, [tmp_path / "model.safetensors"])


def test_a_group_writable_umask_gives_group_writable_weights_and_folders(tmp_path):
    """Under umask 002 (a shared project's, with a group per user) the group writes what the lab
    writes; the suite's 022, 027 and 077 give the same modes as a fixed 644/755 would."""
    import stat

    import torch
    from safetensors.torch import save_file

    before = os.umask(0o002)
    try:
        with files.atomic_dir(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "weights.safetensors"))
            (tmp / "part").mkdir(mode=0o700)
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "out", *(tmp_path / "out").rglob("*")]}
    assert modes == {"out": 0o775, "weights.safetensors": 0o664, "part": 0o775}
