"""The tiny track's claims are checked from finished rows, and say when they cannot be."""
import pytest

from benchmark.targets import Targets, at_most_ratio, check_targets
from benchmark.track import TrackError, load_track


def _row(method, value, ci, concept="qrcode", following=(0.5, (0.45, 0.55))):
    return {"concept": concept, "method": method, "status": "ok", "icr": {"value": value, "ci": list(ci)},
            "quality_detail": {"prompt_following": {"mean": {"value": following[0], "ci": list(following[1])}}}}


FP = {"qrcode": {"value": 0.01}}


def _met(checks):
    return [c["met"] for c in checks]


ALL = Targets(np_max_gap=0.05, base_max_icr=0.05, named_base_min_icr=0.5)


def _named(value):
    return {"qrcode": {"value": value, "ci": [value - 0.05, value + 0.05]}}


def test_every_claim_met():
    rows = [_row("sd", 0.40, (0.33, 0.47)), _row("ge-full", 0.05, (0.02, 0.08)), _row("np", 0.37, (0.3, 0.44)),
            _row("oracle", 0.03, (0.01, 0.05)), _row("base", 0.02, (0.0, 0.04))]
    assert _met(check_targets(rows, FP, ALL, {"qrcode": {"icr": _named(0.6)["qrcode"]}})) == [True] * 7


def test_each_claim_can_fail():
    rows = [_row("sd", 0.20, (0.14, 0.26)), _row("ge-full", 0.10, (0.06, 0.15), following=(0.3, (0.25, 0.35))),
            _row("np", 0.10, (0.06, 0.15)), _row("oracle", 0.2, (0.15, 0.25)), _row("base", 0.08, (0.05, 0.11))]
    assert _met(check_targets(rows, FP, ALL, {"qrcode": {"icr": _named(0.4)["qrcode"]}})) == [False] * 7


def test_optional_claims_are_checked_only_when_a_track_makes_them():
    rows = [_row("sd", 0.40, (0.33, 0.47)), _row("np", 0.10, (0.05, 0.15)), _row("base", 0.5, (0.4, 0.6))]
    targets = [c["target"] for c in check_targets(rows, FP, Targets())]
    assert not any(t.startswith(("np", "base")) for t in targets)
    checks = check_targets(rows, FP, Targets(named_base_min_icr=0.5))
    assert checks[-1]["met"] is None and checks[-1]["measured"] == "not run"


def test_a_third_of_sd_but_overlapping_intervals_is_not_met():
    rows = [_row("sd", 0.30, (0.10, 0.50)), _row("ge-full", 0.09, (0.02, 0.20))]
    assert check_targets(rows, FP, Targets())[1]["met"] is False


@pytest.mark.parametrize("oracle, met", [(0.055, True), (0.065, False), (0.10, False)])
def test_the_oracle_is_met_within_its_points_of_the_detector_fp_rate(oracle, met):
    """The oracle claim: ICR at most FP 1% + ``oracle_max_above_fp`` (5 points), no more."""
    rows = [_row("sd", 0.40, (0.33, 0.47)), _row("oracle", oracle, (oracle - 0.02, oracle + 0.02))]
    check = check_targets(rows, FP, Targets(oracle_max_above_fp=0.05))[2]
    assert check["target"] == "oracle within 5 points of the detector FP rate" and check["met"] is met


def test_missing_methods_are_not_run_not_failed():
    checks = check_targets([_row("sd", 0.4, (0.3, 0.5))], FP, Targets())
    assert _met(checks) == [True, None, None, None]
    assert checks[2]["measured"] == "not run"


def test_bad_targets_are_named():
    with pytest.raises(ValueError, match="sd_min_icr"):
        Targets(sd_min_icr=25)
    with pytest.raises(TrackError, match="unknown targets field"):
        load_track("tiny", {"targets": {"sd_icr": 0.25}})


def test_geom_erasing_stands_beside_the_papers_main_table_numbers():
    """The tracks run ``ge-full``, the paper's Geom-Erasing: the report compares it with the main
    table's ICRs, not with nothing (QR code, text) or the watermark ablation's 7.23."""
    from benchmark.report import paper_icr

    paper = paper_icr()
    assert {c: paper[c]["ge-full"] for c in paper} == {"qrcode": 5.38, "watermark": 5.02, "text": 13.48}
    assert all(paper[c]["ge-full"] == paper[c]["geom-erasing"] for c in paper)


def _counted(method, count, n=200, concept="qrcode", seeds=None):
    """A row with its counts, as the protocol writes it (``seeds``: each seed's count, same n)."""
    from implicit_concept.stats import clopper_pearson

    if seeds:
        value = sum(k / n for k in seeds) / len(seeds)
        low, high = clopper_pearson(sum(seeds), n * len(seeds))
        return {**_row(method, value, (low, high), concept), "seeds": {str(i): {"icr": {"value": k / n, "count": k, "n": n}}
                                                                  for i, k in enumerate(seeds)}}
    low, high = clopper_pearson(count, n)
    return {**_row(method, count / n, (low, high), concept), "icr": {"value": count / n, "ci": [low, high], "count": count, "n": n}}


@pytest.mark.parametrize("ratio", [0.3333, "1/3", 1 / 3])
@pytest.mark.parametrize("ge, sd", [(4, 12), (10, 30), (13, 39), (20, 60), (1, 3), (66, 198)])
def test_an_exact_third_of_sd_is_at_most_a_third_whatever_way_the_track_writes_a_third(ratio, ge, sd):
    """4/200 against 12/200: (1/3) * 0.06 is 0.0199999... in floats, and 0.3333 x sd is below a third;
    both said 'not met' for what the track means by 'at most a third'. One more image is over."""
    assert at_most_ratio(_counted("ge-full", ge), _counted("sd", sd), ratio)
    assert not at_most_ratio(_counted("ge-full", ge + 1), _counted("sd", sd), ratio)
    assert at_most_ratio(_row("ge-full", ge / 200, (0, 1)), _row("sd", sd / 200, (0, 1)), ratio), "values without counts"


@pytest.mark.parametrize("ratio", [0.3333, "1/3"])
def test_an_exact_third_with_disjoint_intervals_meets_the_removal_target(ratio):
    rows = [_counted("sd", 120, n=2000), _counted("ge-full", 40, n=2000)]
    assert check_targets(rows, FP, Targets(removal_max_ratio=ratio))[1]["met"] is True
    assert "(40/2000)" in check_targets(rows, FP, Targets(removal_max_ratio=ratio))[1]["measured"]
    rows = [_counted("sd", 120, n=2000), _counted("ge-full", 41, n=2000)]
    assert check_targets(rows, FP, Targets(removal_max_ratio=ratio))[1]["met"] is False


def test_seeded_means_are_compared_as_the_exact_means_of_their_counts():
    """Three seeds move the mean in steps of 1/600: ge-full 39/600 against sd 117/600 is a third exactly."""
    rows = [_counted("sd", None, seeds=[40, 29, 48]), _counted("ge-full", None, seeds=[2, 11, 26])]
    assert check_targets(rows, FP, Targets(removal_max_ratio=0.3333))[1]["met"] is True
    assert check_targets(rows, FP, Targets(removal_max_ratio=0.333))[1]["met"] is False
    rows = [_counted("sd", None, seeds=[40, 29, 48]), _counted("ge-full", None, seeds=[2, 11, 27])]
    assert check_targets(rows, FP, Targets(removal_max_ratio="1/3"))[1]["met"] is False


def test_the_tiny_tracks_ratio_loads_as_written_and_a_bad_ratio_is_named():
    track = load_track("tiny")
    assert Targets.from_dict(track.targets).removal_max_ratio == 0.3333
    assert load_track("tiny", {"targets": {**track.targets, "removal_max_ratio": "1/3"}}).targets["removal_max_ratio"] == "1/3"
    for bad in ("a third", "4/3", 1.5, True):
        with pytest.raises(ValueError, match="removal_max_ratio"):
            Targets(removal_max_ratio=bad)


def test_a_measured_value_that_rounds_to_the_limit_is_not_printed_as_the_limit():
    rows = [_row("sd", 0.24983, (0.2, 0.3))]
    check = check_targets(rows, FP, Targets())[0]
    assert check["met"] is False and "25.0%" not in check["measured"] and "24.98%" in check["measured"]


def _seeded_following(method, means, ci):
    return {**_row(method, 0.2, (0.1, 0.3), following=(sum(means) / len(means), ci)), "over_seeds": ["icr", "quality", "quality_detail"],
            "seeds": {str(i): {"icr": {"value": 0.2}} for i in range(len(means))}}


def test_prompt_following_of_seeded_rows_is_judged_over_seeds_and_a_first_seed_only_row_is_not_judged():
    sd = _seeded_following("sd", [0.42, 0.42, 0.42], (0.40, 0.44))
    ge = _seeded_following("ge-full", [0.45, 0.35, 0.36], (0.33, 0.44))
    check = check_targets([sd, ge], FP, Targets())[3]
    assert check["met"] is False and "0.387" in check["measured"]
    older = {k: v for k, v in ge.items() if k != "over_seeds"}
    check = check_targets([sd, older], FP, Targets())[3]
    assert check["met"] is None and "first seed" in check["measured"]
