"""Every number a reader sees is the number results.json (or summary.json) records: the report's
tables, the results page, the leaderboard, the ICR plot's bars and error bars, the targets and the
score table. The inputs are built here through the project's own writers (``share_ratio``,
``_over_seeds``, ``check_targets``, ``atomic_write_json``) with values that show a slip: 0.5% beside
0.49%, a share that is 0.0495% before its recorded rounding, 100%, 0 of n, a method with no row for
a concept, an interval that crosses the removal target's."""
import json
import re
from pathlib import Path

import matplotlib.container
import matplotlib.figure
import numpy as np
import pytest

from benchmark.leaderboard import leaderboard
from benchmark.protocol import _over_seeds
from benchmark.report import num, paper_icr, plot_icr, results_markdown
from benchmark.results_file import read_results
from benchmark.results_page import _cells, results_page
from benchmark.targets import Targets, check_targets
from implicit_concept.files import atomic_write_json
from implicit_concept.scoring import CheckerScore, ConceptScore, ScoreConfig, ScoreReport, share_ratio
from implicit_concept.stats import crossed_share
from tests.real_runs import real_run

CONCEPTS = ("qrcode", "watermark", "text")
N = 200
#: Images each concept is flagged in, per method (and per training seed for ``sd``): 1 of 200 is 0.5%,
#: 200 of 200 is 100%, 0 of 200 is 0.0 [0.0, 1.8]; ``np`` has no row for text.
COUNTS = {
    "base": {"qrcode": 0, "watermark": 0, "text": 0},
    "sd": {"qrcode": (40, 37, 43), "watermark": (200, 200, 200), "text": (1, 2, 0)},
    "np": {"qrcode": 71, "watermark": 1},
    "ge-full": {"qrcode": 2, "watermark": 199, "text": 0},
    "oracle": {"qrcode": 1, "watermark": 0, "text": 3},
}
RUN = real_run(Path("run"), {"seed": 0}, jobs=1)


class Flags:
    """A score report's flags per concept (what ``_over_seeds`` reads of a seed's report)."""

    def __init__(self, counts):
        self.counts = counts

    def flags(self, concept):
        k = self.counts[concept]
        return [True] * k + [False] * (N - k)


def _row(method, concept, k):
    return {"method": method, "concept": concept, "subset": "icd-mixed", "status": "ok",
            "icr": share_ratio([True] * k + [False] * (N - k), 0.95).to_json(), "quality": {"prompt_following": 0.4}}


def _rows():
    rows = []
    for method, counts in COUNTS.items():
        if method == "sd":
            evaluated = [(seed, ([_row("sd", c, counts[c][seed]) for c in counts], Flags({c: counts[c][seed] for c in counts})))
                         for seed in range(3)]
            rows += _over_seeds(RUN, evaluated)
        else:
            rows += [_row(method, c, k) for c, k in counts.items()]
    return rows


def _write_run(root, name="a"):
    rows = _rows()
    fp = {c: share_ratio([True] * k + [False] * (500 - k), 0.95).to_json() for c, k in zip(CONCEPTS, (0, 1, 500))}
    checks = check_targets(rows, fp, Targets())
    results = {"name": name, "track": "tiny", "rows": rows, "fp_rate": fp, "config": {"track_sha256": "t"},
               "detector": {"sha256": "d", "thresholds": {c: 0.25 for c in CONCEPTS}}, "seeds": {"track": 0, "evaluation_prompts": "p"},
               "targets": {"config": Targets().to_dict(), "checks": checks}}
    folder = root / name
    folder.mkdir()
    atomic_write_json(folder / "results.json", results)
    return folder


def _percent(text):
    """``'18.8 [14.5, 23.5]'`` (a cell, with or without the paper's number after it) as three floats."""
    m = re.fullmatch(r"(\d+\.\d) \[(\d+\.\d), (\d+\.\d)\](?: \((\d+\.\d+)\))?", text)
    assert m, f"not a share with its interval: {text!r}"
    return tuple(float(g) for g in m.groups()[:3])


def _shown(ratio):
    """A recorded share as the reader must see it: its recorded value in percent to one decimal."""
    return tuple(round(100 * v, 1) for v in (ratio["value"], *ratio["ci"]))


def _table(md, heading):
    block = md.split(heading)[1].split("\n## ")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    head = _cells(lines[0])
    return head, [_cells(line) for line in lines[2:]]


def test_every_cell_of_the_icr_tables_is_its_methods_recorded_share_in_its_concepts_column(tmp_path):
    results = read_results(_write_run(tmp_path))
    md = results_markdown(results)
    by_key = {(r["method"], r["concept"]): r for r in results["rows"]}
    head, body = _table(md, "## Implicit concept ratio")
    assert head == ["method", *CONCEPTS]
    seen = set()
    for cells in body:
        method = cells[0].removesuffix(" (3 seeds)")
        for concept, text in zip(CONCEPTS, cells[1:]):
            if method.startswith("detector FP"):
                assert _percent(text) == pytest.approx(_shown(results["fp_rate"][concept]), abs=1e-9)
                continue
            row = by_key.get((method, concept))
            paper = paper_icr().get(concept, {}).get(method)
            if row is None:  # no share of ours, the paper's own number beside the dash
                assert text == "–" + (f" ({paper:.1f})" if paper is not None else ""), (method, concept)
                continue
            point, low, high = _percent(text)
            assert (point, low, high) == pytest.approx(_shown(row["icr"]), abs=1e-9), (method, concept, text)
            assert low <= point <= high
            assert text.endswith(f" ({paper:.1f})") if paper is not None else "(" not in text, (method, concept, text)
            seen.add((method, concept))
    assert seen == set(by_key)
    assert "| sd (3 seeds) | 20.0 [" in md and " | 100.0 [99.4, 100.0] (30.4) |" in md, "100% and the paper's watermark sd"
    assert "| np | 35.5 [28.9, 42.6] (59.6) | 0.5 [0.0, 2.8] (27.7) | – (65.6) |" in md, "a concept with no row is a dash, not another's number"

    seed_head, seed_body = _table(md, "## Every seed (ICR %)")
    assert seed_head == ["method", "concept", "seed 0", "seed 1", "seed 2"]
    for method, concept, *cells in seed_body:
        for seed, text in zip("012", cells):
            assert _percent(text) == pytest.approx(_shown(by_key[(method, concept)]["seeds"][seed]["icr"]), abs=1e-9)


def test_the_results_page_shows_the_reports_numbers(tmp_path):
    folder = _write_run(tmp_path)
    results = read_results(folder)
    page = results_page(results, folder)
    for row in results["rows"]:
        point, low, high = _shown(row["icr"])
        assert f"{point:.1f} [{low:.1f}, {high:.1f}]" in page


def test_the_plots_bars_and_error_bars_are_the_recorded_shares_under_their_methods_names(tmp_path, monkeypatch):
    """Read back from the figure's artists: each concept's panel, each bar's height, its error bar's
    ends and the label under it, and the FP rate's line."""
    figures = []
    savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig), savefig(fig, *a, **k))[1])
    results = read_results(_write_run(tmp_path))
    plot_icr(results, tmp_path / "icr.png")
    (fig,) = figures
    by_key = {(r["method"], r["concept"]): r for r in results["rows"]}
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == list(CONCEPTS)
    for ax, concept in zip(axes, CONCEPTS):
        labels = [t.get_text() for t in ax.get_xticklabels()]
        methods = [m for m in COUNTS if concept in COUNTS[m]]
        assert labels == [m + (" (mean of 3 seeds)" if m == "sd" else "") for m in methods]
        (bars,) = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
        segments = bars.errorbar.lines[2][0].get_segments()
        for method, patch, segment in zip(methods, bars.patches, segments):
            icr = by_key[(method, concept)]["icr"]
            assert patch.get_height() == pytest.approx(100 * icr["value"], abs=1e-9)
            assert [y for _, y in segment] == pytest.approx([100 * icr["ci"][0], 100 * icr["ci"][1]], abs=1e-9)
        fp = results["fp_rate"][concept]["value"]
        lines = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert lines == ([pytest.approx(100 * fp)] if fp > 0 else [])


def test_the_leaderboard_shows_each_recorded_share_ranks_by_mean_and_lists_the_incomplete_and_controls_after(tmp_path):
    folder = _write_run(tmp_path)
    results = read_results(folder)
    md = leaderboard([folder]).markdown
    head, body = _table(md, "# Leaderboard")
    assert head == ["run", "method", *(f"{c} ICR %" for c in CONCEPTS), "mean ICR %"]
    by_key = {(r["method"], r["concept"]): r for r in results["rows"]}
    means = {}
    for _, label, *cells, mean in body:
        method = label.removesuffix(" (control, not ranked)")
        for concept, text in zip(CONCEPTS, cells):
            row = by_key.get((method, concept))
            assert text == "not run" if row is None else _percent(text) == pytest.approx(_shown(row["icr"]), abs=1e-9)
        if mean != "incomplete":
            means[method] = float(mean)
            expected = sum(by_key[(method, c)]["icr"]["value"] for c in CONCEPTS) / 3
            assert float(mean) == round(100 * expected, 1)
    assert [cells[1] for cells in body] == ["ge-full", "sd", "np", "base (control, not ranked)", "oracle (control, not ranked)"]
    ranked = [m for m in means if m not in ("base", "oracle")]
    assert [means[m] for m in ranked] == sorted(means[m] for m in ranked), "ranked by mean ICR, lowest first"
    assert "ranked by their mean ICR over the concepts, lowest first" in md, "the board says which way it ranks"


def test_the_targets_judge_the_removal_on_disjoint_intervals_and_print_the_recorded_numbers(tmp_path):
    """QR: ge-full's 1.0% is under a third of sd's 20.0% and the intervals are apart: met. Text:
    ge-full's 0 of 200 is under a third of sd's 0.5%, but its interval [0.0, 1.8] crosses sd's: not
    met, as the README says the removal is judged (a third, with disjoint intervals). Each claim
    prints the recorded numbers."""
    results = read_results(_write_run(tmp_path))
    by_key = {(r["method"], r["concept"]): r for r in results["rows"]}
    checks = {(c["concept"], c["target"].split(" ")[0] + " " + c["target"].split(" ")[1]): c for c in results["targets"]["checks"]}
    qr = checks[("qrcode", "ge-full ICR")]
    assert qr["met"] is True
    ge, sd = by_key[("ge-full", "qrcode")]["icr"], by_key[("sd", "qrcode")]["icr"]
    assert f"ge-full {100 * ge['value']:.1f}% (2/200) [{100 * ge['ci'][0]:.1f}, {100 * ge['ci'][1]:.1f}]" in qr["measured"]
    assert f"vs sd {100 * sd['value']:.1f}% (120/600, 3 seeds) [{100 * sd['ci'][0]:.1f}, {100 * sd['ci'][1]:.1f}]" in qr["measured"]
    watermark = checks[("watermark", "ge-full ICR")]
    assert watermark["met"] is False and "sd 100.0% (600/600, 3 seeds) [" in watermark["measured"]
    text = checks[("text", "ge-full ICR")]
    assert text["met"] is False, "0 of 200 against sd's 0.5%: intervals overlap"
    sd_min = checks[("qrcode", "sd ICR")]
    assert sd_min["met"] is False and sd_min["measured"].startswith("sd 20.0% (120/600, 3 seeds)")
    oracle = checks[("text", "oracle within")]
    assert oracle["met"] is True and oracle["measured"] == "oracle 1.5% vs FP 100.0%"


@pytest.mark.parametrize("k, n", [(1, 2020), (2, 4040), (1, 200), (200, 200), (0, 200), (1, 3)])
def test_the_score_table_prints_the_shares_and_agreement_its_record_holds(k, n):
    """1 of 2020 images is 0.0495%, recorded as 0.0005: the score table (printed by ``score``, and
    kept in summary.json as ``table`` by ``score-pipeline``) said 0.0% where the record, and so the
    leaderboard built from summary.json, say 0.1%. The checker's agreement likewise."""
    ratio = share_ratio([True] * k + [False] * (n - k), 0.95)
    fp = share_ratio([True] * k + [False] * (2 * n - k), 0.95)
    report = ScoreReport(config=ScoreConfig(), thresholds={"qrcode": 0.25}, detector={}, clean_source="", clean_images=2 * n,
                         concepts={"qrcode": ConceptScore("qrcode", ratio, fp)},
                         crosschecks=[CheckerScore("qr-decode", "qrcode", ratio, 1 / 2020)], skipped_checkers={}, images=[])
    record = report.to_json()
    detector_line, checker_line = report.table().splitlines()[2:4]
    shares = [float(x) for x in re.findall(r"\d+\.\d", detector_line)]
    assert shares == [*_shown(record["concepts"]["qrcode"]["icr"]), *_shown(record["concepts"]["qrcode"]["fp_rate_clean"])]
    agreement = record["crosschecks"][0]["agreement_with_detector"]
    assert checker_line.endswith(f" {round(100 * agreement, 1):.1f}%") and agreement == 0.0005, checker_line
    mean = crossed_share([[True] + [False] * 2019], resamples=100)
    value, (low, high) = mean.to_json()["value"], mean.to_json()["ci"]
    assert str(mean) == f"{value:.3f} [{low:.3f}, {high:.3f}]" == "0.001 [0.000, 0.003]", "a mean as recorded (0.0005), not 0.000495"


@pytest.mark.parametrize("sd_follow, ge_follow", [(0.43, 0.401), (0.0456, 0.0049), (0.36, 0.5)])
def test_prompt_following_is_rounded_one_way_in_the_quality_table_and_the_targets(sd_follow, ge_follow):
    """The quality table printed 3 significant digits without trailing zeros (sd's 0.43 [0.36, 0.5]),
    the targets 3 decimals (0.430 [0.360, 0.500]), so one recorded figure read two ways; 0.0049 was
    0.0049 in one and 0.005 in the other."""
    def row(method, follow):
        mean = {"value": follow, "ci": [round(follow * 0.8, 5), round(min(1.0, follow * 1.2), 5)], "level": 0.95}
        return {**_row(method, "qrcode", 20), "quality": {"prompt_following": follow},
                "quality_detail": {"prompt_following": {"mean": mean}}}

    rows = [row("sd", sd_follow), row("ge-full", ge_follow)]
    (check,) = [c for c in check_targets(rows, {}, Targets()) if "prompt following" in c["target"]]
    md = results_markdown({"name": "r", "track": "tiny", "fp_rate": {}, "rows": rows,
                           "targets": {"checks": [check]}})
    _, body = _table(md, "## Quality")
    shown = {cells[1]: cells[2] for cells in body}
    assert check["measured"] == f"ge-full {shown['ge-full'].split(' [')[0]} vs sd {shown['sd']}", (check["measured"], shown)


def test_each_seeds_share_stands_under_its_own_seeds_column():
    """The every-seed table took its columns from the first seeded row and filled each row's cells in
    its own order: a row with seeds 0 and 2 (a results.json merged from two runs) showed seed 2's
    share under "seed 1"."""
    def seeded(method, shares):
        seeds = {seed: {"icr": share_ratio([True] * k + [False] * (N - k), 0.95).to_json()} for seed, k in shares.items()}
        return {**_row(method, "qrcode", 10), "seeds": seeds}

    rows = [seeded("sd", {"0": 10, "1": 20, "2": 30}), seeded("ge-full", {"0": 1, "2": 3}), seeded("oracle", {"2": 0, "0": 2, "1": 4})]
    md = results_markdown({"name": "r", "track": "tiny", "fp_rate": {}, "rows": rows})
    head, body = _table(md, "## Every seed (ICR %)")
    assert head == ["method", "concept", "seed 0", "seed 1", "seed 2"]
    for row, (method, _, *cells) in zip(rows, body):
        assert method == row["method"] and len(cells) == 3
        for seed, text in zip(("0", "1", "2"), cells):
            ratio = row["seeds"].get(seed)
            assert text == "–" if ratio is None else _percent(text) == pytest.approx(_shown(ratio["icr"]), abs=1e-9), (method, seed, text)


def _parameters(path):
    """The number of values a safetensors file holds, from its header alone."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(int(np.prod(t["shape"])) for name, t in header.items() if name != "__metadata__")


REFERENCE = Path(__file__).resolve().parents[1] / "benchmark" / "reference" / "tiny"
PUBLISHED = REFERENCE.parents[1] / "published" / "detector-tiny"


def test_the_readmes_prose_quotes_the_reference_run_and_the_published_evaluator_as_recorded():
    """Each figure the README's tiny-track section quotes, remade from the records it quotes
    (the reference run's results.json, the evaluator's metrics.json, paper_numbers.toml) in the
    tables' rounding: a rerun not copied in, or a figure typed by hand, fails. Also: the targets
    results.json holds are what today's code makes of its rows."""
    readme = (REFERENCE.parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## The tiny track\n")[1].split("\n## ")[0]
    said = " ".join(section.split())  # the README wraps its lines anywhere
    results = read_results(REFERENCE)
    row = {(r["method"], r["concept"]): r for r in results["rows"]}

    def p(method, concept, seed=None):
        icr = row[(method, concept)]["icr"] if seed is None else row[(method, concept)]["seeds"][seed]["icr"]
        return f"{100 * icr['value']:.1f}"

    def with_ci(method, concept):
        icr = row[(method, concept)]["icr"]
        return f"{p(method, concept)}% [{100 * icr['ci'][0]:.1f}, {100 * icr['ci'][1]:.1f}]"

    def seeds(method, concept):
        return " / ".join(p(method, concept, s) for s in ("0", "1", "2"))

    follow = {m: row[(m, "qrcode")]["quality_detail"]["prompt_following"]["mean"] for m in ("sd", "ge-full")}
    fid = {m: f"{row[(m, 'qrcode')]['quality']['scene_fid']:.0f}" for m in ("sd", "np", "sld")}
    metrics = json.loads((PUBLISHED / "metrics.json").read_text())
    per_class = metrics["test_split"]["per_class"]
    recall = metrics["at_thresholds"]["image_recall"]["test"]
    flagged = metrics["at_thresholds"]["fp_rate"]
    named = results["named_base"]
    removal = paper_icr("model_removal")["watermark"]
    (base,) = (REFERENCE.parents[1] / "published").glob("base-*")
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    assert f"(safetensors and JSON with their sha256; the base in fp16, {size / 1e6:.0f} MB)" in " ".join(readme.split())
    quoted = [
        f"`oracle` is within {p('oracle', 'watermark')} points of it",
        f"`sd` draws QR codes in {p('sd', 'qrcode')}% of images (seeds {seeds('sd', 'qrcode')}), text in {p('sd', 'text')}% "
        f"({seeds('sd', 'text')}) and watermarks in {p('sd', 'watermark')}%",
        f"`ge-full` draws them in {with_ci('ge-full', 'qrcode')} (seeds {seeds('ge-full', 'qrcode')}): about a quarter of `sd`'s "
        f"{with_ci('sd', 'qrcode')}",
        f"`ge-full` draws text in {with_ci('ge-full', 'text')} (seeds {seeds('ge-full', 'text')}), a ninth of `sd`'s {p('sd', 'text')}%",
        f"`ge-detector` (boxes from our YOLO) gives {p('ge-detector', 'qrcode')}% on QR and {p('ge-detector', 'text')}% on text",
        f"Prompt following is {num(follow['ge-full']['value'])} for `ge-full` (mean of 3 seeds), within `sd`'s "
        f"{num(follow['sd']['value'])} [{num(follow['sd']['ci'][0])}, {num(follow['sd']['ci'][1])}]",
        f"(QR {p('sd', 'qrcode', '0')}%, text {p('sd', 'text', '0')}%), QR / text: "
        + ", ".join(f"`{m}` {p(m, 'qrcode')} / {p(m, 'text')}" for m in ("np", "esd", "sld", "fmn")),
        f"(scene-FID {fid['np']} and {fid['sld']}, against `sd`'s {fid['sd']})",
        f"gives QR {p('ge-model-removal', 'qrcode')}% and text {p('ge-model-removal', 'text')}%, against `sd` seed 0's "
        f"{p('sd', 'qrcode', '0')} and {p('sd', 'text', '0')}",
        f"(watermark {removal['sd']:.1f} -> {removal['ge-model-removal']:.1f})",
        f"(`ge-name`) gives {p('ge-name', 'qrcode')}%, and location tokens added (`ge-geometry`) {p('ge-geometry', 'qrcode')}%",
        f"(`ge-full`) gives {p('ge-full', 'qrcode')}% over three seeds ({p('ge-full', 'qrcode', '0')}% for seed 0)",
        f"no boxes) gives {p('ge-classifier', 'qrcode')}%",
        f"IoU 0.5 and 0.4 give {p('ge-noisy-0.5', 'qrcode')}% and {p('ge-noisy-0.4', 'qrcode')}%",
        f"overlap; watermark: {p('ge-full', 'watermark')} against {p('sd', 'watermark')})",
        f"mAP50 on the unseen-asset test split: qrcode {per_class['qrcode']['map50']:.3f}, watermark {per_class['watermark']['map50']:.3f} "
        f"(the target is 0.9: not met), text {per_class['text']['map50']:.3f}",
        "image-level recall " + " / ".join(f"{recall[c]['value']:.2f}" for c in CONCEPTS),
        f"{flagged['calibration']['any']['count']} of {flagged['calibration']['any']['n']} generated images and "
        f"{flagged['test_clean']['any']['count']} of {flagged['test_clean']['any']['n']} clean test images are flagged",
        f"the validation split's {flagged['validation_clean']['any']['n']} clean images",
        f"({metrics['timing_s']['train'] / 60:.0f} min at {metrics['scale']['threads']} thread)",
        f"{metrics['scale']['epochs']} epochs at {metrics['scale']['imgsz']} px",
        f"Asked on {named['qrcode']['n_prompts']} held-out train captions",
        f"a {_parameters(base / 'unet.safetensors') / 1e6:.1f}M-parameter UNet",
        "draws it in " + ", ".join(f"{100 * named[c]['icr']['value']:.0f}% ({c})" for c in CONCEPTS[:2])
        + f" and {100 * named['text']['icr']['value']:.0f}% (text)",
    ]
    assert [q for q in quoted if q not in said] == []
    checks = results["targets"]["checks"]
    assert checks == check_targets(results["rows"], results["fp_rate"], Targets.from_dict(results["targets"]["config"]), named)
    # "met for all three concepts: oracle ..., ge-full's prompt following ..., and base <= 5%; met for QR only: ge-full
    # <= a third of sd ...; not met: sd >= 25% and the named-prompt base >= 50%, for all three"
    met = {}
    for c in checks:
        met.setdefault(c["target"], []).append(c["met"])
    assert met == {"oracle within 5 points of the detector FP rate": [True] * 3,
                   "ge-full prompt following no worse than sd's interval": [True] * 3,
                   "base ICR <= 5.0% (false positives on generated images)": [True] * 3,
                   "ge-full ICR <= 0.3333 x sd, intervals disjoint": [True, False, False],
                   "sd ICR >= 25.0%": [False] * 3, "base ICR >= 50.0% on prompts naming it": [False] * 3}
    assert "- met for QR only: `ge-full` <= a third of `sd` with disjoint intervals" in section


@pytest.mark.parametrize("thresholds", [{"qrcode": 0.4137, "watermark": 0.25, "text": 0.9999}, dict.fromkeys(CONCEPTS, 0.12345)])
def test_the_thresholds_are_printed_as_recorded_in_the_report_and_the_score_table(thresholds):
    """Calibration steps thresholds on a 0.0001 grid and a track's ``conf`` may be any number in
    [0.01, 1): results.md printed 3 significant digits (0.4137 as 0.414, 0.9999 as 1), the score
    table 4 (0.12345 as 0.1235), so neither always said the threshold the shares were counted at."""
    md = results_markdown({"name": "r", "track": "tiny", "fp_rate": {}, "rows": [],
                           "detector": {"sha256": "d", "thresholds": thresholds}})
    ratio = share_ratio([True, False], 0.95)
    report = ScoreReport(config=ScoreConfig(), thresholds=thresholds, detector={}, clean_source="", clean_images=2,
                         concepts={c: ConceptScore(c, ratio, ratio) for c in CONCEPTS}, crosschecks=[], skipped_checkers={}, images=[])
    said = ", ".join(f"{c} {repr(t)}" for c, t in thresholds.items())
    assert f"Confidence thresholds: {said}." in md
    assert f"thresholds (the detector's): {said};" in report.table()


def test_fid_x_icr_is_the_product_of_the_fid_and_the_icr_its_row_records(monkeypatch):
    """1 of 2020 images (0.0495%) is recorded as an ICR of 0.0005: the product was taken with the
    unrounded share (FID 1000 x 4.95 = 49.5) where the row beside it says 1000 and 0.05%, 50.0."""
    import benchmark.evaluation.scorecard as scorecard

    ratio = share_ratio([True] + [False] * 2019, 0.95)
    report = ScoreReport(config=ScoreConfig(), thresholds={"qrcode": 0.25}, detector={}, clean_source="", clean_images=1,
                         concepts={"qrcode": ConceptScore("qrcode", ratio, ratio)}, crosschecks=[], skipped_checkers={}, images=[])
    monkeypatch.setattr(scorecard, "score_images", lambda *a, **k: report)
    monkeypatch.setattr(scorecard, "quality_scores", lambda *a, **k: {"quality": {"scene_fid": 1000.0}, "quality_kinds": ["scene-FID"]})
    _, rows = scorecard.score_generated([], [], None, ScoreConfig(), {}, [], Path("unused"))
    row = rows["qrcode"]
    assert row["fid_x_icr"] == pytest.approx(row["quality"]["scene_fid"] * 100 * row["icr"]["value"]) == 50.0
    md = results_markdown({"name": "r", "track": "tiny", "fp_rate": {}, "rows": [{**row, "method": "sd", "concept": "qrcode", "status": "ok"}]})
    assert "| qrcode | sd | 1000 | 50.0 |" in md


def test_a_share_of_no_images_is_never_printed(tmp_path):
    """A concept with no images has no share: the scorer refuses to make one, and a NaN written by
    another tool (the writer turns it into null) is refused by every reader in one line naming the
    file and the row, rather than printed as nan% or ranked."""
    with pytest.raises(ValueError, match="no images to compute a ratio over"):
        share_ratio([], 0.95)
    nan = {"value": float("nan"), "ci": [float("nan"), float("nan")], "count": 0, "n": 0}
    folder = tmp_path / "r"
    folder.mkdir()
    atomic_write_json(folder / "results.json", {"name": "r", "track": "tiny", "fp_rate": {},
                                                "rows": [{**_row("sd", "qrcode", 0), "icr": nan}]})
    with pytest.raises(ValueError, match=r"results.json: rows\[0\].icr: not a ratio .* \(sd, qrcode\)$"):
        read_results(folder)
    with pytest.raises(ValueError, match=r"results.json: rows\[0\].icr: not a ratio"):
        leaderboard([folder])
