"""The re-weighting map: sums to T, is all ones without a box, down-weights the concept for a > 1."""
from __future__ import annotations

import pytest
import torch

from implicit_concept.geom_erasing.loss_weights import latent_cells, region_mask, reweight_map, weight_map, weighted_mse
from implicit_concept.sample import Box


def test_no_box_is_all_ones():
    assert weight_map([], 64, 64, 16, 16).equal(torch.ones(16, 16))


@pytest.mark.parametrize("box", [(0, 0, 64, 64), (10, 10, 30, 40), (60, 0, 64, 4), (3, 3, 5, 5)])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_weights_sum_to_t(box, alpha):
    w = weight_map([Box(*box)], 64, 64, 16, 16, alpha)
    assert w.sum().item() == pytest.approx(16 * 16, rel=1e-6)


def test_values_inside_and_outside():
    w = weight_map([Box(0, 0, 32, 32)], 64, 64, 8, 8, alpha=2.0)  # K = 16 of T = 64
    t, k, a = 64, 16, 2.0
    assert w[0, 0].item() == pytest.approx(t / (k + a * (t - k)))
    assert w[7, 7].item() == pytest.approx(a * t / (k + a * (t - k)))
    assert w[0, 0] < w[7, 7]  # a > 1 down-weights the concept region


def test_whole_image_box_and_alpha_one_give_ones():
    assert torch.allclose(weight_map([Box(0, 0, 64, 64)], 64, 64, 16, 16, 2.0), torch.ones(16, 16))
    assert torch.allclose(weight_map([Box(5, 5, 20, 20)], 64, 64, 16, 16, 1.0), torch.ones(16, 16))


def test_a_cell_is_inside_when_it_overlaps_the_box():
    # 64 px on 16 cells: 4 px per cell. A box [4, 9) touches cells 1 and 2, not 0 or 3.
    assert latent_cells((4, 4, 9, 8), 64, 64, 16, 16) == (1, 1, 3, 2)
    mask = region_mask([(4, 4, 9, 8)], 64, 64, 16, 16)
    assert mask.sum().item() == 2 and mask[1, 1] and mask[1, 2]


def test_boxes_union():
    mask = region_mask([(0, 0, 8, 8), (4, 4, 12, 12)], 64, 64, 16, 16)
    assert mask.sum().item() == 4 + 4 - 1


@pytest.mark.parametrize("alpha", [0, -1, True])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        reweight_map(torch.zeros(4, 4, dtype=torch.bool), alpha)


def test_weighted_mse_with_ones_is_mse():
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    per_sample = weighted_mse(pred, target, torch.ones(2, 8, 8))
    assert per_sample.shape == (2,)
    assert per_sample.mean().item() == pytest.approx(torch.nn.functional.mse_loss(pred, target).item(), rel=1e-6)
