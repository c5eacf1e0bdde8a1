"""Do the ICR intervals cover what they say? Coverage of the 95% intervals at n = 200 prompts, over
true rates from 0.25% to 50%, for a method trained with one seed and with three.

    python -m benchmark.perf.interval_coverage               # 400 simulated runs per cell for 3 seeds
    python -m benchmark.perf.interval_coverage --trials 1000

One seed: the flags are independent draws at the true rate (prompts are drawn from their population),
so coverage is computed exactly, by summing the binomial probability of every count whose interval
holds the rate: for the exact binomial (Clopper-Pearson) interval the rows now carry, and for the
percentile bootstrap they carried before.

Three seeds: every seed is scored on the same prompts, so a prompt's difficulty is shared by the
seeds (a logit offset ~ N(0, prompt_sd) per prompt) and each seed's fine-tune has its own offset
(~ N(0, seed_sd)). The estimand is the mean ICR over the population of seeds and prompts; the
baseline logit is solved so that it equals the rate of the cell. Each cell is ``trials`` simulated
runs, each scored with :func:`implicit_concept.stats.crossed_share` (what seeded rows carry: the
crossed bootstrap, at least a Student-t interval on seeds' and prompts' variance and at least the
pooled binomial interval) and with the crossed bootstrap alone (what they carried before). Monte Carlo error: about +-1.1 points at 95%
for 400 trials.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from benchmark.perf import probe_cli
from implicit_concept.stats import bootstrap_mean, clopper_pearson, crossed_share, hierarchical_bootstrap

RATES = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)
#: (seed_sd, prompt_sd) on the logit scale. The reference run's sd QR seeds (20.0 / 14.5 / 25.0) differ
#: by about 0.3 on the logit scale; 0.6 is twice that.
SCENARIOS = ((0.0, 0.0), (0.0, 1.0), (0.3, 1.0), (0.6, 1.0))


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    log_pmf = log_factorial[n] - log_factorial - log_factorial[::-1] + k * math.log(p) + (n - k) * math.log1p(-p)
    return np.exp(log_pmf)


def one_seed_coverage(p: float, n: int = 200, level: float = 0.95) -> dict[str, float]:
    """Exact coverage of the Clopper-Pearson interval and of the old percentile bootstrap (seed 0)."""
    pmf = _binomial_pmf(n, p)
    exact = boot = 0.0
    for k in range(n + 1):
        if pmf[k] < 1e-15:
            continue
        low, high = clopper_pearson(k, n, level)
        exact += pmf[k] * (low <= p <= high)
        b = bootstrap_mean(np.r_[np.ones(k), np.zeros(n - k)], seed=0, level=level)
        boot += pmf[k] * (b.low <= p <= b.high)
    return {"clopper-pearson": exact, "percentile bootstrap": boot}


_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)


def _population_mean(base_logit: float, sd: float) -> float:
    return float(np.sum(_WEIGHTS / (1 + np.exp(-(base_logit + sd * _NODES)))) / np.sqrt(2 * np.pi))


def _base_logit(rate: float, sd: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _population_mean(mid, sd) < rate else (lo, mid)
    return (lo + hi) / 2


def seeded_coverage(rate: float, seed_sd: float, prompt_sd: float, seeds: int = 3, n: int = 200, trials: int = 400,
                    rng_seed: int = 0) -> dict[str, float]:
    """Simulated coverage of the seeded rows' interval (``now``: crossed_share) and of the crossed bootstrap alone."""
    rng = np.random.default_rng(rng_seed)
    base = _base_logit(rate, math.hypot(seed_sd, prompt_sd))
    hits = {"now": 0, "crossed bootstrap alone": 0}
    for t in range(trials):
        difficulty = rng.normal(0.0, prompt_sd, n)
        groups = [rng.random(n) < 1 / (1 + np.exp(-(base + rng.normal(0.0, seed_sd) + difficulty))) for _ in range(seeds)]
        now = crossed_share(groups, seed=t)
        before = hierarchical_bootstrap([g.astype(float) for g in groups], seed=t)
        hits["now"] += now.low <= rate <= now.high
        hits["crossed bootstrap alone"] += before.low <= rate <= before.high
    return {k: v / trials for k, v in hits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = probe_cli.parser("benchmark.perf.interval_coverage", __doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=probe_cli.count(1), default=400, help="simulated runs per three-seed cell (default: %(default)s)")
    parser.add_argument("--n", type=probe_cli.count(1), default=200, help="prompts (images per seed) (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"One seed, n = {args.n}: exact coverage of the 95% interval")
    print(f"{'rate %':>7}  {'Clopper-Pearson':>15}  {'percentile bootstrap (before)':>29}")
    for p in RATES:
        c = one_seed_coverage(p, args.n)
        print(f"{100 * p:7.2f}  {100 * c['clopper-pearson']:14.1f}%  {100 * c['percentile bootstrap']:28.1f}%")
    print(f"\nThree seeds, n = {args.n} prompts each, {args.trials} simulated runs per cell: coverage of the 95% interval")
    for seed_sd, prompt_sd in SCENARIOS:
        print(f"seed sd {seed_sd}, prompt sd {prompt_sd} (logit scale)")
        print(f"{'rate %':>7}  {'now (crossed_share)':>20}  {'crossed bootstrap alone (before)':>32}")
        for p in RATES:
            c = seeded_coverage(p, seed_sd, prompt_sd, n=args.n, trials=args.trials)
            print(f"{100 * p:7.2f}  {100 * c['now']:19.1f}%  {100 * c['crossed bootstrap alone']:31.1f}%",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(probe_cli.run(main))
