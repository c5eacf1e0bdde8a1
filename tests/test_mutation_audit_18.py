"""Tests that kill hand mutants of the newest code (the Ray distributor's actors, launch_size,
stats.recorded, report.num, the every-seed table, scorecard's FID x ICR, disk_space.naming) and of
benchmark/targets.py and benchmark/results_page.py, which no earlier round mutated, that the suite
let pass.

Each case is behaviour a user relies on that no earlier test pinned: a build of few source shards
starts no idle actors, and every actor is handed the command's package versions to check its node
against; an MPI launch's size is read from whichever variable its launcher sets; a record keeps five
decimals; a figure that rounds to 100 prints as 100, and 0.0001 prints as a decimal.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from benchmark.report import num
from benchmark.training import launch_size
from builders.distributor import _ray
from builders.recipe import load_recipe
from implicit_concept.provenance import package_versions
from implicit_concept.scoring import share_ratio
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
