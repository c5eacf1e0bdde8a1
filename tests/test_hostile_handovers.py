"""What other labs hand over that says what no model or image set is: a pipeline folder whose noise
schedule is none or whose tokenizer lacks its folder or config, an images folder with an entry that is
not a file beside an image of its name. Each is refused in one line naming the file, before
anything is written into ``--out``."""
import hashlib
import json
import os
import re

import pytest
from PIL import Image

from benchmark import external
from benchmark.models.pipelines import check_noise_schedule
from tests.test_handovers import _images, _judging, saved, unscored  # noqa: F401 (fixtures)


def _rescheduled(folder, **fields):
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **fields}))
    return config


@pytest.mark.parametrize("fields, said", [
    ({"beta_schedule": "linear", "beta_start": 0.5, "beta_end": 2.0}, r"beta at training step \d+ is 1\.\d+ .*in \[0, 1\]"),
    ({"trained_betas": [1.5] * 1000}, r"beta at training step 0 is 1\.5 .*trained_betas"),
    ({"beta_schedule": "linear", "beta_start": -0.1, "beta_end": 0.02}, r"beta at training step 0 is -0\.1 "),
    ({"beta_schedule": "scaled_linear", "beta_start": -0.1}, r"no noise schedule can be built from its beta fields \(RuntimeError"),
    ({"beta_schedule": "linear", "beta_start": "0.1"}, r"no noise schedule can be built from its beta fields \(TypeError"),
    ({"trained_betas": ["a"] * 1000}, r"no noise schedule can be built from its beta fields \(ValueError"),
    ({"trained_betas": [0.01] * 10}, r"trained_betas holds 10 values; expected one per training step \(num_train_timesteps = 1000\)"),
    ({"beta_schedule": "cosine_fancy"}, r"beta_schedule = 'cosine_fancy'; expected one of scaled_linear, linear, squaredcos_cap_v2"),
    ({"beta_schedule": "linear", "beta_start": 0.0, "beta_end": 0.0}, r"every beta of the noise schedule is 0"),
])
@pytest.mark.parametrize("own_scheduler", [False, True])
def test_a_scheduler_config_whose_noise_schedule_is_none_is_refused_naming_it_before_anything_is_drawn(
        saved, tmp_path, unscored, fields, said, own_scheduler):
    """Betas past 1 were sampled (NaN noise levels: noise scored as the lab's erasure); a negative
    or unknown one failed inside torch or diffusers (RuntimeError, IndexError, NotImplementedError)
    naming no file, or once images/ had begun."""
    folder = saved("schedule-" + hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:12])
    config = _rescheduled(folder, **fields)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: (the noise schedule.s )?" + said):
        external.score_pipeline(folder, out, _judging(tmp_path), progress=False, own_scheduler=own_scheduler)
    assert not out.exists(), "refused before --out is made"


@pytest.mark.parametrize("fields", [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},  # SD v1.5's
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},  # a last beta of 1
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": [0.01] * 1000},
])
def test_the_noise_schedules_models_are_trained_with_are_taken(tmp_path, fields):
    check_noise_schedule({"num_train_timesteps": 1000, **fields}, tmp_path / "scheduler_config.json")


@pytest.mark.parametrize("remove, said", [
    ("tokenizer", r"tokenizer: missing \(the pipeline's tokenizer"),
    ("tokenizer/tokenizer_config.json", r"tokenizer/tokenizer_config.json: missing \(it names model_max_length"),
])
def test_a_pipeline_without_its_tokenizer_or_its_config_is_refused_saying_what_is_missing(saved, tmp_path, unscored, remove, said):
    """It was refused as ``model_max_length = None``, a field of a file that is not there."""
    folder = saved(f"no-{remove.replace('/', '-')}")
    target = folder / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(f"{folder}: cannot load the pipeline ({folder}/") + said):
        external.score_pipeline(folder, out, _judging(tmp_path), progress=False)
    assert not out.exists()


@pytest.mark.parametrize("make, said", [
    (lambda path: os.symlink("nowhere.jpg", path), r"is a broken symbolic link \(to nowhere.jpg\)"),
    (lambda path: path.mkdir(), r"is a folder"),
    (lambda path: os.mkfifo(path), r"is not a regular file"),
])
def test_an_entry_that_is_not_a_file_beside_an_image_of_its_name_is_refused_not_passed_over(tmp_path, unscored, make, said):
    """``0_0.png`` and a dangling ``0_0.jpg`` (or a folder, a FIFO of that name) were scored as the PNG
    alone, where two files of one stem are refused ("keep one"): the lab's image may be the other."""
    judging = _judging(tmp_path)
    first, second = (p.case_number for p in judging.prompts())
    folder = _images(tmp_path / "images", [f"{first}_0.png", f"{second}_0.png"])
    make(folder / f"{first}_0.jpg")
    with pytest.raises(FileNotFoundError, match=rf"images: 1 entries named as images are not image files: {first}_0.jpg {said}$"):
        external.score_image_folder(folder, tmp_path / "out", judging)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("replace", [
    lambda path: Image.new("RGB", (32, 32), (255, 255, 255)).save(path),
    lambda path: path.write_bytes(b""),
    lambda path: path.write_text("not an image"),
])
def test_a_drawn_image_replaced_or_damaged_since_is_drawn_anew_not_scored_as_the_models(saved, tmp_path, unscored, replace):
    """``source.json`` still listed ``0_0.png`` as drawn, so a rerun kept whatever the file had become:
    a 32x32 image was scored as the pipeline's, and an emptied one failed scoring."""
    judging, out = _judging(tmp_path), tmp_path / "out"
    folder = saved("original")
    external.score_pipeline(folder, out, judging, progress=False)
    drawn = {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
    replace(out / "images" / "0_0.png")
    external.score_pipeline(folder, out, judging, progress=False)
    assert {p.name: p.read_bytes() for p in (out / "images").glob("*.png")} == drawn
