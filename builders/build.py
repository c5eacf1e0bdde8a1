"""Builds a whole dataset from a recipe: plan, skip finished shards, run the rest, write the card.

Resumable: a rerun after a kill skips shards whose files all check out (the stats file is this
shard's, and its tar and parquet still have the sha256s it records), rebuilds the rest from
scratch, and produces the same bytes as a build that never stopped; the manifest and card are
written only from shards that check out. An output folder remembers the recipe that made it, and what its source and screen
held when the build started (``recipe.json``), and refuses to mix in shards of another recipe or
items of a source that has changed since.

Every problem with ``--out`` (a file, below a file, not writable, a folder of other files or
inside the source folder, a ``recipe.json`` that is not a build record) is one :class:`BuildError`
line naming the folder or file, whichever process met it; a build that made no sample at all is one too.
One build at a time writes into a folder: a second waits for the first, then finds its shards
finished (two benchmarks share one data folder, so waiting is what lets the second go on).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from builders.dataset_card import write_dataset_card
from builders.distributor import run_units
from builders.recipe import Recipe, hashed_with_paths, portable_source, relative_source
from builders.shard_builder import ShardBuilder, is_complete, parquet_path, plan_record, shard_dir, shard_problem, stats_path
from builders.shard_table import SCHEMA, parquet_bytes, table_metadata
from builders.source_screen import detector_fingerprint
from implicit_concept.disk_space import space_message
from implicit_concept.file_locks import LocksUnavailable, locked
from implicit_concept.files import TEMPORARY_MARK, FolderClaimError, claim, visible_entries, within, write_unless_same
from implicit_concept.json_records import MISSING, json_changes, json_text, read_json_object, read_json_object_or_none
from implicit_concept.provenance import environment, package_changes
from implicit_concept.shard_reader import DATASET_RECORD
from implicit_concept.utf8_paths import shown_path, utf8_path_problem

RECIPE_RECORD = DATASET_RECORD
MANIFEST = "manifest.parquet"
#: The option that names the output folder, in refusals: the builder's --out is the benchmark's --data
#: (its dataset is DATA/RECIPE), and the same refusals reach both.
OUT = "--out (the benchmark's --data)"
#: What of ``recipe.json`` a resume must find unchanged.
CLAIMED = ("recipe_sha256", "source_fingerprint", "screen_detector")
#: Where a source of local files lies, relative to the dataset's folder (not claimed: a source moved
#: whole, its fingerprint the same, resumes).
SOURCE_LOCATION = "source_location"


class BuildError(ValueError):
    """A build cannot run or made nothing; the message names the folder and what to do."""


@dataclass
class SourceSummary:
    """The build's source items, each counted once whatever the number of subsets that read it
    (and of splits, for a tar that fails as a whole): how many, how many became samples (in at
    least one subset), and why each of the others was skipped (its first row's reason), so that
    ``items == used + sum(skipped.values())``. What the screens found is per item too."""

    items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    caption_names: dict[str, int] = field(default_factory=dict)
    source_shows: dict[str, int] = field(default_factory=dict)
    used: int = 0


@dataclass
class BuildReport:
    out: Path
    built: int
    skipped: int
    samples: int
    #: Skipped source items by reason, each item counted once (see :class:`SourceSummary`).
    failures: dict[str, int]
    summary: SourceSummary = field(default_factory=SourceSummary)

    def as_json(self) -> dict[str, Any]:
        """What ``build --json`` prints: where, the counts, and the skipped source items by reason."""
        return {"out": str(self.out), "samples": self.samples, "shards_built": self.built, "shards_already_complete": self.skipped,
                "skipped_source_items": dict(sorted(self.failures.items()))}


def build_dataset(
    recipe: Recipe,
    out: Path,
    workers: int = 1,
    progress: bool = True,
    distributor: str = "multiprocessing",
    ray_address: str | None = None,
) -> BuildReport:
    """Build (or finish building) ``recipe`` into ``out``; see ``run_units`` for the distributors."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise BuildError(f"workers must be an integer >= 0 (0: one per CPU of a Ray cluster), got {workers!r}")
    out = _absolute(out)
    builder = ShardBuilder(recipe)
    _check_not_in_source(out, builder)
    _make_folder(out)
    units = builder.plan()
    try:
        _check_is_build(out)  # a folder of someone's files is refused before the lock file goes in it
        with locked(out, inside=True):
            env = environment()
            claimed, previous = _claim_output(recipe, out, builder, env)
            record = {**claimed, "plan": plan_record(units)}
            _remove_stale_temporaries(out)
            for folder in sorted({shard_dir(out, u) for u in units}):
                folder.mkdir(parents=True, exist_ok=True)
            todo = [u for u in units if not is_complete(out, u, recipe.sha256)]
            env = _same_packages(out, _started_under(previous), env, todo)
            try:
                run_units(recipe, todo, out, workers=workers, progress=progress, distributor=distributor,
                          ray_address=ray_address, builder=builder)
            except BaseException:
                # The workers are stopped (one failed, a full disk, Ctrl-C): their partial shards go
                # now, not at the next build (at scale, gigabytes of a disk that may be full).
                _remove_stale_temporaries(out)
                raise
            # The manifest and card are written from the shards' files only once each checks out: those
            # found finished were checked above, the ones this run built (by any worker or node) here.
            problem = next((p for p in (shard_problem(out, u, recipe.sha256) for u in todo) if p), None)
            if problem is not None:
                raise BuildError(f"{problem}; changed while this build ran? Rerun the build to rebuild that shard")
            stats = [read_json_object(stats_path(out, u)) for u in units]
            summary = _write_manifest(out, units, table_metadata(recipe, env))
            write_unless_same(out / RECIPE_RECORD, json_text({**record, "environment": env}).encode("utf-8"))
            write_dataset_card(recipe, out, units, stats, summary, env)
    except LocksUnavailable as e:
        raise BuildError(f"{e.filename}: {e.strerror}") from None
    except OSError as e:
        full = space_message(e, out)
        if full is not None:  # no other folder choice is needed: free space (or raise the limit) and resume
            raise BuildError(full) from None
        where = f" ({e.filename})" if e.filename else ""
        raise BuildError(f"{out}: cannot write the dataset here: {e.strerror or e}{where}; choose another {OUT}") from None
    samples = sum(s["successes"] for s in stats)
    if samples == 0:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(summary.skipped.items())) or "the source is empty"
        raise BuildError(
            f"{out}: no samples: all {summary.items} source items were skipped ({reasons}){_first_skip(out, summary)}; "
            f"each one's reason is in the status and error_message columns of {MANIFEST}"
        )
    return BuildReport(out, len(todo), len(units) - len(todo), samples, dict(summary.skipped), summary)


#: What of one skip's message a build with no sample quotes.
MAX_QUOTED_SKIP = 400


def _first_skip(out: Path, summary: SourceSummary) -> str:
    """The first item skipped for the commonest reason, with its message (which often says what
    to rename or where a caption is), so a build that made nothing says why on its one line."""
    if not summary.skipped:
        return ""
    commonest = max(sorted(summary.skipped), key=lambda r: summary.skipped[r])
    rows = pq.read_table(out / MANIFEST, columns=["source_id", "reason", "error_message"]).to_pylist()
    row = next((r for r in rows if r["reason"] == commonest), None)
    if row is None:
        return ""
    said = row["error_message"] or commonest
    said = said if len(said) <= MAX_QUOTED_SKIP else said[:MAX_QUOTED_SKIP] + "..."
    return f"; e.g. {row['source_id']}: {said}"


def _absolute(out: Path) -> Path:
    """``out`` as an absolute path (``.`` and ``./`` the current folder), refused before any work
    when the tables' writer cannot be handed it (:func:`utf8_path_problem`)."""
    absolute = Path(os.path.abspath(out))
    problem = utf8_path_problem(absolute, "the dataset's tables")
    if problem is not None:
        raise BuildError(f"{OUT} {shown_path(out)}: {problem}")
    return absolute


def _make_folder(out: Path) -> None:
    """``out``, created if need be; why it cannot be is one line naming it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BuildError(f"{out}: exists and is not a folder; choose another {OUT}") from None
    except NotADirectoryError:
        above = next((p for p in out.parents if p.exists() and not p.is_dir()), out.parent)
        raise BuildError(f"{out}: cannot be made below {above}, which is a file; choose another {OUT}") from None
    except OSError as e:
        raise BuildError(f"{out}: cannot be made ({e.strerror or e}); choose another {OUT}") from None


def _recipe_record(recipe: Recipe, out: Path, builder: ShardBuilder, env: dict[str, Any]) -> dict[str, Any]:
    """``recipe.json``: the recipe and its sha256, what its source and screen held (content, not
    where they lie) and, for a source of local files, where it lies relative to ``out`` (``verify``
    finds it there; no folder of this machine is named)."""
    detector = recipe.source_screen.detector
    record = {
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256,
        "source_fingerprint": builder.source.fingerprint(),
        "screen_detector": detector_fingerprint(detector) if detector is not None else None,
        "environment": env,
    }
    if portable_source(recipe.source) != recipe.source:
        record[SOURCE_LOCATION] = relative_source(recipe.source, out.resolve())  # as verify reads it back: from the real folder
    return record


def _claim_output(recipe: Recipe, out: Path, builder: ShardBuilder, env: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Refuse a folder that holds another recipe's build, by its record or by any shard's stats
    (an unreadable stats file marks an unfinished shard, rebuilt), or a build whose source or
    screen detector has changed since it started. Returns the record the folder keeps and the one
    it held before (None for a new build)."""
    previous = _check_is_build(out)
    if previous is not None and hashed_with_paths(previous.get("recipe"), previous.get("recipe_sha256")):
        raise FolderClaimError(f"{out}: built by an earlier version, whose recipe_sha256 (on every sample) hashed where its source "
                               f"lay; this version leaves that out, so its shards cannot be resumed or kept as this build's. "
                               f"Build into another {OUT} (the same samples, but for their recipe_sha256)")
    if previous is not None and previous.get("recipe_sha256") != recipe.sha256:
        raise FolderClaimError(f"{out}: holds a build of another recipe ({_recipe_change(previous.get('recipe'), recipe.to_dict())}); "
                               f"choose another {OUT} or remove the folder")
    mismatched = [p for p in out.rglob("*_stats.json") if _of_another_recipe(read_json_object_or_none(p), recipe)]
    if mismatched:
        raise FolderClaimError(f"{mismatched[0]}: shard of another recipe in {out}; choose another {OUT} or remove the folder")
    record = _recipe_record(recipe, out, builder, env)
    if previous is not None and previous.get("recipe_sha256") == recipe.sha256:
        for key, what in (("source_fingerprint", "its source"), ("screen_detector", "its source screen's detector")):
            if previous.get(key) != json.loads(json.dumps(record[key])):
                raise FolderClaimError(
                    f"{out}: {what} changed since this build started ({_describe(previous.get(key))} then, "
                    f"{_describe(record[key])} now; or another one was given); resuming would mix items of both. "
                    f"Restore it as it was, or build into another {OUT}"
                )
    claim(out / RECIPE_RECORD, record, f"choose another {OUT} or remove the folder", keys=CLAIMED)
    return record, previous


def _started_under(previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The environment the build was started under (its ``recipe.json`` then), if it records one."""
    env = previous.get("environment") if previous is not None else None
    return env if isinstance(env, dict) and isinstance(env.get("packages"), dict) else None


def _same_packages(out: Path, started: dict[str, Any] | None, env: dict[str, Any], todo: list) -> dict[str, Any]:
    """The environment the record and card credit: a resume that still has shards to build must run
    under the package versions the build started under (they change bytes, so mixing them would make
    one dataset of two), and is refused, naming each package and both versions, otherwise. A finished
    build rerun builds nothing, and keeps crediting the environment that made it (other versions, or
    another machine's platform): it writes nothing then, so a read-only copy of it serves."""
    if started is None:
        return env
    if not todo:
        return started
    changes = package_changes(started["packages"], env.get("packages", {}))
    if changes is None:
        return env
    shown, pins = changes
    raise FolderClaimError(
        f"{out}: this build started under other package versions ({shown}), "
        f"and {len(todo)} shards are still to build; they change bytes, so resuming would mix shards of both. "
        f"Reinstall the versions it started under{pins}, or build into another {OUT}"
    )


def _check_is_build(out: Path) -> dict[str, Any] | None:
    """``out`` is new, empty, or a build of this project (its ``recipe.json`` a build record, which
    is returned): a folder of anything else is refused, so no file of a user's is replaced by the
    card or manifest."""
    record = out / RECIPE_RECORD
    if record.exists() or record.is_symlink():
        if record.is_symlink() or not record.is_file():
            raise BuildError(f"{record}: not a regular file, so {out} is not a build of implicit-concept; choose another {OUT}")
        try:
            previous = read_json_object(record)
        except ValueError as e:
            raise BuildError(f"{e}; it is not a build record, so {out} is not a build of implicit-concept; choose another {OUT}") from None
        if not isinstance(previous.get("recipe_sha256"), str) or not isinstance(previous.get("recipe"), dict):
            raise BuildError(f"{record}: not a build record (no recipe and recipe_sha256), so {out} is not a build of "
                             f"implicit-concept; choose another {OUT}")
        return previous
    # What a build writes before its record: nothing but hidden temporaries and locks.
    others = visible_entries(out)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise BuildError(f"{out}: exists, is not empty ({shown}) and is not a build of implicit-concept (no {RECIPE_RECORD}); "
                         f"choose a new or empty {OUT}")
    return None


def _check_not_in_source(out: Path, builder: ShardBuilder) -> None:
    """A build written into its own source folder would read its outputs as source items."""
    root = getattr(builder.source, "root", None)
    if root is None:
        return
    if within(out, root):
        raise BuildError(f"{out}: is inside the source folder {root}; the build would read its own outputs. Choose an {OUT} outside it")


def _recipe_change(then: Any, now: dict[str, Any]) -> str:
    """What differs between a recorded recipe and this one, as "FIELD: A then, B now" (the first few),
    each change named by its path (``subsets[3].fraction``); a field one of them lacks is null there."""
    changes = json_changes(then if isinstance(then, dict) else {}, json.loads(json.dumps(now)), into_lists=True)
    changed = [(k, a, b) for k, a, b in ((k, _or_null(a), _or_null(b)) for k, a, b in changes) if a != b]
    shown = "; ".join(f"{k}: {_short(a)} then, {_short(b)} now" for k, a, b in changed[:3])
    return (shown + ("; ..." if len(changed) > 3 else "")) or "its recipe_sha256 differs"


def _or_null(value: Any) -> Any:
    return None if value is MISSING else value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    # Both ends kept: two long paths differ as often at the end as at the start.
    return text if len(text) <= 80 else text[:37] + "..." + text[-40:]


def _describe(fingerprint: Any) -> str:
    if not isinstance(fingerprint, dict):
        return "none" if fingerprint is None else str(fingerprint)
    counted = [f"{fingerprint[k]} {k}" for k in ("files", "tars", "bytes") if k in fingerprint]
    digest = str(fingerprint.get("sha256", ""))[:12]
    return ", ".join(counted + ([f"listing {digest}"] if digest else [])) or str(fingerprint)


def _of_another_recipe(stats: dict[str, Any] | None, recipe: Recipe) -> bool:
    return stats is not None and stats.get("recipe_sha256") != recipe.sha256


def _remove_stale_temporaries(out: Path) -> None:
    """Remove what killed writers left. Called while this build holds the folder's lock: every
    writer of the folder (this build's workers, forked or on other nodes) writes only while its
    build holds it, and a forked worker that outlives its build keeps the lock it inherited, so no
    live writer owns any temporary here. (A pid in the name proves nothing: pids are reused, and
    mean nothing on another node.)"""
    for tmp in sorted(out.rglob(f".*{TEMPORARY_MARK}*"), reverse=True):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _write_manifest(out: Path, units: list, metadata: dict[bytes, bytes] | None = None) -> SourceSummary:
    """``manifest.parquet``: every shard's table in plan order, with the build's ``metadata`` (see
    :func:`~builders.shard_table.table_metadata`); and what they say per source item."""
    tables = [pq.read_table(parquet_path(out, u), schema=SCHEMA) for u in units]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    write_unless_same(out / MANIFEST, parquet_bytes(table, metadata))
    return summarize(table)


#: The manifest's columns :func:`summarize` reads.
SUMMARY_COLUMNS = ["subset", "split", "source_id", "status", "reason", "caption_names", "source_shows"]


def summarize(table: pa.Table) -> SourceSummary:
    """What the manifest's rows say per source item (the CLI's counts and the card's "Screens").

    Every subset reads every source shard, in the same order, so an item is a source id and which
    of its rows with that id in one (subset, split) it is: the same item in another subset, and a
    whole tar's failure met by each split's read of it, count once; a key a tar holds twice (a
    ``duplicate_key``) counts twice, as it is read twice."""
    columns = table.select(SUMMARY_COLUMNS).to_pylist()
    seen: Counter[tuple[str, str, str]] = Counter()
    outcome: dict[tuple[str, int], str | None] = {}
    named: set[tuple[tuple[str, int], str]] = set()
    shown: set[tuple[tuple[str, int], str]] = set()
    for row in columns:
        place = (row["subset"], row["split"], row["source_id"])
        item = (row["source_id"], seen[place])
        seen[place] += 1
        reason = None if row["status"] == "success" else row["reason"]
        if item not in outcome or reason is None:
            outcome[item] = reason
        named.update((item, c) for c in (row["caption_names"] or "").split(",") if c)
        shown.update((item, c) for c in (row["source_shows"] or "").split(",") if c)
    return SourceSummary(
        items=len(outcome),
        skipped=dict(sorted(Counter(r for r in outcome.values() if r is not None).items())),
        caption_names=dict(sorted(Counter(c for _, c in named).items())),
        source_shows=dict(sorted(Counter(c for _, c in shown).items())),
        used=sum(r is None for r in outcome.values()),
    )
