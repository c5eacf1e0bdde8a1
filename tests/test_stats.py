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


def test_rare_counts_over_seeds_are_never_narrower_than_the_pooled_binomial_interval():
    """0 of 200 on each of three seeds: the crossed bootstrap alone says [0, 0]; the row says [0, 0.61%]."""
    from implicit_concept.stats import clopper_pearson, crossed_share

    zero = crossed_share([[False] * 200] * 3)
    assert zero.value == 0 and zero.low == 0 and zero.high == pytest.approx(clopper_pearson(0, 600)[1]) and zero.high > 0.006
    rare = crossed_share([[True] * k + [False] * (200 - k) for k in (1, 0, 2)])
    low, high = clopper_pearson(3, 600)
    assert rare.low <= low and rare.high >= high


def test_three_seeds_that_disagree_get_a_students_t_width_not_the_bootstraps():
    """Seeds at 20 / 14.5 / 25% (the reference run's sd on QR): resampling three seed means cannot reach
    past them; the interval must, as the mean of three draws may well lie outside their range."""
    from implicit_concept.stats import crossed_share, student_t_quantile

    groups = [[True] * k + [False] * (200 - k) for k in (40, 29, 50)]
    boot = hierarchical_bootstrap([np.asarray(g, float) for g in groups], resamples=1000, seed=0)
    now = crossed_share(groups)
    assert now.low < boot.low - 0.02 and now.high > boot.high + 0.02
    assert now.low < 0.145 and now.high > 0.25
    assert student_t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3) and student_t_quantile(0.975, 1e6) == pytest.approx(1.96, abs=1e-3)


@pytest.mark.parametrize("rate", [0.0025, 0.005, 0.01, 0.02, 0.05, 0.2, 0.5])
def test_one_seeds_interval_covers_the_rate_at_its_level_exactly(rate):
    """Computed exactly over every count of 200 images: the percentile bootstrap covered 39% at 0.25%."""
    from benchmark.perf.interval_coverage import one_seed_coverage

    assert one_seed_coverage(rate)["clopper-pearson"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.0025, 0.2, 0.5])
def test_three_seeds_interval_covers_the_mean_over_seeds_where_seeds_differ_as_the_reference_runs_do(rate):
    """200 simulated three-seed runs (seed sd 0.3, prompt sd 1 on the logit scale): the crossed
    bootstrap alone covered 81% at 0.25% and 91% at 20-50%."""
    from benchmark.perf.interval_coverage import seeded_coverage

    assert seeded_coverage(rate, 0.3, 1.0, trials=200)["now"] >= 0.92
