"""Same inputs, same bytes wherever they run: two labs whose shards, exports and detectors live in
other folders write the same files, and the digests their records compare agree."""
import json
import shutil

from implicit_concept.detector.export import MARKER, export_detection_dataset
from implicit_concept.detector.inference import Detector
from implicit_concept.detector.training import train_detector
from tests.test_detection import TRAINABLE, _write_shards
from tests.test_detector_files import TINY

#: Human fields of an export's record: where its shards were, the machine it ran on.
EXPORT_HUMAN_FIELDS = ("source", "environment")


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_export_written_elsewhere_from_another_folder_has_the_same_bytes(tmp_path, monkeypatch):
    shards = _write_shards(tmp_path / "lab-a" / "icd-mixed")
    moved = tmp_path / "lab-b" / "deeper" / "icd-mixed"
    shutil.copytree(shards, moved)
    first = export_detection_dataset(shards, tmp_path / "lab-a" / "export").root
    monkeypatch.chdir(moved.parent)
    second = export_detection_dataset("icd-mixed", "export").root  # relative paths, another working folder
    a, b = _files(first), _files(second)
    records = [json.loads(files.pop(MARKER)) for files in (a, b)]
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == [], "every exported file is the same bytes"
    for record in records:
        for field in EXPORT_HUMAN_FIELDS:
            record.pop(field)
    assert records[0] == records[1], "the export's record differs beyond its human fields (files_sha256 hashes a path?)"


def test_a_moved_export_is_reused_and_still_read_beside_its_data_yaml(tmp_path):
    shards = _write_shards(tmp_path / "icd-mixed")
    export = export_detection_dataset(shards, tmp_path / "export").root
    shutil.move(export, tmp_path / "moved")
    again = export_detection_dataset(shards, tmp_path / "moved")
    assert "path" not in again.data_yaml.read_text(encoding="utf-8"), "no machine's folder in data.yaml"


def test_a_detector_trained_from_shards_elsewhere_records_the_same_clean_reference(tmp_path):
    """The clean-image reference's sha256 is in the detector's record and the leaderboard compares it:
    the folder the shards were in must not enter it."""
    shards = _write_shards(tmp_path / "lab-a" / "icd-mixed", TRAINABLE)
    moved = tmp_path / "lab-b" / "deeper" / "icd-mixed"
    shutil.copytree(shards, moved)
    train_detector(shards, tmp_path / "lab-a" / "det", TINY)
    train_detector(moved, tmp_path / "lab-b" / "det", TINY)
    a, b = (Detector.load(tmp_path / lab / "det") for lab in ("lab-a", "lab-b"))
    texts = [(tmp_path / lab / "det" / "clean_reference.json").read_text(encoding="utf-8") for lab in ("lab-a", "lab-b")]
    assert "lab-a" not in texts[0] and texts[0] == texts[1]
    assert a.clean_reference_sha256 == b.clean_reference_sha256
    records = [(tmp_path / lab / "det" / "detector.json").read_bytes() for lab in ("lab-a", "lab-b")]
    assert records[0] == records[1], "the detector's record (weights sha256, thresholds, inputs) is the same bytes"


def test_score_images_records_the_images_it_scored_by_content_wherever_they_are(tmp_path, monkeypatch):
    """summary.json names the images by their bytes: the same images in another folder record the
    same digest, one changed pixel another, and an unscored extra file none."""
    from PIL import Image

    from benchmark import external
    from tests.test_benchmark_io import _FakeReport, _folder, _judging

    monkeypatch.setattr(external, "score_generated", lambda paths, prompts, *a: (_FakeReport(), {"qrcode": {"icr": len(paths)}}))
    judging = _judging(tmp_path, num_prompts=3)
    prompts = judging.prompts()
    first = _folder(tmp_path / "lab-a", prompts, 1)
    second = tmp_path / "lab-b" / "deeper"
    second.parent.mkdir()
    shutil.copytree(first, second)
    Image.new("RGB", (64, 64)).save(second / "unasked.png")  # not named by a prompt: not scored, not in the digest
    digests = [external.score_image_folder(folder, tmp_path / f"out-{i}", judging)["inputs"]["images_sha256"]
               for i, folder in enumerate((first, second))]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    Image.new("RGB", (64, 64), (0, 0, 1)).save(second / f"{prompts[0].case_number}_0.png")
    assert external.score_image_folder(second, tmp_path / "out-2", judging)["inputs"]["images_sha256"] != digests[0]


def test_the_leaderboard_notes_runs_made_under_other_package_versions(tmp_path):
    """Same seed, same bytes holds under the same versions only: runs (and a score-images folder)
    recorded under another torch are said to be, naming the versions and runs; equal ones say nothing."""
    from benchmark.leaderboard import leaderboard
    from tests.test_results_page import fake_run

    def with_packages(run, **packages):
        results = json.loads((run / "results.json").read_text())
        results["environment"] = {"python": "3", "packages": {"numpy": "2.4.6", **packages}}
        (run / "results.json").write_text(json.dumps(results))
        return run

    a = with_packages(fake_run(tmp_path / "a"), torch="2.14.1")
    b = with_packages(fake_run(tmp_path / "b"), torch="2.14.1")
    assert not [n for n in leaderboard([a, b]).notes if "differs between runs" in n]
    c = with_packages(fake_run(tmp_path / "c"), torch="2.13.0")
    board = leaderboard([a, b, c])
    assert [n for n in board.notes if "differs between runs" in n] == [
        f"torch differs between runs, which may change their numbers: 2.13.0 ({c}); 2.14.1 ({a}, {b})"]
    assert "torch differs between runs" in board.markdown
    d = with_packages(fake_run(tmp_path / "d"), torch=None)
    notes = [n for n in leaderboard([a, d]).notes if "differs between runs" in n]
    assert notes == [f"torch differs between runs, which may change their numbers: 2.14.1 ({a}); not installed ({d})"]
    results = json.loads((d / "results.json").read_text())
    results["environment"]["packages"] = {"numpy": "2.4.6"}
    (d / "results.json").write_text(json.dumps(results))
    assert [n for n in leaderboard([a, d]).notes if "differs between runs" in n] == [
        f"torch differs between runs, which may change their numbers: 2.14.1 ({a}); not recorded ({d})"]
