"""Tests that kill hand mutants of the newest code (the Ray distributor's actors, launch_size,
stats.recorded, report.num and the every-seed table, read_json_object_or_none, disk_space.naming and
the writers that hand it their temporary) and of benchmark/targets.py and benchmark/results_page.py,
which no earlier round mutated, that the suite let pass.

Each case is behaviour a user relies on that no earlier test pinned: a build of few source shards
starts no idle actors, and every actor is handed the command's package versions; an MPI launch's
size is read from whichever variable its launcher sets; a record keeps five decimals; 99.96 prints
as 100, 0.0001 as a decimal, a count as itself; every seed any row records gets its own column, in
numeric order; a record cut short reads as none; an error names the file a user knows, not its
hidden temporary; the targets' limits are inclusive, touching intervals are not disjoint, np is
judged either side of sd, recorded values get their rounding's benefit, a seeded row's ICR is the
exact mean of its seeds' counts; a table without closing pipes or followed by text loses nothing.
"""
from __future__ import annotations

import errno
import json
import sys
from fractions import Fraction
from types import SimpleNamespace

import pytest

from benchmark.report import num, pct, results_markdown
from benchmark.results_page import markdown_html
from benchmark.targets import Targets, at_most_ratio, check_targets, exact_icr
from benchmark.training import launch_size
from builders.distributor import _ray
from builders.recipe import load_recipe
from implicit_concept.disk_space import naming
from implicit_concept.files import atomic_write_bytes
from implicit_concept.json_records import read_json_object_or_none
from implicit_concept.provenance import package_versions
from implicit_concept.scoring import share_ratio
from implicit_concept.shard_writer import TarShardWriter
from implicit_concept.stats import RECORDED_DECIMALS, recorded


def _fake_ray(monkeypatch, cpus: float):
    """A Ray whose session is the caller's, with ``cpus`` CPUs; returns the actors made (their arguments)."""
    made: list[tuple] = []
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(
        is_initialized=lambda: True, cluster_resources=lambda: {"CPU": cpus},
        remote=lambda **k: (lambda cls: SimpleNamespace(remote=lambda *args: made.append(args)))))
    monkeypatch.setitem(sys.modules, "ray.util", SimpleNamespace(ActorPool=lambda actors: SimpleNamespace(map_unordered=lambda f, groups: iter(()))))
    return made


def test_a_ray_build_of_few_source_shards_starts_no_more_actors_than_it_has_shards(tmp_path, monkeypatch):
    """Each actor holds a CPU of the cluster: a build of one source shard on 64 CPUs made 64 actors, 63 idle."""
    from builders.shard_builder import ShardBuilder, group_units

    made = _fake_ray(monkeypatch, 64.0)
    units = ShardBuilder(load_recipe("icd-debug")).plan()
    one = list(group_units(units)[0])
    for workers in (0, 8):
        made.clear()
        list(_ray(load_recipe("icd-debug"), one, tmp_path, workers, None))
        assert len(made) == 1, f"--workers {workers}: {len(made)} actors for one source shard"


def test_every_ray_actor_is_handed_the_commands_package_versions(tmp_path, monkeypatch):
    """The node check compares the node with what the command hands its actors: handed nothing (or
    another dict), a node of other versions would be refused or passed by the wrong standard."""
    from builders.shard_builder import ShardBuilder

    made = _fake_ray(monkeypatch, 2.0)
    list(_ray(load_recipe("icd-debug"), ShardBuilder(load_recipe("icd-debug")).plan(), tmp_path, 0, None))
    assert made and all(args[1] == package_versions() for args in made)


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"])
def test_a_launchs_size_is_read_from_whichever_launcher_variable_is_set(monkeypatch, variable):
    """mpirun (Open MPI, MVAPICH, Intel MPI) sets its own variable, not torchrun's WORLD_SIZE: --jobs
    under an MPI launch of 2 was to be refused as under torchrun."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch_size() == 1
    monkeypatch.setenv(variable, "2")
    assert launch_size() == 2


def test_a_record_keeps_five_decimals():
    """results.json's shares hold five decimals (a third is 0.33333): four would print a 0.0% or 100.0%
    boundary share of a few thousand images another way than its counts say."""
    assert RECORDED_DECIMALS == 5 and recorded(1 / 3) == 0.33333
    third = share_ratio([True, False, False], 0.95).to_json()
    assert third["value"] == 0.33333 and third["count"] == 1 and third["n"] == 3


@pytest.mark.parametrize("value, shown", [(99.96, "100"), (-99.96, "-100"), (99.94, "99.9"), (1e-4, "0.000100"), (5e-5, "5.00e-05"), (0.43, "0.430"),
                                          (7, "7"), (1090, "1090"), (None, "–")])
def test_num_shows_a_figure_that_rounds_to_100_as_100_and_one_ten_thousandth_as_a_decimal(value, shown):
    """99.96 to three digits is 100: it showed "100." (the kept-zeros format's point); 0.0001 is the
    smallest share shown as a decimal, not 1.00e-04; a count (an int) as itself, not 7.00."""
    assert num(value) == shown


def test_every_seed_columns_are_each_seed_any_row_records_in_numeric_order():
    """Seeds 2 and 10 of one run beside seeds 0 and 9 of another: the columns are seed 0, 2, 9, 10 (not
    the first row's seeds alone, not its listing order, not 10 before 2 as text), each share under its own."""
    def seeded(method, shares):
        seeds = {seed: {"icr": share_ratio([True] * k + [False] * (10 - k), 0.95).to_json()} for seed, k in shares.items()}
        return {"method": method, "concept": "qrcode", "subset": "icd-mixed", "status": "ok", "seeds": seeds,
                "icr": share_ratio([True] * 5 + [False] * 5, 0.95).to_json()}

    rows = [seeded("sd", {"10": 1, "2": 2}), seeded("ge-full", {"0": 3, "9": 4})]
    md = results_markdown({"name": "r", "track": "tiny", "fp_rate": {}, "rows": rows})
    lines = [line for line in md.split("## Every seed (ICR %)")[1].split("\n## ")[0].splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["method", "concept", "seed 0", "seed 2", "seed 9", "seed 10"]
    for row, line in zip(rows, cells[2:]):
        assert line[2:] == [pct(row["seeds"][s]["icr"]) if s in row["seeds"] else "–" for s in ("0", "2", "9", "10")], line


def test_a_record_not_there_or_not_whole_reads_as_none(tmp_path):
    """A shard's stats, a drawing's record or an export's marker cut short by a kill means "make it
    anew", as a missing one does: none of them stops the rebuild with an error."""
    (tmp_path / "whole.json").write_text('{"successes": 3}')
    (tmp_path / "cut.json").write_text('{"successes": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "folder.json").mkdir()
    assert read_json_object_or_none(tmp_path / "whole.json") == {"successes": 3}
    for name in ("cut.json", "list.json", "folder.json", "missing.json"):
        assert read_json_object_or_none(tmp_path / name) is None, name
    big = {"captions": ["x" * 100] * 2000}  # a record of some hundred KB, far under the JSON bound, is still read
    (tmp_path / "big.json").write_text(json.dumps(big))
    assert read_json_object_or_none(tmp_path / "big.json") == big


def test_naming_renames_only_the_hidden_temporary_or_no_file(tmp_path):
    """The shard a user knows is named where the error names its hidden temporary or no file; an error
    that names some other file (a source read, a lock) keeps that file's name."""
    path, tmp = tmp_path / "00000.tar", tmp_path / ".00000.tar.tmp-1"
    assert naming(OSError(errno.EISDIR, "Is a directory", str(tmp)), path, tmp).filename == str(path)
    assert naming(OSError(errno.ENOSPC, "No space left on device"), path, tmp).filename == str(path)
    other = naming(OSError(errno.EACCES, "Permission denied", str(tmp_path / "source.tar")), path, tmp)
    assert other.filename == str(tmp_path / "source.tar") and other.errno == errno.EACCES
    assert naming(OSError(errno.EISDIR, "Is a directory", str(tmp)), path).filename == str(tmp), "no temporary named: as raised"
    assert isinstance(naming(IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp)), path, tmp), IsADirectoryError)
    bare = OSError("the library's own words")  # no errno: nothing to rebuild it from, kept as raised
    assert naming(bare, path, tmp) is bare and naming(bare, path) is bare

    class QuotaExceeded(OSError):
        """A library's own OSError: callers that catch it by its type still do after the renaming."""

    named = naming(QuotaExceeded(errno.EDQUOT, "Disk quota exceeded"), path, tmp)
    assert type(named) is QuotaExceeded and named.filename == str(path)


def test_a_file_that_cannot_take_its_place_is_named_not_its_temporary(tmp_path):
    """A folder where results.json goes: the error named '.results.json.tmp-...', a file the user never
    made and that is gone by the time they look; it names results.json, and nothing is left beside it."""
    path = tmp_path / "results.json"
    (path / "inner").mkdir(parents=True)
    with pytest.raises(OSError) as raised:
        atomic_write_bytes(path, b"{}")
    assert raised.value.filename == str(path) and ".tmp" not in str(raised.value), str(raised.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def _target_row(method, value, ci, concept="qrcode"):
    return {"concept": concept, "method": method, "status": "ok", "icr": {"value": value, "ci": list(ci)},
            "quality_detail": {"prompt_following": {"mean": {"value": 0.5, "ci": [0.45, 0.55]}}}}


def test_a_claim_measured_exactly_at_its_limit_is_met():
    """The tiny track's limits are inclusive ("at least 25%", "at most 5%"): a measured share equal
    to its limit is met, not failed, whichever claim it is."""
    targets = Targets(sd_min_icr=0.25, oracle_max_above_fp=0.05, base_max_icr=0.05, named_base_min_icr=0.5)
    rows = [_target_row("sd", 0.25, (0.2, 0.3)), _target_row("ge-full", 0.05, (0.02, 0.1)),
            _target_row("oracle", 0.05, (0.03, 0.07)), _target_row("base", 0.05, (0.03, 0.07))]
    checks = {c["target"].split()[0] + (" named" if "naming" in c["target"] else ""): c
              for c in check_targets(rows, {"qrcode": {"value": 0.0}}, targets,
                                   {"qrcode": {"icr": {"value": 0.5, "ci": [0.45, 0.55]}}})}
    for name in ("sd", "oracle", "base", "base named"):
        assert checks[name]["met"] is True, checks[name]
    assert checks["sd"]["measured"] == "sd 25.0%", "a share at its limit printed as the limit, not to six digits"


def test_intervals_that_touch_are_not_disjoint():
    """ge-full's interval ending where sd's begins shares that point: the removal claim asks for intervals
    apart, so it is not met however low the ratio."""
    rows = [_target_row("sd", 0.60, (0.30, 0.90)), _target_row("ge-full", 0.10, (0.0, 0.30))]
    assert check_targets(rows, {}, Targets())[1]["met"] is False
    rows[1]["icr"]["ci"][1] = 0.29
    assert check_targets(rows, {}, Targets())[1]["met"] is True


def test_np_is_judged_by_its_distance_from_sd_either_side():
    """np far above sd is as far from "within 5 points" as np far below it."""
    for np_value in (0.30, 0.50):
        rows = [_target_row("sd", 0.40, (0.33, 0.47)), _target_row("np", np_value, (np_value - 0.05, np_value + 0.05))]
        check = [c for c in check_targets(rows, {}, Targets(np_max_gap=0.05)) if c["target"].startswith("np")][0]
        assert check["met"] is False, np_value


def test_recorded_values_without_counts_are_given_their_roundings_benefit_on_both_sides():
    """A results.json that records values only: ge-full's 0.16667 is a sixth rounded up, so at most a
    third of sd's 0.5; and 0.100006 is within what sd's 0.3 (0.299995 to 0.300005) allows of a third."""
    def recorded_only(value):
        return {"icr": {"value": value, "ci": [0.0, 1.0]}}

    assert at_most_ratio(recorded_only(0.16667), recorded_only(0.5), "1/3")
    assert at_most_ratio(recorded_only(0.100006), recorded_only(0.3), "1/3")
    assert not at_most_ratio(recorded_only(0.10001), recorded_only(0.3), "1/3")


def test_a_shard_whose_temporary_cannot_be_opened_names_the_shard(tmp_path):
    """A file where the shard's folder goes: the error named '.00000.tar.tmp-...', not the shard."""
    (tmp_path / "train").write_text("not a folder")
    path = tmp_path / "train" / "00000.tar"
    with pytest.raises(OSError) as raised:
        TarShardWriter(path)
    assert raised.value.filename == str(path) and ".tmp" not in str(raised.value), str(raised.value)


def test_a_seeded_rows_exact_icr_is_the_mean_of_its_seeds_counts_and_a_seed_of_no_images_falls_back():
    """Two seeds of 1/4 and 2/4 are 3/8 exactly (compared against a row of one seed, a mean over the
    wrong number of seeds flips the claim); a seed that recorded n = 0 cannot be a count, so the row's
    recorded value stands in, with its rounding's tolerance, instead of a ZeroDivisionError."""
    def seeded(*counts):
        return {"icr": {"value": 0.375, "ci": [0.1, 0.7]}, "seeds": {str(i): {"icr": {"count": c, "n": n}} for i, (c, n) in enumerate(counts)}}

    assert exact_icr(seeded((1, 4), (2, 4))) == (Fraction(3, 8), 0)
    assert exact_icr(seeded((1, 4), (2, 4), (0, 4))) == (Fraction(1, 4), 0)
    assert exact_icr(seeded((1, 4), (0, 0))) == (Fraction(3, 8), Fraction(1, 200_000))


def test_an_integer_ratio_bound_is_exact_and_a_bool_is_no_bound():
    """removal_max_ratio = 1 means at most sd's share, exactly (a decimal's slack is for decimals):
    10001 of 100000 images is more than 10000 of 100000. A bool (sd_min_icr = true in a TOML) is refused."""
    def counted(count):
        return {"icr": {"value": count / 100_000, "ci": [0.0, 1.0], "count": count, "n": 100_000}}

    assert at_most_ratio(counted(10_000), counted(10_000), 1) and not at_most_ratio(counted(10_001), counted(10_000), 1)
    with pytest.raises(ValueError, match="sd_min_icr must be a number"):
        Targets(sd_min_icr=True)


def test_a_failed_row_is_not_run_and_a_first_seed_only_row_beside_a_missing_method_is_not_run():
    """A method whose row failed measured nothing; prompt following of a removal method that did not
    run is "not run", whatever sd's row records."""
    failed = {**_target_row("sd", 0.9, (0.8, 0.95)), "status": "failed"}
    checks = check_targets([failed, _target_row("ge-full", 0.05, (0.02, 0.1))], {}, Targets())
    assert checks[0]["measured"] == "not run" and checks[0]["met"] is None
    first_seed_only = {**_target_row("sd", 0.4, (0.3, 0.5)), "seeds": {"0": {}, "1": {}}}
    following = check_targets([first_seed_only], {}, Targets())[3]
    assert following["measured"] == "not run" and following["met"] is None


def test_a_table_without_its_closing_pipes_or_with_text_right_after_it_loses_nothing():
    """GitHub's Markdown takes a row without its last ``|`` and a paragraph straight after a table:
    the page dropped the row's last cell and the paragraph."""
    page = markdown_html("| a | b\n|---|---|\n| 1 | 2\nafter the table")
    assert "<th>a</th><th>b</th>" in page and "<td>1</td><td>2</td>" in page, page
    assert page.endswith("<p>after the table</p>"), page


def test_a_table_cell_with_nul_bytes_and_an_escape_in_code_is_shown_as_written():
    """results_page p6/p7: a method name holding NUL-delimited digits (the page's own placeholders) is
    text, not another cell's code span; an escaped pipe inside a code span is the pipe, not a
    placeholder left in the page."""
    page = markdown_html("| m | v |\n|---|---|\n| `a\\|b` | x\x000\x00 `c` |")
    assert "<td><code>a|b</code></td><td>x 0  <code>c</code></td>" in page
    assert "\x00" not in page
