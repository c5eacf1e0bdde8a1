import pytest

from builders.build import build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe
from builders.verify import verify_dataset
from manifests import RECIPES_DIR
from tests.visible_pixels import check_labels


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("icd-tiny")
    build_dataset(load_recipe("icd-tiny"), out, workers=2, progress=False)
    return out


@pytest.mark.slow
def test_embedded_default_matches_committed_checksums(tiny_dataset):
    assert (tiny_dataset / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-tiny.sha256").read_text()
    report = verify_dataset(tiny_dataset)
    assert report.ok and report.samples == 4 * 2500, report.problems[:5]


@pytest.mark.slow
def test_every_label_of_the_embedded_default_is_the_box_of_its_visible_pixels(tiny_dataset):
    counts = check_labels(tiny_dataset, "icd-tiny")
    assert counts["samples"] == 4 * 2500 and counts["dropped"] > 0, counts
