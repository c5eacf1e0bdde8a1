"""Checks a built dataset folder against everything its layout promises, and reports every problem.

``recipe.json`` says which shards the build made (the plan it records, whatever its source holds
now); the checksum list, the folder's contents, each tar's members, each sample's ``KEY.json``,
each parquet, each stats file, the manifest and the card must agree with that plan and with each
other. A tamperer who
rewrites the checksums to match is still caught by what the checksums cannot vouch for: a shard
missing from the plan, a file the plan does not name, a record inconsistent with itself.

Nothing outside the plan is opened (a ``../`` line in the checksum list is a problem, never a path),
symlinks are not followed, every file is read within bounds, and no input makes verify crash: a
file that defeats every check is reported as "cannot be checked". One run tells the whole story.
"""
from __future__ import annotations

import json
import os
import re
import stat
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from builders.build import MANIFEST, RECIPE_RECORD, SOURCE_LOCATION, SUMMARY_COLUMNS, summarize
from builders.dataset_card import CARD, CHECKSUMS, card_bytes
from builders.recipe import Recipe, absolute_source, hashed_with_paths, parse_recipe
from builders.shard_builder import WorkUnit, key_index, plan_units, recorded_plan
from builders.shard_table import COLUMNS, sample_row, status_of
from builders.sources import WebDatasetConfig, make_source
from builders.sources.webdataset_source import tar_paths
from implicit_concept.bounded_reads import read_regular_file
from implicit_concept.content_hashes import sha256_file
from implicit_concept.file_locks import LOCK_NAME, read_locked
from implicit_concept.files import is_temporary
from implicit_concept.image_decode import DEFAULT_MAX_PIXELS, load_pixels
from implicit_concept.json_records import json_differences, parse_json
from implicit_concept.progress import progress_bar
from implicit_concept.provenance import environment
from implicit_concept.sample import SPLITS, SampleMeta
from implicit_concept.sample_error import SampleError
from implicit_concept.shard_reader import (
    MAX_JSON_BYTES,
    MAX_MEMBER_BYTES,
    SHARD_EXTENSIONS,
    TarRefused,
    data_after_end,
    ended_cleanly,
    iter_headers,
    open_tar,
    split_member_name,
)
from implicit_concept.utf8_paths import shown_path, utf8_path_problem

REQUIRED_MEMBERS = ("jpg", "txt", "json")
#: Beyond this many problems in one file, the rest are counted, not listed.
MAX_PROBLEMS_PER_FILE = 20
#: Records read whole (recipe.json, stats, the checksum list) are refused above these sizes.
MAX_RECORD_BYTES = 1 << 20
MAX_LISTING_BYTES = 64 << 20
MAX_PARQUET_BYTES = 64 << 20

#: The files a build writes at the top of its folder, beside the subset folders.
TOP_LEVEL = (RECIPE_RECORD, CHECKSUMS, CARD, MANIFEST)
_LISTING_LINE = re.compile(r"([0-9a-f]{64})  (.+)")
_SHARD_PATH = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)/(train|test)/(\d{5}|[1-9]\d{5,})\.tar")


class DatasetVerifyError(ValueError):
    """A dataset does not verify; the message names the folder and its first problems."""


@dataclass
class VerifyReport:
    shards: int = 0
    samples: int = 0
    instances: int = 0
    problems: list[str] = field(default_factory=list)
    #: What could not be checked and why (not problems: e.g. the source is not on this machine).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.shards > 0

    def as_json(self) -> dict[str, Any]:
        """What ``verify --json`` prints: the counts, ``ok``, every problem and note, and the versions
        that checked (a check by other library versions may read the same bytes otherwise)."""
        return {"ok": self.ok, "shards": self.shards, "samples": self.samples, "instances": self.instances,
                "problems": list(self.problems), "notes": list(self.notes), "environment": environment()}


def require_verified(out: Path) -> VerifyReport:
    """Verify ``out`` or raise :class:`DatasetVerifyError` listing its first 10 problems.
    A build writing it meanwhile (another run's, into a shared data folder) is waited for."""
    report = verify_dataset(out, wait_for_build=True)
    if not report.ok:
        first = "\n  ".join(report.problems[:10])
        raise DatasetVerifyError(
            f"{out}: the dataset does not verify ({len(report.problems)} problems; "
            f"'implicit-concept verify {out}' lists them all):\n  {first}"
        )
    return report


def verify_dataset(out: Path, progress: bool = False, wait_for_build: bool = False) -> VerifyReport:
    """What is wrong with the built dataset ``out``. It is read under its lock (shared): a build
    writing it meanwhile is one problem saying so, or with ``wait_for_build`` is waited for."""
    out = Path(out)
    report = VerifyReport()
    if not out.is_dir():  # one line, not one per file a build would hold
        report.problems.append(f"{out}: {'is not a folder' if out.exists() else 'does not exist'} (verify takes a built dataset's folder)")
        return report
    problem = utf8_path_problem(os.path.abspath(out), "the dataset's tables")
    if problem is not None:
        report.problems.append(f"{shown_path(out)}: {problem}")
        return report
    with read_locked(out, wait=wait_for_build) as builder:
        if builder is not None:  # one line, not one per shard not yet written
            report.problems.append(f"{out}: a build is writing it now (pid {builder} holds its lock {LOCK_NAME}); "
                                   f"verify it once the build has finished")
            return report
        return _verify(out, report, progress)


def _verify(out: Path, report: VerifyReport, progress: bool) -> VerifyReport:
    problems = _Problems(report)
    record = _guarded(problems, out / RECIPE_RECORD, None, _read_json, out / RECIPE_RECORD, problems)
    recipe = _guarded(problems, out / RECIPE_RECORD, None, _read_recipe, out, record, problems)
    record = record or {}  # read once: every check below takes what it holds
    listing = _guarded(problems, out / CHECKSUMS, {}, _read_listing, out, problems)
    units = _guarded(problems, out, [], _plan, out, record, recipe, listing, problems, report)
    _guarded(problems, out / RECIPE_RECORD, None, _check_source, out, record, recipe, report)
    if not units:
        problems.add(out, "no shards: the recipe plans none, or none could be found")
    _guarded(problems, out, None, _check_folder, out, recipe, units, problems, report.notes)
    _guarded(problems, out / CHECKSUMS, None, _check_listing, out, units, listing, problems)
    why = _planned_file(out, CARD)
    if why is not None:
        problems.add(out / CARD, f"{why} (the dataset card)")
    releases: dict[tuple[str, int], str] = {}
    for unit in progress_bar(units, desc=f"verify {out.name}", unit="shard", progress=progress):
        report.shards += 1
        _guarded(problems, out / _rel(unit), None, _verify_shard, out, unit, recipe, listing, problems, report, releases)
    _guarded(problems, out / RECIPE_RECORD, None, _check_releases, record, releases, problems)
    _guarded(problems, out / MANIFEST, None, _check_manifest, out, units, problems)
    if recipe is not None and units:
        _guarded(problems, out / CARD, None, _check_card, out, record, recipe, units, problems)
    if units and report.samples == 0:
        problems.add(out, f"no samples: every source item was skipped, so the build failed (each one's reason is in {MANIFEST})")
    problems.close()
    return report


def _guarded(problems: "_Problems", where: Path, default: Any, check: Callable[..., Any], *args: Any) -> Any:
    """Run one check; the last guard of "never crash": a hostile file may defeat every check in it."""
    try:
        return check(*args)
    except Exception as e:
        problems.add(where, f"cannot be checked ({type(e).__name__}: {e})")
        return default


class _Problems:
    """Collects problems by file, listing at most MAX_PROBLEMS_PER_FILE for any one file."""

    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.per_file: Counter[str] = Counter()

    def add(self, where: Path | str, message: str) -> None:
        file = str(where).split(":", 1)[0] if not isinstance(where, Path) else str(where)
        self.per_file[file] += 1
        if self.per_file[file] <= MAX_PROBLEMS_PER_FILE:
            self.report.problems.append(f"{where}: {message}")

    def close(self) -> None:
        for file, n in sorted(self.per_file.items()):
            if n > MAX_PROBLEMS_PER_FILE:
                self.report.problems.append(f"{file}: {n - MAX_PROBLEMS_PER_FILE} more problems not listed")


# --- records ------------------------------------------------------------------------------------


def _read_bounded(path: Path, cap: int) -> bytes:
    """A build's file read as every file handed over is (:func:`read_regular_file`: bounded, a FIFO
    or device refused unread), and never through a symbolic link: a build's files are its own."""
    if path.is_symlink():
        raise ValueError(f"{path}: a symbolic link, where a build writes a file")
    return read_regular_file(path, cap)


def _read_record(path: Path) -> dict[str, Any]:
    """A build's JSON record by the one rule for JSON records (:func:`parse_json`)."""
    record = parse_json(_read_bounded(path, MAX_RECORD_BYTES), path)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: holds a JSON {type(record).__name__}, not an object")
    return record


def _unreadable(path: Path, e: Exception) -> str:
    """Why ``path`` could not be read, for a problem listed under its name."""
    return e.strerror or str(e) if isinstance(e, OSError) else str(e).removeprefix(f"{path}: ")


def _read_json(path: Path, problems: _Problems) -> dict[str, Any] | None:
    try:
        return _read_record(path)
    except FileNotFoundError:
        problems.add(path, "missing")
    except (OSError, ValueError) as e:
        problems.add(path, f"unreadable ({_unreadable(path, e)})")
    return None


def _read_recipe(out: Path, record: dict[str, Any] | None, problems: _Problems) -> Recipe | None:
    """The recipe ``record`` (recipe.json) holds, validated, or None (then only what needs no recipe is checked)."""
    path = out / RECIPE_RECORD
    if record is None:
        return None
    if hashed_with_paths(record.get("recipe"), record.get("recipe_sha256")):
        problems.add(path, "built by an earlier version, whose recipe_sha256 (on every sample) hashed where its source lay; "
                           "this version leaves that out, so the build cannot be checked as this recipe's: rebuild it "
                           "into another folder (the same samples, but for their recipe_sha256)")
        return None
    try:
        recipe = parse_recipe(record.get("recipe"), check_components=False)
    except (ValueError, TypeError, KeyError) as e:
        problems.add(path, f"its recipe is not valid ({e})")
        return None
    if record.get("recipe_sha256") != recipe.sha256:
        problems.add(path, f"recipe_sha256 {record.get('recipe_sha256')!r} is not the sha256 of its recipe ({recipe.sha256})")
    return recipe


def _read_listing(out: Path, problems: _Problems) -> dict[str, tuple[int, str]]:
    """``{relative tar path: (line number, sha256)}`` of the well-formed lines of the checksum list."""
    path = out / CHECKSUMS
    try:
        text = _read_bounded(path, MAX_LISTING_BYTES).decode("utf-8")
    except FileNotFoundError:
        problems.add(path, f"missing (is {out} a finished build?)")
        return {}
    except (OSError, ValueError) as e:
        problems.add(path, f"unreadable ({_unreadable(path, e)})")
        return {}
    listing: dict[str, tuple[int, str]] = {}
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    else:
        problems.add(path, "does not end with a newline")
    for number, line in enumerate(lines, 1):
        match = _LISTING_LINE.fullmatch(line)
        if match is None:
            problems.add(f"{path}:{number}", f"not a '<sha256>  <subset>/<split>/<shard>.tar' line: {line[:120]!r}")
        elif match.group(2) in listing:
            problems.add(f"{path}:{number}", f"lists {match.group(2)!r} a second time")
        else:
            listing[match.group(2)] = (number, match.group(1))
    return listing


# --- the plan and the folder ----------------------------------------------------------------------


def _rel(unit: WorkUnit) -> str:
    return f"{unit.subset}/{unit.split}/{unit.name}.tar"


def _plan(out: Path, record: dict[str, Any], recipe: Recipe | None, listing: dict[str, tuple[int, str]], problems: _Problems, report: VerifyReport) -> list[WorkUnit]:
    """The shards the build made: the plan its recipe.json records (what was built, whatever its
    source holds now); for a build recorded without one, the recipe's plan from its source where
    it is readable here."""
    listed = [m for m in (_SHARD_PATH.fullmatch(rel) for rel in listing) if m]
    if recipe is None:
        report.notes.append(f"no valid {RECIPE_RECORD}: only the shards {CHECKSUMS} lists are checked, not the recipe's plan")
        return [WorkUnit(m.group(1), m.group(2), int(m.group(3))) for m in listed]
    recorded = recorded_plan(record)
    if recorded is not None:
        return plan_units(recipe, recorded)
    try:
        source = make_source(recipe.source, image_size=recipe.image_size, shard_size=recipe.shard_size, seed=recipe.seed)
        return plan_units(recipe, {split: source.shard_ids(split) for split in SPLITS})
    except ValueError as e:
        unreadable = str(e)
    if recipe.source.get("kind") == "webdataset":
        try:
            config = WebDatasetConfig(**{k: v for k, v in recipe.source.items() if k != "kind"})
            count = len(tar_paths(config))
        except (TypeError, ValueError) as e:
            problems.add(out / RECIPE_RECORD, f"its source is not valid ({e})")
            return []
        return plan_units(recipe, {split: list(range(count)) for split in SPLITS})
    report.notes.append(
        f"the recipe's source is not readable here ({unreadable}): each split's shard count is taken from {CHECKSUMS}"
    )
    ids = {split: sorted({int(m.group(3)) for m in listed if m.group(2) == split}) for split in SPLITS}
    return plan_units(recipe, {split: list(range(ids[split][-1] + 1)) if ids[split] else [] for split in SPLITS})


def _check_source(out: Path, record: dict[str, Any], recipe: Recipe | None, report: VerifyReport) -> None:
    """A note when the source, readable here, no longer holds what the build started from: the
    shards still verify, but a rebuild would not give them back."""
    if recipe is None:
        return
    recorded, located = record.get("source_fingerprint"), record.get(SOURCE_LOCATION)
    try:
        where = absolute_source(located, out) if isinstance(located, dict) else recipe.source
        source = make_source(where, image_size=recipe.image_size, shard_size=recipe.shard_size, seed=recipe.seed)
    except (ValueError, TypeError):
        return
    if recorded is not None and source.fingerprint() != recorded:
        report.notes.append("the source has changed since this build started (its fingerprint differs from recipe.json's): a rebuild would not give these shards back")


def _check_folder(out: Path, recipe: Recipe | None, units: list[WorkUnit], problems: _Problems, notes: list[str]) -> None:
    """Everything under the subset folders is a planned file; no tar, table or extra folder at the
    top, where readers of the shards and tables look. Other files there (a contact sheet) are noted."""
    subsets = [s.name for s in recipe.subsets] if recipe else sorted({u.subset for u in units})
    planned = {f"{u.subset}/{u.split}/{u.name}{suffix}" for u in units for suffix in (".tar", ".parquet", "_stats.json")}
    split_dirs = {f"{u.subset}/{u.split}" for u in units}
    try:
        entries = sorted(os.scandir(out), key=lambda e: e.name)
    except OSError as e:
        problems.add(out, f"cannot be listed ({e})")
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in subsets:
                problems.add(Path(entry.path), "unexpected folder (not a subset of the recipe)")
        elif entry.name in subsets:
            problems.add(Path(entry.path), "not a folder (a symlink or a file where a subset folder belongs)")
        elif entry.name.endswith(".tar"):
            problems.add(Path(entry.path), "unexpected tar (not a shard of this build's plan)")
        elif entry.name in TOP_LEVEL or entry.name.startswith("."):
            continue
        elif entry.name.endswith(".parquet"):  # a reader of the folder's tables (pandas, pyarrow) would take it in
            problems.add(Path(entry.path), "unexpected file (not one a build writes)")
        else:  # a contact sheet, a note: no reader of the shards or tables takes it for data
            notes.append(f"{entry.path}: a file the build did not write (left alone)")
    for subset in subsets:
        top = out / subset
        if not top.is_dir() or top.is_symlink():
            continue
        for folder, dirs, files in os.walk(top, onerror=lambda e: problems.add(Path(e.filename or top), f"cannot be listed ({e})")):
            rel_folder = Path(folder).relative_to(out).as_posix()
            for d in sorted(dirs):
                if f"{rel_folder}/{d}" not in split_dirs:
                    problems.add(Path(folder) / d, "unexpected folder (not a split of this build's plan)")
            dirs[:] = [d for d in dirs if f"{rel_folder}/{d}" in split_dirs and not (Path(folder) / d).is_symlink()]
            for name in sorted(files):
                if is_temporary(Path(name)):  # never data: no reader of the shards takes it in
                    notes.append(f"{Path(folder) / name}: a temporary left by a stopped writer (not data; "
                                 f"the next build into this folder removes it)")
                elif f"{rel_folder}/{name}" not in planned:
                    problems.add(Path(folder) / name, "unexpected file (not in this build's plan)")


def _planned_file(out: Path, rel: str) -> str | None:
    """Why ``out/rel`` cannot be read as a planned file (missing, or reached through a symlink), or None."""
    path = out
    parts = rel.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            return f"unreadable ({e})"
        last = i == len(parts) - 1
        if stat.S_ISLNK(mode):
            return "a symlink (not followed)"
        if last and not stat.S_ISREG(mode):
            return "not a regular file"
    return None


def _check_listing(out: Path, units: list[WorkUnit], listing: dict[str, tuple[int, str]], problems: _Problems) -> None:
    planned = [_rel(u) for u in units]
    known = set(planned)
    for rel, (number, _) in listing.items():
        if rel not in known:
            problems.add(f"{out / CHECKSUMS}:{number}", f"lists {rel!r}, not a shard of this build's plan (not opened)")
    for rel in planned:
        if rel not in listing:
            problems.add(out / CHECKSUMS, f"does not list the planned shard {rel}")
    order = [rel for rel in listing if rel in known]
    if order != [rel for rel in planned if rel in listing]:
        problems.add(out / CHECKSUMS, "lists the shards out of the plan's order")


# --- one shard ------------------------------------------------------------------------------------


@dataclass
class _ShardContents:
    keys: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    contaminated: int = 0
    instances: Counter[str] = field(default_factory=Counter)
    #: Each (version, schema) its KEY.json records name, with the first sample that names it.
    releases: dict[tuple[str, int], str] = field(default_factory=dict)


def _verify_shard(
    out: Path, unit: WorkUnit, recipe: Recipe | None, listing: dict[str, tuple[int, str]], problems: _Problems, report: VerifyReport,
    releases: dict[tuple[str, int], str],
) -> None:
    rel = _rel(unit)
    tar = out / rel
    stats_file = tar.with_name(f"{unit.name}_stats.json")
    parquet = tar.with_suffix(".parquet")
    unusable = {}
    for path in (tar, stats_file, parquet):
        why = _planned_file(out, path.relative_to(out).as_posix())
        if why is not None:
            unusable[path] = why
            problems.add(path, f"{why}; a planned file of this build")
    stats = _read_json(stats_file, problems) if stats_file not in unusable else None
    if tar in unusable:
        return
    actual = sha256_file(tar)
    if rel in listing and listing[rel][1] != actual:
        problems.add(tar, f"sha256 {actual} differs from {CHECKSUMS} ({listing[rel][1]})")
    contents = _walk_tar(tar, unit, recipe, problems)
    for release, where in contents.releases.items():
        releases.setdefault(release, where)
    report.samples += len(contents.keys)
    report.instances += sum(contents.instances.values())
    if stats is not None:
        _check_stats(stats_file, stats, unit, recipe, actual, contents, problems)
        if "parquet_sha256" in stats and parquet not in unusable and stats["parquet_sha256"] != sha256_file(parquet):
            problems.add(parquet, f"sha256 differs from the one {stats_file.name} records")
    if parquet not in unusable:
        rows = _parquet_rows(parquet, problems)
        if rows is not None:
            _check_table(parquet, rows, contents, stats, problems)


def _check_releases(record: dict[str, Any], releases: dict[tuple[str, int], str], problems: _Problems) -> None:
    """Every sample written by the release the build record credits (else by the first sample's):
    another release draws other pixels and boxes for the same recipe, so a shard it wrote (a resume
    the record did not stop, a shard copied in) makes one dataset of two."""
    if not releases:
        return
    env = record.get("environment")
    packages = env.get("packages") if isinstance(env, dict) else None
    credited = packages.get("implicit-concept") if isinstance(packages, dict) else None
    (first_version, first_schema), first = next(iter(releases.items()))
    version = credited if isinstance(credited, str) else first_version
    for (v, schema), where in releases.items():
        if v != version:
            why = f"{RECIPE_RECORD} credits the build to {version}" if isinstance(credited, str) else f"{first} by {version}"
        elif schema != first_schema:
            why = f"{first} in schema {first_schema}"
        else:
            continue
        problems.add(where, f"KEY.json written by implicit-concept {v} (schema {schema}), {why}: samples of two releases "
                            f"in one dataset; rebuild it into another folder")


def _expected_extensions(recipe: Recipe | None, present: list[str]) -> list[str]:
    if recipe is None:
        return [e for e in SHARD_EXTENSIONS if e in REQUIRED_MEMBERS or e in present]
    return [*REQUIRED_MEMBERS, *(["clean.jpg"] if recipe.write_clean else []), *(["mask.png"] if recipe.write_mask else [])]


def _walk_tar(tar: Path, unit: WorkUnit, recipe: Recipe | None, problems: _Problems) -> _ShardContents:
    """Every member, in order, against the writer's layout: KEY.jpg KEY.txt KEY.json [KEY.clean.jpg KEY.mask.png]."""
    contents = _ShardContents()
    try:
        with open_tar(tar, "r:") as tf:
            for key, members, order in _samples(tar, tf, problems):
                expected = _expected_extensions(recipe, order)
                if order != expected:
                    problems.add(f"{tar}:{key}", f"members {order}, expected {expected}")
                index = _key_index(tar, key, unit, recipe, contents, problems)
                if all(m in members for m in REQUIRED_MEMBERS):
                    meta = _verify_sample(f"{tar}:{key}", key, index, members, unit, recipe, problems)
                    if meta is not None:
                        contents.rows.append(sample_row(meta, unit, members["jpg"]))
                        contents.contaminated += meta.contaminated
                        contents.instances.update(i.concept for i in meta.instances)
                        contents.releases.setdefault((meta.version, meta.schema), f"{tar}:{key}")
            where = f"after sample {contents.keys[-1]}" if contents.keys else "before any sample"
            if not ended_cleanly(tf):  # tarfile stops quietly where a cut at a member boundary leaves no header
                problems.add(tar, f"truncated tar: no end-of-archive block {where} (a copy cut short?)")
            elif (after := data_after_end(tf)) is not None:
                problems.add(tar, f"data at byte {after}, after the end-of-archive block ({where}): not read")
    except TarRefused as e:
        problems.add(tar, f"refused ({e.reason}): {e.detail}")
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.add(tar, f"unreadable or truncated tar ({e})")
    return contents


def _samples(tar: Path, tf: Any, problems: _Problems) -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """``(key, {extension: bytes}, extensions in order)`` per run of members with one key; every
    member that is not a regular ``KEY.ext`` of the layout, or is too large, is a problem."""
    key: str | None = None
    members: dict[str, bytes] = {}
    order: list[str] = []
    for info in iter_headers(tf):
        parts = split_member_name(info.name) if info.isreg() else None
        if parts is None or "/" in parts[0]:
            problems.add(tar, f"member {info.name!r} is not a KEY.ext file of the layout")
            continue
        if parts[0] != key:
            if key is not None:
                yield key, members, order
            key, members, order = parts[0], {}, []
        ext = parts[1]
        if ext not in SHARD_EXTENSIONS or ext in order:
            problems.add(f"{tar}:{key}", f"unexpected member {info.name!r}")
            continue
        order.append(ext)
        if info.size > MAX_MEMBER_BYTES:
            problems.add(f"{tar}:{key}", f"member {info.name!r} is {info.size} bytes, over the cap of {MAX_MEMBER_BYTES}; not read")
            continue
        members[ext] = tf.extractfile(info).read()
    if key is not None:
        yield key, members, order


def _key_index(tar: Path, key: str, unit: WorkUnit, recipe: Recipe | None, contents: _ShardContents, problems: _Problems) -> int | None:
    """The source index the key encodes; keys are the writer's and strictly increase."""
    contents.keys.append(key)
    index = key_index(key, unit, recipe.shard_size if recipe is not None else None)
    if index is None:
        problems.add(f"{tar}:{key}", f"key is not one the writer gives in shard {unit.name}")
        return None
    if contents.indices and index <= contents.indices[-1]:
        problems.add(f"{tar}:{key}", "key out of order or repeated")
    contents.indices.append(index)
    return index


def _verify_sample(
    where: str, key: str, index: int | None, members: dict[str, bytes], unit: WorkUnit, recipe: Recipe | None, problems: _Problems
) -> SampleMeta | None:
    raw = members["json"]
    if len(raw) > MAX_JSON_BYTES:
        problems.add(where, f"KEY.json is {len(raw)} bytes, over the cap of {MAX_JSON_BYTES}")
        return None
    try:
        stored = parse_json(raw, "KEY.json")
        meta = SampleMeta.from_json(stored)
        canonical = meta.to_json()
        written = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError, RecursionError, UnicodeError) as e:
        problems.add(where, f"KEY.json unreadable ({type(e).__name__}: {e})")
        return None
    if written != raw:
        fields = json_differences(stored, canonical, into_lists=True)
        what = f"fields inconsistent with the rest of the record: {', '.join(fields[:8])}" if fields else "not in the writer's canonical form"
        problems.add(where, f"KEY.json {what}")
    if meta.key != key:
        problems.add(where, f"json key {meta.key!r} differs from member name")
    if (meta.subset, meta.split) != (unit.subset, unit.split):
        problems.add(where, f"json says subset {meta.subset!r}, split {meta.split!r}; the shard is in {unit.subset}/{unit.split}")
    if recipe is not None:
        _check_against_recipe(where, meta, index, unit, recipe, problems)
    if members["txt"] != meta.caption.encode("utf-8"):
        problems.add(where, "txt differs from json caption")
    max_pixels = recipe.image_size**2 if recipe is not None else DEFAULT_MAX_PIXELS
    for ext, mode in (("jpg", "RGB"), ("clean.jpg", "RGB"), ("mask.png", "L")):
        if ext in members:
            _check_image(where, ext, members[ext], mode, (meta.width, meta.height), max_pixels, problems)
    return meta


def _check_against_recipe(where: str, meta: SampleMeta, index: int | None, unit: WorkUnit, recipe: Recipe, problems: _Problems) -> None:
    if (meta.recipe, meta.recipe_sha256) != (recipe.name, recipe.sha256):
        problems.add(where, f"json names recipe {meta.recipe!r} {meta.recipe_sha256!r}, not this build's ({recipe.name} {recipe.sha256})")
    if (meta.width, meta.height) != (recipe.image_size, recipe.image_size):
        problems.add(where, f"json says {meta.width}x{meta.height}, the recipe {recipe.image_size}x{recipe.image_size}")
    names = [s.name for s in recipe.subsets]
    if unit.subset in names and index is not None:
        seed = [recipe.seed, names.index(unit.subset), SPLITS.index(unit.split), unit.shard_id, index]
        if meta.seed != seed:
            problems.add(where, f"json seed {meta.seed!r} is not the sample's ({seed})")
    allowed = recipe.subset(unit.subset).concepts if unit.subset in names else ()
    for concept in sorted({i.concept for i in meta.instances} - set(allowed)):
        problems.add(where, f"concept {concept!r} does not belong to subset {unit.subset} ({', '.join(allowed)})")


def _check_image(where: str, ext: str, data: bytes, mode: str, size: tuple[int, int], max_pixels: int, problems: _Problems) -> None:
    try:
        image = load_pixels(data, max_pixels)
    except SampleError as e:
        problems.add(where, f"{ext} not decoded ({e})")
        return
    if image.size != size:
        problems.add(where, f"{ext} is {image.size}, json says {size}")
    if image.mode != mode:
        problems.add(where, f"{ext} is in mode {image.mode}, not {mode}")


def _check_stats(
    path: Path, stats: dict[str, Any], unit: WorkUnit, recipe: Recipe | None, actual: str, contents: _ShardContents, problems: _Problems
) -> None:
    if "sha256" not in stats:
        problems.add(path, "has no sha256")
    elif stats["sha256"] != actual:
        problems.add(path, "sha256 does not match the tar")
    if recipe is not None and stats.get("recipe_sha256") != recipe.sha256:
        problems.add(path, f"recipe_sha256 {stats.get('recipe_sha256')!r} is not this build's ({recipe.sha256})")
    for name, value in (("shard", unit.name), ("subset", unit.subset), ("split", unit.split)):
        if stats.get(name) != value:
            problems.add(path, f"{name} is {stats.get(name)!r}, not {value!r}")
    samples = len(contents.keys)
    expected = {
        "successes": samples,
        "contaminated": contents.contaminated,
        "instances": dict(sorted(contents.instances.items())),
    }
    for name, value in expected.items():
        if stats.get(name) != value:
            problems.add(path, f"{name} is {stats.get(name)!r}, the tar holds {value!r}")
    count, failed, failures = stats.get("count"), stats.get("failed"), stats.get("failures")
    counts_ok = (
        _is_int(count) and _is_int(failed) and isinstance(failures, dict) and all(_is_int(v) and v > 0 for v in failures.values())
        and count == samples + failed and sum(failures.values()) == failed
    )
    if not counts_ok:
        problems.add(path, f"count {count!r}, failed {failed!r} and failures {failures!r} do not add up to {samples} samples")
    elif contents.indices and contents.indices[-1] >= count:
        problems.add(path, f"count {count} but a key has source index {contents.indices[-1]}")


def _check_table(
    path: Path, rows: list[dict[str, Any]], contents: _ShardContents, stats: dict[str, Any] | None, problems: _Problems
) -> None:
    """The table's sample rows are the tar's records (with their image's sha256); its other rows
    are the skips the stats count, each with the status its reason gives, all in key order."""
    samples = [r for r in rows if r.get("status") == "success"]
    if samples != contents.rows:
        first = next((i for i, (a, b) in enumerate(zip(samples, contents.rows)) if a != b), min(len(samples), len(contents.rows)))
        problems.add(path, f"differs from the tar's KEY.json records (first at sample row {first}; {len(samples)} sample rows, tar has {len(contents.rows)} samples)")
    skipped = [r for r in rows if r.get("status") != "success"]
    for r in skipped:
        if not isinstance(r.get("reason"), str) or r.get("status") != status_of(r["reason"]) or not r.get("error_message"):
            problems.add(path, f"row {r.get('key')!r}: status {r.get('status')!r}, reason {r.get('reason')!r} and error_message do not go together")
    keys = [r.get("key") for r in rows]
    if any(not isinstance(k, str) for k in keys) or keys != sorted(keys) or len(set(keys)) != len(keys):
        problems.add(path, "keys not in order, repeated or missing")
    if stats is None:
        return
    failures = stats.get("failures")
    if isinstance(failures, dict) and dict(Counter(r.get("reason") for r in skipped)) != failures:
        problems.add(path, f"its skipped rows ({len(skipped)}) are not the failures its stats count ({failures!r})")
    screened = {
        "caption_names": dict(sorted(Counter(c for r in rows if r.get("caption_names") for c in r["caption_names"].split(",")).items())),
        "source_shows": dict(sorted(Counter(c for r in rows if r.get("source_shows") for c in r["source_shows"].split(",")).items())),
    }
    if stats.get("screened") != screened:
        problems.add(path, f"what its rows say the screens found ({screened}) is not what its stats say ({stats.get('screened')!r})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _parquet_rows(path: Path, problems: _Problems) -> list[dict[str, Any]] | None:
    try:
        size = path.stat().st_size
        if size > MAX_PARQUET_BYTES:
            problems.add(path, f"{size} bytes, over the cap of {MAX_PARQUET_BYTES}; not read")
            return None
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        problems.add(path, f"unreadable parquet ({e})")
        return None
    if table.column_names != COLUMNS:
        problems.add(path, f"columns {table.column_names}, expected {COLUMNS}")
        return None
    return table.to_pylist()


# --- the manifest and the card -------------------------------------------------------------------


def _card_lines(card: bytes) -> list[bytes]:
    """A card's lines, its package versions in name order (recipe.json records them sorted)."""
    lines = card.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"- python ") and b"; " in line:
            head, _, packages = line.partition(b"; ")
            lines[i] = head + b"; " + b", ".join(sorted(packages.split(b", ")))
    return lines


def _check_card(out: Path, record: dict[str, Any], recipe: Recipe, units: list[WorkUnit], problems: _Problems) -> None:
    """README.md is the card this build's recipe, stats, manifest and environment give (its front
    matter is the Hugging Face config, its checksums every shard's): rebuilt and compared."""
    env = record.get("environment")
    if not isinstance(env, dict) or not isinstance(env.get("packages"), dict) or "python" not in env:
        return  # recorded without the environment the card names: nothing to rebuild it from
    if _planned_file(out, CARD) is not None:
        return  # reported above
    try:  # what the card is made from; each is checked (and reported) on its own
        stats = [_read_record(out / f"{u.subset}/{u.split}/{u.name}_stats.json") for u in units]
        manifest = pq.read_table(out / MANIFEST, columns=SUMMARY_COLUMNS)
        expected_card = card_bytes(recipe, units, stats, summarize(manifest), env)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pa.ArrowException):
        return
    expected = _card_lines(expected_card)
    actual = _card_lines(_read_bounded(out / CARD, MAX_LISTING_BYTES))
    if actual != expected:
        line = next((i for i, (a, b) in enumerate(zip(actual, expected)) if a != b), min(len(actual), len(expected)))
        problems.add(out / CARD, f"is not this build's dataset card (first difference at line {line + 1}); "
                                 "rerun the build to write it again")


def _check_manifest(out: Path, units: list[WorkUnit], problems: _Problems) -> None:
    """manifest.parquet is the shards' tables concatenated in plan order, compared batch by batch."""
    path = out / MANIFEST
    why = _planned_file(out, MANIFEST)
    if why is not None:
        problems.add(path, why)
        return
    try:
        manifest = pq.ParquetFile(path)
        names = manifest.schema_arrow.names
    except (OSError, ValueError, pa.ArrowException) as e:
        problems.add(path, f"unreadable parquet ({e})")
        return
    if names != COLUMNS:
        problems.add(path, f"columns {names}, expected {COLUMNS}")
        return
    rows = _manifest_rows(manifest)
    position = 0
    try:
        for unit in units:
            rel = f"{unit.subset}/{unit.split}/{unit.name}.parquet"
            if _planned_file(out, rel) is not None:
                continue
            for row in _parquet_rows(out / rel, _Problems(VerifyReport())) or []:
                theirs = next(rows, None)
                if theirs != row:
                    what = "ends early" if theirs is None else f"row {position} differs from {rel}"
                    problems.add(path, f"is not the shards' tables in plan order ({what})")
                    return
                position += 1
        if next(rows, None) is not None:
            problems.add(path, f"has rows beyond the {position} of the shards' tables")
    except (OSError, ValueError, pa.ArrowException) as e:
        problems.add(path, f"unreadable parquet ({e})")


def _manifest_rows(manifest: pq.ParquetFile) -> Iterator[dict[str, Any]]:
    for batch in manifest.iter_batches(batch_size=4096):
        yield from batch.to_pylist()
