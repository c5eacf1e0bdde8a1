"""The bootstrap intervals every report carries."""
import numpy as np
import pytest

from implicit_concept.stats import bootstrap_mean, bootstrap_ratio, hierarchical_bootstrap


def test_one_seed_is_the_plain_bootstrap_over_prompts():
    values = [1.0] * 30 + [0.0] * 70
    assert hierarchical_bootstrap([values], resamples=2000, seed=1) == bootstrap_mean(values, resamples=2000, seed=1)


def test_seeds_that_disagree_widen_the_interval_beyond_the_prompts_alone():
    """Three fine-tunes at 10%, 30% and 50% on 200 prompts each: the prompt-only interval of the
    pooled images is about +-4 points; the seed-aware one must span most of the seeds' spread."""
    rng = np.random.default_rng(0)
    groups = [(rng.random(200) < p).astype(float) for p in (0.1, 0.3, 0.5)]
    seed_aware = hierarchical_bootstrap(groups, resamples=2000, seed=0)
    pooled = bootstrap_mean(np.concatenate(groups), resamples=2000, seed=0)
    assert seed_aware.low < pooled.low - 0.05 and seed_aware.high > pooled.high + 0.05
    assert seed_aware.low < 0.2 and seed_aware.high > 0.4
    assert seed_aware.value == pytest.approx(np.mean([g.mean() for g in groups]))


def test_identical_seeds_are_one_seed_neither_wider_nor_narrower():
    """Every seed is scored on the same prompts, so three seeds that agree prompt by prompt hold what
    one seed holds; resampling prompts anew for each seed made this interval about sqrt(3) narrower."""
    values = [1.0] * 50 + [0.0] * 150
    same = hierarchical_bootstrap([values, values, values], resamples=2000, seed=0)
    one = bootstrap_mean(values, resamples=2000, seed=0)
    assert same.value == one.value
    assert (same.low, same.high) == pytest.approx((one.low, one.high), abs=1e-12)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        hierarchical_bootstrap([])
    with pytest.raises(ValueError):
        hierarchical_bootstrap([[1.0], []])
    with pytest.raises(ValueError, match="the same prompts, got 3, 2 values"):
        hierarchical_bootstrap([[1.0, 0.0, 1.0], [1.0, 0.0]])


def test_a_paired_ratio_cancels_what_the_pairs_share():
    """Items of very different difficulty, each measured 10% higher by one model: the ratio's interval
    is tight around 1.1, where unpaired resampling of the same values would spread widely."""
    rng = np.random.default_rng(0)
    reference = rng.lognormal(0.0, 1.0, 100)
    model = reference * rng.normal(1.1, 0.02, 100)
    paired = bootstrap_ratio(model, reference, resamples=2000, seed=0)
    assert paired.value == pytest.approx(model.mean() / reference.mean())
    assert 1.08 < paired.low < paired.value < paired.high < 1.12
    unpaired = bootstrap_mean(model, resamples=2000, seed=0).high / bootstrap_mean(reference, resamples=2000, seed=1).low
    assert unpaired > 1.5


def test_a_paired_ratio_refuses_unpaired_or_empty_input():
    for a, b in (([1.0, 2.0], [1.0]), ([], []), ([1.0], [0.0])):
        with pytest.raises(ValueError):
            bootstrap_ratio(a, b)
