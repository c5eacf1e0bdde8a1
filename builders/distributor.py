"""Runs shard work units on local worker processes or on a Ray cluster, with a progress bar.

Units cut from the same source shard (one per subset) go to one worker together
(:func:`builders.shard_builder.group_units`), which reads and decodes the source once for all.

Scheduling never changes bytes: every unit is a pure function of the recipe and its id, so the
``multiprocessing`` distributor (one builder per process) and the ``ray`` one (one builder per
actor, for builds at LAION scale across machines) write the same shards. As in img2dataset, Ray
workers write straight to ``out``, which must be a filesystem every node sees. What a Ray worker
raised reaches the caller as it raised it (a file it could not write is one line naming the file, as
from a local worker), not as Ray's wrapper of its remote traceback; an actor that died is one line too.
A node whose package versions are not the command's is refused at its first build: they change bytes.

Local worker processes are forked where the platform can and nothing that dislikes a fork (torch's
thread pools) is loaded: they then start with the parent's builder (its fonts indexed, its source
listed) at once, where a spawned worker spends half a second importing and indexing before its
first sample. Otherwise they are spawned, and each makes its own builder.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from builders.recipe import Recipe
from builders.shard_builder import ShardBuilder, WorkUnit, group_units
from implicit_concept.progress import progress_bar
from implicit_concept.provenance import package_changes, package_versions
from implicit_concept.worker_processes import WorkerLost, end_pool, keeping_signal_handlers, pool_results, start_worker, workers_starting

DISTRIBUTORS = ("multiprocessing", "ray")

_worker: ShardBuilder | None = None


def _init_worker(recipe: Recipe, builder: ShardBuilder | None = None) -> None:
    import cv2

    cv2.setNumThreads(1)
    global _worker
    _worker = builder if builder is not None else ShardBuilder(recipe)


def _init_pool_worker(recipe: Recipe, builder: ShardBuilder | None = None) -> None:
    """A local worker: quiet on Ctrl-C (the parent's pool terminates it), gone with its parent."""
    start_worker()
    _init_worker(recipe, builder)


def _run(args: tuple[tuple[WorkUnit, ...], Path]) -> list[dict[str, Any]]:
    assert _worker is not None
    return _worker.build(*args)


def run_units(
    recipe: Recipe,
    units: list[WorkUnit],
    out: Path,
    workers: int = 1,
    progress: bool = True,
    distributor: str = "multiprocessing",
    ray_address: str | None = None,
    builder: ShardBuilder | None = None,
) -> list[dict[str, Any]]:
    """Build ``units``; returns each unit's stats in completion order (of their groups). ``builder``: one already made
    for ``recipe`` in this process, used here and by forked workers.

    ``workers``: processes for ``multiprocessing``; for ``ray``, builder actors, at most one per CPU (0: one per CPU
    of the cluster). ``ray_address``: an existing cluster ("auto", "ray://head:10001"), or None
    for the one ``ray.init`` finds or starts.
    """
    if distributor not in DISTRIBUTORS:
        raise ValueError(f"distributor {distributor!r}: choose one of {', '.join(DISTRIBUTORS)}")
    start = time.perf_counter()
    bar = progress_bar(total=len(units), unit="shard", progress=progress, desc=recipe.name)
    results: list[dict[str, Any]] = []
    samples = 0
    if units:
        stream = _ray(recipe, units, out, workers, ray_address) if distributor == "ray" else _multiprocessing(recipe, units, out, workers, builder)
        try:
            for group in stream:
                results.extend(group)
                samples += sum(stats["successes"] for stats in group)
                bar.set_postfix(samples=str(samples), samples_per_s=f"{samples / max(time.perf_counter() - start, 1e-9):.0f}")
                bar.update(len(group))
        finally:
            stream.close()  # on an error or interrupt: the workers are stopped before the caller goes on
            bar.close()  # and the bar ends its line before the caller's message
    bar.close()
    return results


def _multiprocessing(
    recipe: Recipe, units: list[WorkUnit], out: Path, workers: int, builder: ShardBuilder | None
) -> Iterator[list[dict[str, Any]]]:
    groups = group_units(units)
    if workers <= 1 or len(groups) <= 1:
        builder = builder if builder is not None else ShardBuilder(recipe)
        for group in groups:
            yield builder.build(group, out)
        return
    fork = "fork" in mp.get_all_start_methods() and "torch" not in sys.modules
    ctx = mp.get_context("fork" if fork else "spawn")
    initargs = (recipe, builder if fork else None)
    with workers_starting():
        pool = ctx.Pool(processes=min(workers, len(groups)), initializer=_init_pool_worker, initargs=initargs)
    try:
        yield from pool_results(pool, _run, [(g, out) for g in groups])
    except WorkerLost as e:
        raise WorkerLost(f"{e}; the shards finished are kept: rerun the same command to resume") from None
    finally:  # as `with pool:`, but a worker that cannot end is killed, not waited for (a shard it was writing is rewritten by the rerun)
        end_pool(pool)


class _RayBuilder:
    """One ShardBuilder per actor: its assets load once, not once per shard. Made at its first build,
    not in ``__init__``: what making it raises (a source this node cannot see, other package versions
    than the command's) then reaches the caller as itself, where Ray folds an ``__init__``'s error
    into the text of an ``ActorDiedError``."""

    def __init__(self, recipe: Recipe, packages: dict[str, str | None]) -> None:
        self.recipe, self.packages = recipe, packages

    def build(self, units: tuple[WorkUnit, ...], out: Path) -> list[dict[str, Any]]:
        if _worker is None:
            _check_node_packages(self.packages)
            _init_worker(self.recipe)
        return _run((units, out))


def _check_node_packages(command: dict[str, str | None]) -> None:
    """A node with other package versions than the command that started the build (whose versions
    ``recipe.json`` and the card credit) is refused: they change bytes (Pillow's JPEG encoder,
    qrcode, numpy), so its shards would not be the ones the recipe and seed name."""
    changes = package_changes(command, package_versions())
    if changes is not None:
        shown, pins = changes
        raise RayNodeVersions(f"Ray node {platform.node()}: other package versions than the build command's ({shown}; "
                              f"'then' is the command's, 'now' the node's); they change bytes, so its shards would differ. "
                              f"Install the command's versions on every node{pins}")


class RayUnavailable(ValueError):
    """Ray is not installed, or no cluster answers at the address given: a usage error, one line."""


class RayNodeVersions(ValueError):
    """A Ray node holds other package versions than the build command: one line naming both."""


class RayWorkerLost(ValueError):
    """A Ray builder actor ended before its shards were done (killed, out of memory, its node gone): one line."""


def _ray(recipe: Recipe, units: list[WorkUnit], out: Path, workers: int, address: str | None) -> Iterator[list[dict[str, Any]]]:
    with restored_after_ray():
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as e:
            raise RayUnavailable("the ray distributor needs Ray: pip install 'implicit-concept[ray]'") from e
        if ray.is_initialized():  # the caller's session: joined, left running
            yield from _ray_build(ray, ActorPool, recipe, units, out, workers)
            return
        try:
            with keeping_signal_handlers():  # Ray's SIGTERM handler would end the command with status 1
                ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
        except ConnectionError as e:  # an OSError: not to be read as a problem of the output folder
            raise RayUnavailable(f"the ray distributor found no Ray cluster to join at {address or 'the default address'} ({e}); "
                                 "start one (ray start --head) or name it with --ray-address; a cluster of token authentication "
                                 "(Ray's default for `ray start`) is joined with RAY_AUTH_MODE=token set, as on its nodes") from None
        except BaseException:  # Ctrl-C while the local cluster starts: what started stops with the command
            _shut_down(ray)
            raise
        try:
            yield from _ray_build(ray, ActorPool, recipe, units, out, workers)
        finally:
            _shut_down(ray)


def _shut_down(ray: Any) -> None:
    """``ray.shutdown``, this process's signal handlers put back after it: Ray 2.60's sets SIGTERM's
    C-level handler to the default while Python still names the command's own, so a SIGTERM after a
    Ray build (writing the card) ended the command silently with -15, not ``terminated``, 143, and a
    lab's Python session lost its own SIGTERM handler."""
    with keeping_signal_handlers():
        ray.shutdown()


def _ray_build(ray: Any, actor_pool: Any, recipe: Recipe, units: list[WorkUnit], out: Path, workers: int) -> Iterator[list[dict[str, Any]]]:
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise RayUnavailable("the Ray cluster has no CPU to run a builder actor on (each takes one); add a node with CPUs")
    # An actor past the cluster's CPUs never starts, and the source shards the pool handed it waited
    # for it for ever: a --workers above them hung the build at its last shards.
    actors = min(workers, cpus) if workers > 0 else cpus
    builder: Callable[..., Any] = ray.remote(num_cpus=1)(_RayBuilder)
    groups = group_units(units)
    packages = package_versions()
    pool = actor_pool([builder.remote(recipe, packages) for _ in range(min(actors, len(groups)))])
    try:
        yield from pool.map_unordered(lambda actor, group: actor.build.remote(group, Path(out).resolve()), groups)
    except Exception as e:
        raised = _raised_by_worker(e)
        if raised is e:
            raise
        raise raised from None


def _raised_by_worker(error: Exception) -> BaseException:
    """What a Ray worker raised, for the caller to see as a local worker's error: ``RayTaskError``'s
    ``str`` is the remote traceback (a wall of lines, with colour codes, on the command's one error
    line, the file's name lost from it), its ``cause`` the exception itself. Ray's other errors (an
    actor dead, a node lost, memory short: ``ActorDiedError``, ``NodeDiedError``, ``OutOfMemoryError``)
    are multi-line reports of Ray's own: their first line, and how to resume."""
    from ray.exceptions import RayError, RayTaskError

    if isinstance(error, RayTaskError):
        return error.cause
    if isinstance(error, RayError):
        first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        return RayWorkerLost(f"a Ray builder actor ended before its shards were written ({type(error).__name__}: {first}; "
                             "killed, out of memory or its node lost?); the shards finished are kept: rerun the same command to resume")
    return error


@contextmanager
def restored_after_ray() -> Iterator[None]:
    """The environment and ``sys.excepthook`` put back after Ray is imported and a session run in the
    block: ``import ray`` sets its excepthook and ``RAY_CLIENT_MODE``, ``ray.init`` points
    ``PYTHONBREAKPOINT`` at Ray's remote debugger (a lab's ``breakpoint()`` after a build waited on a
    socket) and sets ``RAY_*`` variables, and ``shutdown`` leaves them. Its SIGTERM handler is
    :func:`keeping_signal_handlers`' to put back."""
    environ, excepthook = dict(os.environ), sys.excepthook
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.excepthook = excepthook
