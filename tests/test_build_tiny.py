import pytest

from builders.build import build_dataset
from builders.dataset_card import CHECKSUMS
from builders.recipe import load_recipe
from builders.verify import verify_dataset
from manifests import RECIPES_DIR


@pytest.mark.slow
def test_embedded_default_matches_committed_checksums(tmp_path):
    build_dataset(load_recipe("icd-tiny"), tmp_path, workers=2, progress=False)
    assert (tmp_path / CHECKSUMS).read_text() == (RECIPES_DIR / "icd-tiny.sha256").read_text()
    report = verify_dataset(tmp_path)
    assert report.ok and report.samples == 4 * 2500, report.problems[:5]
