"""A fine-tune every method shares is refused once a method has written into it."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from benchmark import stages
from benchmark.methods.interface import FineTune
from benchmark.models.folder_seal import FolderChanged, check_listing, check_seal, seal, stat_listing
from tests.real_runs import real_run


def _folder(root: Path) -> Path:
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (root / "unet" / "weights.safetensors").write_bytes(bytes(range(256)) * 4)
    return root


def test_a_sealed_folder_passes_unchanged_and_as_a_copy_that_kept_its_bytes_but_not_its_times(tmp_path):
    folder = _folder(tmp_path / "made")
    seal(folder, tmp_path / "sealed.json")
    check_seal(folder, tmp_path / "sealed.json", "remedy")
    weights = folder / "unet" / "weights.safetensors"
    os.utime(weights, ns=(1, 1))  # as `cp -r` leaves a copy: same bytes, new times
    check_seal(folder, tmp_path / "sealed.json", "remedy")
    assert json.loads((tmp_path / "sealed.json").read_text())["files"]["unet/weights.safetensors"]["mtime_ns"] == 1


def _later(path: Path, data: bytes) -> None:
    """Write ``data`` as a later writer would: its mtime after the seal's (a file system's clock may
    tick once in milliseconds, so a write right after sealing can keep the time)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(before + 10**9, before + 10**9))


@pytest.mark.parametrize("change, said", [
    (lambda f: _later((f / "unet" / "weights.safetensors"), b"\0" * 1024), "unet/weights.safetensors: changed since"),
    (lambda f: (f / "unet" / "weights.safetensors").write_bytes(b"\0"), "unet/weights.safetensors: changed since"),
    (lambda f: (f / "unet" / "extra.safetensors").write_bytes(b"x"), "unet/extra.safetensors: added since"),
    (lambda f: (f / "model_index.json").unlink(), "model_index.json: removed since"),
], ids=["same-size", "other-size", "added", "removed"])
def test_a_sealed_folder_whose_files_changed_is_refused_naming_the_file_and_the_remedy(tmp_path, change, said):
    folder = _folder(tmp_path / "made")
    seal(folder, tmp_path / "sealed.json")
    change(folder)
    with pytest.raises(FolderChanged, match=f"{folder}/{said} the folder was made .*; delete it to retrain"):
        check_seal(folder, tmp_path / "sealed.json", "delete it to retrain")


def test_a_folder_made_before_seals_is_sealed_when_first_reused(tmp_path):
    folder = _folder(tmp_path / "made")
    check_seal(folder, tmp_path / "sealed.json", "remedy")
    (folder / "unet" / "weights.safetensors").write_bytes(b"changed")
    with pytest.raises(FolderChanged, match="changed since"):
        check_seal(folder, tmp_path / "sealed.json", "remedy")


def test_a_method_that_writes_into_the_fine_tune_it_was_given_is_caught_before_another_samples_it(monkeypatch, tmp_path):
    """``ctx.finetune`` hands every method the same ``sd`` folder (np, sld, esd, a plug-in): one that
    saves into it would change what the next samples."""
    trained = []

    def train(base, data, out, config, **kw):
        trained.append(out)
        return _folder(out / stages.PIPELINE_DIR)

    monkeypatch.setattr(stages, "train", train)
    monkeypatch.setattr(stages, "finetune_key", lambda base, subset, config, detector: "key")
    run = real_run(tmp_path, {"finetune": {"steps": 1}, "seed": 0})
    made = stages.finetune(run, Path("base"), Path("sub"), FineTune(), detector=None)
    assert stages.finetune(run, Path("base"), Path("sub"), FineTune(), detector=None) == made and len(trained) == 1
    shutil.copyfile(made / "model_index.json", made / "unet" / "weights.safetensors")  # a plug-in's save_pretrained(made)
    with pytest.raises(FolderChanged, match=rf"{made}/unet/weights.safetensors: changed since the folder was made .*"
                                            rf"write a copy under ctx.work_dir instead\); delete {made.parent} to train it again"):
        stages.finetune(run, Path("base"), Path("sub"), FineTune(), detector=None)


def test_a_file_whose_size_changed_within_its_sealed_mtime_is_refused(tmp_path):
    """A write in the same clock tick as the seal (coarse file-system times) keeps the mtime: the size tells."""
    folder = _folder(tmp_path / "made")
    seal(folder, tmp_path / "sealed.json")
    weights = folder / "unet" / "weights.safetensors"
    sealed = weights.stat()
    weights.write_bytes(b"\0" * 10)
    os.utime(weights, ns=(sealed.st_atime_ns, sealed.st_mtime_ns))
    with pytest.raises(FolderChanged, match="unet/weights.safetensors: changed since"):
        check_seal(folder, tmp_path / "sealed.json", "remedy")


def test_a_copy_resealed_once_passes_again_and_still_catches_a_change(tmp_path):
    folder = _folder(tmp_path / "made")
    seal(folder, tmp_path / "sealed.json")
    os.utime(folder / "unet" / "weights.safetensors", ns=(1, 1))
    check_seal(folder, tmp_path / "sealed.json", "remedy")
    check_seal(folder, tmp_path / "sealed.json", "remedy")
    assert set(json.loads((tmp_path / "sealed.json").read_text())["files"]) == {"model_index.json", "unet/weights.safetensors"}
    _later(folder / "model_index.json", b"{}")
    with pytest.raises(FolderChanged, match="model_index.json: changed since"):
        check_seal(folder, tmp_path / "sealed.json", "remedy")


@pytest.mark.parametrize("record", ['{"folder": "made"}', '{"folder": "made", "files": []}'])
def test_a_seal_of_another_shape_is_refused_naming_it(tmp_path, record):
    folder = _folder(tmp_path / "made")
    (tmp_path / "sealed.json").write_text(record)
    with pytest.raises(FolderChanged, match=r"sealed.json: not a seal \(no 'files' object\); delete it"):
        check_seal(folder, tmp_path / "sealed.json", "remedy")


def test_a_fine_tune_is_sealed_when_trained_so_a_write_before_its_first_reuse_is_caught(monkeypatch, tmp_path):
    """The method that asked for ``sd`` first (the ``sd`` method itself) may write into it before any
    other asks: the seal is the folder as trained, not as the first reuse finds it."""
    monkeypatch.setattr(stages, "train", lambda base, data, out, config, **kw: _folder(out / stages.PIPELINE_DIR))
    monkeypatch.setattr(stages, "finetune_key", lambda base, subset, config, detector: "key")
    run = real_run(tmp_path, {"finetune": {"steps": 1}, "seed": 0})
    made = stages.finetune(run, Path("base"), Path("sub"), FineTune(), detector=None)
    assert (made.parent / stages.SEAL_FILE).is_file()
    (made / "unet" / "weights.safetensors").write_bytes(b"saved by a method")
    with pytest.raises(FolderChanged, match=rf"{made}/unet/weights.safetensors: changed since"):
        stages.finetune(run, Path("base"), Path("sub"), FineTune(), detector=None)


def _listed_shards(root: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    (root / "train" / "extra").mkdir(parents=True)
    for name in ("00000.tar", "extra/00001.tar"):
        (root / "train" / name).write_bytes(b"shard")
        os.utime(root / "train" / name, ns=(10**18, 10**18))
    return root / "train", stat_listing(root / "train")


@pytest.mark.parametrize("change, said", [
    (lambda train: (train / "extra" / "filtered.tar").write_bytes(b"kept"), "extra/filtered.tar: added since the run listed it"),
    (lambda train: (train / "extra" / "00001.tar").unlink(), "extra/00001.tar: removed since the run listed it"),
    # the same size, rewritten: its mtime moved
    (lambda train: (train / "00000.tar").write_bytes(b"SHARD"), "00000.tar: changed since the run listed it"),
    # ... within the second it was listed in (a shard built just before the run): its mtime moved by a microsecond
    (lambda train: ((train / "00000.tar").write_bytes(b"SHARD"), os.utime(train / "00000.tar", ns=(10**18 + 1000,) * 2)),
     "00000.tar: changed since the run listed it"),
])
def test_training_data_listed_in_memory_is_refused_once_a_file_is_added_removed_or_rewritten(tmp_path, change, said):
    """The dataset's splits hold no seal: their listing (sizes and mtimes) is taken while the run
    uses them, and a method that wrote a filtered copy beside the shards, or rewrote one in place
    to the same size, is named as one that removed a shard is."""
    train, listing = _listed_shards(tmp_path)
    check_listing(train, listing, "rebuild")
    change(train)
    with pytest.raises(FolderChanged, match=f"^{re.escape(str(train))}/{said}; rebuild$"):
        check_listing(train, listing, "rebuild")
