"""The one test behind every refusal to write into what is read: symlinks followed, a sibling
whose name merely starts alike is apart, and a folder holding an input overlaps it. And a folder
renamed into place has the modes the umask grants, whatever library wrote it."""
import os
import stat

import pytest

from implicit_concept.files import check_apart, within


def test_within_follows_links_and_compares_whole_path_parts(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data2").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert within(tmp_path / "data", tmp_path / "data")
    assert within(tmp_path / "data" / "sub" / "not-yet", tmp_path / "data")
    assert within(tmp_path / "link" / "out", tmp_path / "data")
    assert within(tmp_path / "data" / "x", tmp_path / "link")
    assert not within(tmp_path / "data2", tmp_path / "data")
    assert not within(tmp_path, tmp_path / "data")


@pytest.mark.parametrize("out", ["data", "data/out", "link/out", "."])
def test_an_out_that_is_holds_or_lies_inside_an_input_is_refused(tmp_path, out):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(ValueError, match=r"--out .*: overlaps the shards .*data; write it to a folder apart"):
        check_apart(tmp_path / out, "--out", {"the shards": tmp_path / "data", "images": object()})


def test_an_out_beside_its_inputs_is_accepted(tmp_path):
    (tmp_path / "data").mkdir()
    check_apart(tmp_path / "data-out", "--out", {"the shards": tmp_path / "data", "in memory": [1, 2]})


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_a_folder_renamed_into_place_has_the_modes_the_umask_grants_whatever_its_writer_chose(tmp_path, umask):
    """safetensors writes its files 0600 whatever the umask (a shared cache's weights unreadable to
    the group); a folder made 0700 likewise. An executable keeps its execute bits; a link is left alone."""
    import torch
    from safetensors.torch import save_file

    from implicit_concept.files import atomic_dir

    before = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "weights.safetensors"))
            (tmp / "private").mkdir(mode=0o700)
            (tmp / "private" / "run.sh").write_text("true\n")
            (tmp / "private" / "run.sh").chmod(0o700)
            (tmp / "link").symlink_to("weights.safetensors")
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [tmp_path / "out", *(tmp_path / "out").rglob("*")] if not p.is_symlink()}
    assert modes == {"out": 0o777 & ~umask, "weights.safetensors": 0o666 & ~umask, "private": 0o777 & ~umask, "run.sh": 0o777 & ~umask}
    assert (tmp_path / "out" / "link").is_symlink()


def test_a_folder_that_cannot_take_its_place_is_named_not_its_hidden_temporary(tmp_path):
    """A file where the finished folder goes: the error names the folder, not the temporary, and
    neither the file nor a temporary folder is left changed or behind."""
    from implicit_concept.files import atomic_dir

    (tmp_path / "out").write_text("mine")
    with pytest.raises(OSError) as raised:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
    assert raised.value.filename == str(tmp_path / "out")
    assert ".tmp" not in str(raised.value) and "->" not in str(raised.value)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out").read_text() == "mine"
