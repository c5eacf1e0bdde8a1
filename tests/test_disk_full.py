"""A disk that fills (or a quota hit) in the middle of a long job: whatever step writes, the command
says so in one line naming the file, how much is free and that a rerun resumes; a library's own error
type for it (safetensors') is said as the OS error it is; a step that knows what it will write
refuses at once when the disk holds less."""
import errno
import os
import shutil

import pytest
from safetensors import SafetensorError

from implicit_concept import disk_space, file_locks

FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


@pytest.mark.parametrize("error, said", [
    (OSError(errno.ENOSPC, "No space left on device"), "the disk is full (No space left on device; "),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is used up (Disk quota exceeded; "),
])
def test_a_full_disk_in_any_command_is_one_line_naming_the_file_and_the_space_left(tmp_path, monkeypatch, capsys, error, said):
    """Any command, any step: the safety net of the command line, not each writer, says it."""
    from benchmark import cli

    target = tmp_path / "runs" / "r" / "images" / "sd" / "0_0.png"
    error.filename = str(target)

    def full(args):
        raise error

    monkeypatch.setattr(cli, "_verify", full)
    assert cli.main(["verify", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"implicit-concept verify: error: {target}: cannot be written: {said}"), err
    assert " free there now); make room and rerun the same command to resume" in err, err


def test_a_library_error_that_carries_an_os_error_is_that_os_error_naming_the_file(tmp_path):
    target = tmp_path / "unet.safetensors"
    with pytest.raises(OSError) as e:
        with disk_space.writing(target):
            raise SafetensorError(FULL)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
    assert disk_space.space_message(e.value).startswith(f"{target}: cannot be written: the disk is full")
    other = SafetensorError("Error while deserializing header: HeaderTooLarge")
    with pytest.raises(SafetensorError):  # not an OS error: as it was
        with disk_space.writing(target):
            raise other
    named = OSError(errno.EIO, "Input/output error", str(tmp_path / "other"))
    with pytest.raises(OSError) as e:  # an OS error naming its own file keeps it
        with disk_space.writing(target):
            raise named
    assert e.value is named


def test_a_step_that_knows_its_size_refuses_a_disk_with_less_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 3 << 20)
    out = tmp_path / "models" / "sd"
    with pytest.raises(OSError) as e:
        disk_space.require_space(out, 5 << 30, "the pipeline's weights")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert disk_space.space_message(e.value) == (f"{out}: cannot be written: not enough free space for the pipeline's weights "
                                            "(5.0 GiB needed, 3.0 MiB free there); make room and rerun the same command to resume")
    disk_space.require_space(out, 3 << 20, "the pipeline's weights")  # exactly what is free: runs


def test_free_bytes_asks_the_nearest_folder_that_exists(tmp_path):
    free = disk_space.free_bytes(tmp_path / "not" / "yet" / "made")
    st = os.statvfs(tmp_path)
    assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 64 << 20


def test_saving_a_pipeline_refuses_a_disk_smaller_than_its_weights_before_writing(tmp_path, monkeypatch):
    from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline, save_portable_pipeline, weights_bytes

    pipe = build_tiny_pipeline(TinyPipelineConfig(image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
                                                  attention_head_dim=8, text_hidden=16, text_layers=1, text_heads=2),
                               tmp_path / "tokenizer", seed=0)
    needed = weights_bytes(pipe)
    assert needed == sum(p.numel() * 4 for m in (pipe.unet, pipe.text_encoder, pipe.vae) for p in m.parameters())
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: needed - 1)
    with pytest.raises(OSError) as e:
        save_portable_pipeline(pipe, tmp_path / "sd")
    assert e.value.errno == errno.ENOSPC and "for the pipeline's weights (" in e.value.strerror
    assert not (tmp_path / "sd").exists()
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: needed)
    save_portable_pipeline(pipe, tmp_path / "sd")
    assert (tmp_path / "sd" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size > 0


def test_a_full_disk_in_the_middle_of_an_export_names_its_folder_and_keeps_the_export_before(debug_dataset, tmp_path, monkeypatch, capsys):
    """A write to an open file names none (Path.write_bytes on a full disk): the folder being written
    is named, not "No space left on device" alone; the earlier export (YOLO only, replaced by one
    adding COCO) is whole, nothing half-written is left beside it, and the rerun once there is room
    makes the files an uninterrupted export does."""
    from pathlib import Path

    from benchmark import cli

    def content(folder):
        return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != file_locks.LOCK_NAME}

    shards, out = debug_dataset / "icd-qrcode", tmp_path / "export"
    assert cli.main(["export", str(shards), "--out", str(out), "--quiet"]) == 0
    uninterrupted = content(out)
    shutil.rmtree(out)
    assert cli.main(["export", str(shards), "--out", str(out), "--format", "yolo", "--quiet"]) == 0
    before = content(out)
    real, calls = Path.write_bytes, []

    def fills(self, data):
        calls.append(self)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fills)
    capsys.readouterr()
    assert cli.main(["export", str(shards), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"implicit-concept export: error: {out}: cannot be written: the disk is full") and err.count("\n") == 1, err
    assert content(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    monkeypatch.undo()
    assert cli.main(["export", str(shards), "--out", str(out), "--quiet"]) == 0
    assert content(out) == uninterrupted


def test_a_filesystem_that_reports_no_size_is_not_refused(tmp_path, monkeypatch):
    """Some FUSE mounts answer statvfs with 0 blocks, 0 free, and take writes: unknown, not full."""
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096, 4096, 0, 0, 0, 0, 0, 0, 0, 255)))
    assert disk_space.free_bytes(tmp_path) is None
    disk_space.require_space(tmp_path, 1 << 40, "the pipeline's weights")
    monkeypatch.setattr(os, "statvfs", real)
    assert disk_space.free_bytes(tmp_path) is not None


def test_a_command_that_words_its_own_write_errors_says_a_full_disk_as_every_command(tmp_path, monkeypatch, capsys):
    """`prompts` turned any write error into "--out X: cannot be written (No space left on device)",
    exit 2 (a usage error), without the rerun; a full disk is said as everywhere else."""
    from benchmark import cli

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "prompts.csv"
    assert cli.main(["prompts", "icd-debug", "--count", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"implicit-concept prompts: error: {out}: cannot be written: the disk is full"), err
    assert err.rstrip().endswith("make room and rerun the same command to resume") and not out.exists()


def test_a_plot_ultralytics_cut_short_on_a_full_disk_is_not_kept_as_the_detectors(tmp_path):
    """ultralytics logs a plot it could not write ("ConfusionMatrix plot failure: [Errno 28]") and
    goes on: the PNG cut short was copied beside the weights (and published with them); an earlier
    detector's plot stayed beside new weights when this run drew none."""
    import io

    from PIL import Image

    from implicit_concept.detector.training import keep_plot

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    whole = buffer.getvalue()
    drawn, kept = tmp_path / "test" / "confusion_matrix.png", tmp_path / "confusion_matrix.png"
    drawn.parent.mkdir()
    kept.write_bytes(b"an earlier detector's plot")
    drawn.write_bytes(whole[: len(whole) // 2])
    keep_plot(drawn, kept)
    assert not kept.exists()
    kept.write_bytes(b"an earlier detector's plot")
    drawn.unlink()
    keep_plot(drawn, kept)
    assert not kept.exists()
    drawn.write_bytes(whole)
    keep_plot(drawn, kept)
    assert kept.read_bytes() == whole
