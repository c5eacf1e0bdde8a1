"""Other labs' hand-overs and plug-ins, third audit: a pipeline folder whose parts do not fit each
other, plug-ins whose shape is wrong, that exit, print or read as another method's folder."""
import json
import shutil

import pytest

from benchmark import external
from benchmark.models.pipelines import load_pipeline
from tests.test_handovers import MICRO, _judging, saved, unscored  # noqa: F401 (fixtures)


def _refit(folder, **fields):
    """``folder``'s UNet remade with other config fields (its weights then fit its config)."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in json.loads((folder / "unet" / "config.json").read_text()).items() if not k.startswith("_")}
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel(**{**config, **fields}).save_pretrained(folder / "unet")


@pytest.mark.parametrize("fields, problem", [
    ({"cross_attention_dim": 32}, r"unet/config.json: cross_attention_dim = 32, but the text encoder's hidden_size is 16 "
                                  r"\(.*text_encoder/config.json\); the UNet cannot attend to its text"),
    ({"in_channels": 4, "out_channels": 4}, r"unet/config.json: in_channels = 4; the VAE's latents have 12 channels"),
])
def test_a_handed_over_folder_whose_parts_do_not_fit_is_refused_in_one_line_before_sampling(saved, tmp_path, unscored, fields, problem):
    """Loaded, it failed mid-sampling as 'the pipeline raised RuntimeError: mat1 and mat2 shapes' (or
    drew grey images refused as 'mode L'), blamed on a method, with a traceback."""
    folder = saved(f"misfit-{'-'.join(fields)}")
    _refit(folder, **fields)
    with pytest.raises(ValueError, match=problem):
        external.score_pipeline(folder, tmp_path / "out", _judging(tmp_path), progress=False)
    with pytest.raises(ValueError, match=problem):
        load_pipeline(folder)  # what ctx.load_pipeline gives a plug-in
    assert not (tmp_path / "out").exists()


def test_a_part_without_its_config_is_refused_naming_the_file(saved, tmp_path):
    """transformers printed a 40-line size-mismatch table and 'You set ignore_mismatched_sizes to False'."""
    folder = saved("no-text-config")
    (folder / "text_encoder" / "config.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=r"no-text-config/text_encoder/config.json: missing \(the text_encoder's architecture\)"):
        load_pipeline(folder)

