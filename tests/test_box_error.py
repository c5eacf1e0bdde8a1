"""The box-error measurement on a micro pipeline: the same noise for every model, whatever the order."""
import numpy as np
import pytest
from PIL import Image

from benchmark.evaluation.box_error import RegionErrors, fixed_timesteps, paired_ratios, region_errors
from benchmark.models.pipelines import TinyPipelineConfig, build_tiny_pipeline
from implicit_concept.sample import Box, Instance, Sample, SampleMeta

MICRO = TinyPipelineConfig(
    image_size=16, patch_size=2, unet_channels=(16, 32), unet_attention=(False, True),
    attention_head_dim=8, text_hidden=16, text_layers=1, text_heads=2,
)


def _sample(i: int, boxes: list[Box]) -> Sample:
    rng = np.random.default_rng(i)
    image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    meta = SampleMeta(key=f"{i:09d}", caption=f"a square number {i}", width=16, height=16, split="test", subset="icd-qrcode",
                      source={}, instances=[Instance("qrcode", b) for b in boxes], seed=[i], recipe="test", recipe_sha256="", version="0")
    return Sample(meta=meta, image=image)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("box-error")
    return [build_tiny_pipeline(MICRO, root / "tokenizer", seed=s) for s in (0, 1)]


def test_each_image_gets_its_own_noise_whatever_the_order(pipelines):
    samples = [_sample(0, [Box(0, 0, 8, 8)]), _sample(1, []), _sample(2, [Box(4, 4, 12, 16)])]
    forward = region_errors(pipelines[0], samples, timesteps=3, draws=2)
    backward = region_errors(pipelines[0], samples[::-1], timesteps=3, draws=2)
    assert forward.keys == ("000000000", "000000002"), "an image without a box is skipped"
    assert backward.keys == forward.keys[::-1]
    assert np.array_equal(forward.inside, backward.inside[::-1]) and np.array_equal(forward.outside, backward.outside[::-1])
    assert np.all(forward.inside > 0) and np.all(forward.outside > 0)
    assert not np.array_equal(region_errors(pipelines[0], samples, timesteps=3, draws=2, seed=1).inside, forward.inside)


def test_another_model_on_the_same_images_is_compared_pairwise(pipelines):
    samples = [_sample(i, [Box(0, 0, 6, 6)]) for i in range(4)]
    a, b = (region_errors(p, samples, timesteps=2, draws=1) for p in pipelines)
    ratios = paired_ratios(a, b, resamples=200)
    assert ratios.inside.value == pytest.approx(a.inside.mean() / b.inside.mean())
    assert ratios.outside.low <= ratios.outside.value <= ratios.outside.high
    assert paired_ratios(a, a, resamples=200).inside.value == 1.0
    with pytest.raises(ValueError, match="different images"):
        paired_ratios(a, RegionErrors(a.keys[::-1], a.inside, a.outside))


def test_fixed_timesteps_are_slice_middles():
    assert fixed_timesteps(4, 1000) == [125, 375, 625, 875]
    with pytest.raises(ValueError):
        fixed_timesteps(0, 1000)


def test_a_whole_image_box_has_no_outside(pipelines):
    errors = region_errors(pipelines[0], [_sample(0, [Box(0, 0, 16, 16)]), _sample(1, [Box(0, 0, 4, 4)])], timesteps=1, draws=1)
    assert np.isnan(errors.outside[0]) and not np.isnan(errors.outside[1])
    assert errors.means()["outside"] == errors.outside[1]


def test_two_copies_of_one_image_under_other_keys_get_other_noise(pipelines):
    """The noise is drawn from (seed, key): the same pixels, caption and box under two keys are two
    independent draws, so the mean over images is not one noise draw repeated."""
    first = _sample(0, [Box(0, 0, 8, 8)])
    twin = Sample(meta=SampleMeta(**{**first.meta.__dict__, "key": "000000007"}), image=first.image)
    errors = region_errors(pipelines[0], [first, twin], timesteps=2, draws=1)
    assert errors.keys == ("000000000", "000000007")
    assert errors.inside[0] != errors.inside[1] and errors.outside[0] != errors.outside[1]
