"""The one test behind every refusal to write into what is read: symlinks followed, a sibling
whose name merely starts alike is apart, and a folder holding an input overlaps it."""
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
