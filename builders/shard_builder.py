"""Builds output shards, each a pure function of (recipe, subset, split, shard id).

Reader -> caption screen -> resizer -> source screen -> concept compositing -> writer, per item.
The subsets' shards cut from one source shard are built together, so an item is read, screened,
decoded and resized once, and its clean twin encoded once, not once per subset. Every item the
source yields becomes a row of each shard's table (:mod:`builders.shard_table`): a sample, or a
skip with its reason and error text. Nothing here depends on which worker, process or machine runs
the shards, so any distributor can schedule them.
"""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from builders.recipe import Recipe, Subset
from builders.resizer import SampleError, prepare_image
from builders.shard_table import SCHEMA, sample_row, skipped_row, table_metadata, write_table
from builders.source_screen import SourceScreen
from builders.sources import make_source
from builders.sources.base import MAX_PLANNED_SHARDS, RawItem, raise_cap
from implicit_concept.compositing import MIN_SEEN, Composition
from implicit_concept.concepts import Layer, make_renderer
from implicit_concept.content_hashes import sha256_file
from implicit_concept.files import atomic_write_json
from implicit_concept.json_records import read_json_object_or_none
from implicit_concept.provenance import version
from implicit_concept.sample import SPLITS, SampleMeta, Screen
from implicit_concept.shard_writer import TarShardWriter


@dataclass(frozen=True, order=True)
class WorkUnit:
    subset: str
    split: str
    shard_id: int

    @property
    def name(self) -> str:
        """The shard's file name stem: its id in at least 5 digits (``00042``, ``123456``)."""
        return f"{self.shard_id:05d}"


def shard_dir(out: Path, unit: WorkUnit) -> Path:
    return Path(out) / unit.subset / unit.split


def tar_path(out: Path, unit: WorkUnit) -> Path:
    return shard_dir(out, unit) / f"{unit.name}.tar"


def stats_path(out: Path, unit: WorkUnit) -> Path:
    return shard_dir(out, unit) / f"{unit.name}_stats.json"


def parquet_path(out: Path, unit: WorkUnit) -> Path:
    return shard_dir(out, unit) / f"{unit.name}.parquet"


def is_complete(out: Path, unit: WorkUnit, recipe_sha256: str | None = None) -> bool:
    """Whether ``unit`` is finished: the stats file (written last, img2dataset's rule) is this
    shard's, the tar is still the one it describes (its sha256) and the parquet is this shard's
    table (see :func:`shard_problem`). Anything else is rebuilt from scratch."""
    return shard_problem(out, unit, recipe_sha256) is None


def shard_problem(out: Path, unit: WorkUnit, recipe_sha256: str | None = None) -> str | None:
    """Why ``unit``'s files in ``out`` are not a finished shard, as ``"PATH: problem"``; None when
    they all check out. The stats must be this shard's (subset, split, shard, and recipe when
    ``recipe_sha256`` is given), the tar must have the sha256 they record, and the parquet must
    have the sha256 they record (stats written before it was recorded: be a readable table of
    this shard's rows, as many as the stats count, in key order)."""
    path = stats_path(out, unit)
    stats = read_json_object_or_none(path)
    if stats is None:
        return f"{path}: missing or not a JSON object"
    for name, value in (("shard", unit.name), ("subset", unit.subset), ("split", unit.split)):
        if stats.get(name) != value:
            return f"{path}: {name} is {stats.get(name)!r}, not {value!r}"
    if recipe_sha256 is not None and stats.get("recipe_sha256") != recipe_sha256:
        return f"{path}: recipe_sha256 is not this build's"
    tar, table = tar_path(out, unit), parquet_path(out, unit)
    try:
        if stats.get("sha256") != sha256_file(tar):
            return f"{tar}: sha256 is not the one its stats record"
        if "parquet_sha256" in stats:
            return None if stats["parquet_sha256"] == sha256_file(table) else f"{table}: sha256 is not the one its stats record"
    except OSError as e:
        return f"{e.filename or tar}: {e.strerror or e}"
    return table_problem(table, unit, stats)


def table_problem(path: Path, unit: WorkUnit, stats: dict[str, Any]) -> str | None:
    """Why the parquet ``path`` is not ``unit``'s table as its ``stats`` describe it, or None."""
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        return f"{path}: unreadable parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    if table.schema != SCHEMA:
        return f"{path}: columns {table.column_names} are not a shard table's"
    if table.num_rows != stats.get("count"):
        return f"{path}: {table.num_rows} rows, its stats count {stats.get('count')!r}"
    rows = table.select(["subset", "split", "shard", "key", "status"]).to_pylist()
    if any((r["subset"], r["split"], r["shard"]) != (unit.subset, unit.split, unit.name) for r in rows):
        return f"{path}: holds rows of another shard"
    keys = [r["key"] for r in rows]
    if any(k is None for k in keys) or keys != sorted(keys) or len(set(keys)) != len(keys):
        return f"{path}: keys not in order, repeated or missing"
    if sum(r["status"] == "success" for r in rows) != stats.get("successes"):
        return f"{path}: its sample rows are not the {stats.get('successes')!r} samples its stats count"
    return None


def sample_key(recipe: Recipe, unit: WorkUnit, index: int) -> str:
    """Item ``index`` of the source shard: the shard id in at least 5 digits, then the index in a
    fixed width (at least 4 digits, enough for ``shard_size`` items). A source shard may hold more
    items than that (one tar is one shard, whatever its size): an index past the width is written
    as that many nines, its digit count, then its digits (``99995`` + ``10000``), so that a shard's
    keys still sort in index order and read back (:func:`key_index`)."""
    return f"{unit.shard_id:05d}{_index_digits(index, index_width(recipe.shard_size))}"


def index_width(shard_size: int) -> int:
    """The digits of a key's source index for a recipe of ``shard_size``."""
    return max(4, len(str(shard_size - 1)))


def _index_digits(index: int, width: int) -> str:
    if index < 10 ** width:
        return f"{index:0{width}d}"
    digits = str(index)
    if len(digits) > 9:
        raise ValueError(f"source index {index} is over the 10**9 items a shard may hold")
    return "9" * width + str(len(digits)) + digits


def key_index(key: str, unit: WorkUnit, shard_size: int | None = None) -> int | None:
    """The source index ``key`` encodes if it is a key :func:`sample_key` gives in ``unit`` (for a
    recipe of ``shard_size``; any index width when None), else None."""
    prefix = f"{unit.shard_id:05d}"
    rest = key[len(prefix):]
    if not key.startswith(prefix) or not (rest.isascii() and rest.isdigit()):
        return None
    for width in [index_width(shard_size)] if shard_size is not None else range(4, 11):
        if len(rest) == width:
            index = int(rest)
        elif len(rest) > width + 1 and rest.startswith("9" * width) and len(rest) == width + 1 + int(rest[width]):
            index = int(rest[width + 1:])
        else:
            continue
        if _index_digits(index, width) == rest:
            return index
    return None


class Skipped(SampleError):
    """A source item that does not become a sample, with what is known of it for its record."""

    def __init__(self, reason: str, detail: str = "", caption: str | None = None, screen: Screen | None = None) -> None:
        super().__init__(reason, detail)
        self.caption = caption
        self.screen = screen or Screen()


@dataclass
class Screened:
    """A source item that passed the screens: its clean image, the caption to write, what was found."""

    clean: Image.Image
    caption: str
    screen: Screen


def plan_units(recipe: Recipe, shard_ids: dict[str, list[int]]) -> list[WorkUnit]:
    """Every shard of a build, in the order of the checksum listing: subsets, splits, shard ids."""
    return [WorkUnit(subset.name, split, shard_id) for subset in recipe.subsets for split in SPLITS for shard_id in shard_ids[split]]


def plan_record(units: Sequence[WorkUnit]) -> dict[str, Any]:
    """What ``recipe.json`` records of a plan: each split's shard count (its ids are 0 to count - 1),
    or its ids where they are not."""
    record: dict[str, Any] = {}
    for split in SPLITS:
        ids = sorted({u.shard_id for u in units if u.split == split})
        record[split] = len(ids) if ids == list(range(len(ids))) else ids
    return record


def recorded_plan(record: dict[str, Any]) -> dict[str, list[int]] | None:
    """Each split's shard ids from a ``recipe.json``'s plan (:func:`plan_record`), or None when it
    records none or not a valid one."""
    plan = record.get("plan")
    if not isinstance(plan, dict) or set(plan) != set(SPLITS):
        return None
    ids: dict[str, list[int]] = {}
    for split, value in plan.items():
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PLANNED_SHARDS:
            ids[split] = list(range(value))
        elif isinstance(value, list) and len(value) <= MAX_PLANNED_SHARDS and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value) \
                and value == sorted(set(value)):
            ids[split] = value
        else:
            return None
    return ids


def group_units(units: Sequence[WorkUnit]) -> list[tuple[WorkUnit, ...]]:
    """``units`` by source shard (split, shard id), in the order each source shard first appears:
    a worker builds a group's subsets together, reading and decoding the source once."""
    groups: dict[tuple[str, int], list[WorkUnit]] = {}
    for unit in units:
        groups.setdefault((unit.split, unit.shard_id), []).append(unit)
    return [tuple(group) for group in groups.values()]


class ShardBuilder:
    """Holds the source, renderers and screens made once per worker, and builds shards on demand."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.source = make_source(recipe.source, image_size=recipe.image_size, shard_size=recipe.shard_size, seed=recipe.seed)
        concepts = sorted({c for s in recipe.subsets for c in s.concepts})
        self.renderers = {
            (c, split): make_renderer(c, recipe.concepts.get(c, {}), split, system_fonts=recipe.system_fonts)
            for c in concepts
            for split in SPLITS
        }
        self.source_screen = SourceScreen(recipe.source_screen) if recipe.source_screen.active else None
        #: A mark that changes (almost) no pixel is not labelled (``compositing.MIN_SEEN``): on photos,
        #: a tiled watermark's tone is fitted to the whole image, so tiles over a sky the same tone
        #: vanish. Procedural builds keep the labels their reference checksums pin (icd-tiny holds 4
        #: such tiles among its 10,000 samples).
        self.min_seen = 0.0 if self.source.kind == "procedural" else MIN_SEEN
        self.version = version()

    def plan(self) -> list[WorkUnit]:
        return plan_units(self.recipe, {split: self.source.shard_ids(split) for split in SPLITS})

    def build(self, units: Sequence[WorkUnit], out: Path) -> list[dict[str, Any]]:
        """Write the shards of ``units``, all cut from one source shard (:func:`group_units`): each
        its tar, table and (last) stats. Every item is read, screened, decoded and resized once for
        all of them, and its clean twin encoded once: the same bytes in every subset. Returns the
        stats, in ``units``' order."""
        start = time.perf_counter()
        (split, shard_id), = {(u.split, u.shard_id) for u in units}
        shards: list[_ShardOutput] = []
        with ExitStack() as writers:
            for unit in units:
                shards.append(_ShardOutput(unit, out))
                writers.enter_context(shards[-1].writer)
            for index, item in enumerate(self.source.read(split, shard_id)):
                try:
                    screened = self.screened(item)
                except SampleError as e:
                    for shard in shards:
                        shard.skip(item, sample_key(self.recipe, shard.unit, index), e)
                    continue
                clean_jpg = cache(lambda clean=screened.clean: _encode(clean, "JPEG", self.recipe.jpeg_quality))
                for shard in shards:
                    key = sample_key(self.recipe, shard.unit, index)
                    try:
                        members, meta = self.make_sample(shard.unit, index, key, item, screened, clean_jpg)
                    except SampleError as e:
                        shard.skip(item, key, e)
                    else:
                        shard.add(members, meta)
            return [shard.finish(self.recipe.sha256, table_metadata(self.recipe), start) for shard in shards]

    def screened(self, item: RawItem) -> Screened:
        """The item's clean image and caption once both screens have passed it (``Skipped`` otherwise).
        Captions are screened first: they cost nothing to read."""
        if item.error:
            raise Skipped(item.error, item.detail)
        if item.caption is None or not item.caption.strip():
            raise Skipped("missing_caption", "no caption")
        caption = item.caption.strip()
        verdict = self.recipe.caption_screen.check(caption)
        screen = Screen(caption_names=list(verdict.names), caption_stripped=verdict.stripped)
        if verdict.caption is None:
            raise Skipped(verdict.reason or "caption_names_concept", f"the caption names {', '.join(verdict.names)}", caption, screen)
        try:
            clean = prepare_image(item.image, self.recipe.image_size, self.recipe.min_side, self.source.max_pixels)
        except SampleError as e:
            # Over the source's own cap, which a recipe may raise (not over Pillow's, which it may not).
            ours = e.reason == "too_large" and f"the cap of {self.source.max_pixels}" in e.detail
            cap = raise_cap("max_pixels") if ours and self.source.kind in ("folder", "webdataset") else ""
            raise Skipped(e.reason, f"{e.detail}{cap}", caption, screen) from None
        if self.source_screen is not None:
            screen.source_shows = self.source_screen.shows(clean)
            if screen.source_shows and self.recipe.source_screen.policy == "drop":
                raise Skipped("concept_in_source", f"the source image shows {', '.join(screen.source_shows)}", caption, screen)
        return Screened(clean, verdict.caption, screen)

    def make_sample(
        self, unit: WorkUnit, index: int, key: str, item: RawItem, screened: Screened, clean_jpg: Callable[[], bytes]
    ) -> tuple[dict[str, bytes], SampleMeta]:
        """Item ``index`` of ``unit``'s source shard as a sample; ``clean_jpg`` its clean image's JPEG,
        encoded at most once whatever the number of subsets that need it."""
        subset = self.recipe.subset(unit.subset)
        clean, size = screened.clean, self.recipe.image_size
        seed = self.sample_seed(unit, index)
        composition = self.draw(clean, subset, unit.split, np.random.default_rng(seed))
        meta = SampleMeta(
            key=key,
            caption=screened.caption,
            width=size,
            height=size,
            split=unit.split,
            subset=subset.name,
            source={"kind": self.source.kind, "id": item.source_id, "meta": item.meta},
            instances=composition.instances(self.recipe.min_visible, self.min_seen),
            seed=seed,
            recipe=self.recipe.name,
            recipe_sha256=self.recipe.sha256,
            version=self.version,
            screen=screened.screen,
        )
        # Nothing drawn: the image is the clean twin's pixels, so its bytes are the same.
        drawn = bool(composition.layers)
        image_jpg = _encode(composition.image, "JPEG", self.recipe.jpeg_quality) if drawn else clean_jpg()
        members = {
            "jpg": image_jpg,
            "txt": meta.caption.encode("utf-8"),
            "json": json.dumps(meta.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"),
        }
        if self.recipe.write_clean:
            members["clean.jpg"] = clean_jpg()
        if self.recipe.write_mask:
            members["mask.png"] = _encode(composition.mask(), "PNG") if drawn else _blank_mask(size)
        return members, meta

    def sample_seed(self, unit: WorkUnit, index: int) -> list[int]:
        """The seed of item ``index`` of ``unit``'s source shard: everything drawn for it starts here."""
        subset_index = [s.name for s in self.recipe.subsets].index(unit.subset)
        return [self.recipe.seed, subset_index, SPLITS.index(unit.split), unit.shard_id, index]

    def draw(self, clean: Image.Image, subset: Subset, split: str, rng: np.random.Generator) -> Composition:
        """With probability ``subset.fraction``, composite one to ``subset.instances`` events, each
        of a drawn concept; each renderer sees the image composited so far."""
        composition = Composition(clean)
        if rng.random() < subset.fraction:
            lo, hi = subset.instances
            for _ in range(int(rng.integers(lo, hi + 1))):
                concept = subset.concepts[int(rng.integers(len(subset.concepts)))]
                renderer = self.renderers[(concept, split)]
                composition.add(renderer.render(rng, clean.size, background=composition.image), concept)
        return composition

    def layers(self, unit: WorkUnit) -> Iterator[tuple[int, list[tuple[str, Layer]]]]:
        """(item index, ordered (concept, layer) list) of every usable item of ``unit``, as ``build``
        composites them: a shard is a pure function of the recipe, so its labels can be re-derived."""
        subset = self.recipe.subset(unit.subset)
        for index, item in enumerate(self.source.read(unit.split, unit.shard_id)):
            try:
                clean = self.screened(item).clean
            except SampleError:
                continue
            rng = np.random.default_rng(self.sample_seed(unit, index))
            yield index, self.draw(clean, subset, unit.split, rng).layers


class _ShardOutput:
    """One shard being written: its tar, its table's rows and the counts its stats report."""

    def __init__(self, unit: WorkUnit, out: Path) -> None:
        self.unit, self.out = unit, out
        shard_dir(out, unit).mkdir(parents=True, exist_ok=True)
        self.writer = TarShardWriter(tar_path(out, unit))
        self.rows: list[dict[str, Any]] = []
        self.failures: Counter[str] = Counter()
        self.per_concept: Counter[str] = Counter()
        self.named: Counter[str] = Counter()
        self.shown: Counter[str] = Counter()
        self.samples = self.contaminated = 0

    def add(self, members: dict[str, bytes], meta: SampleMeta) -> None:
        self.writer.write(meta.key, members)
        self.samples += 1
        self.contaminated += meta.contaminated
        self.per_concept.update(i.concept for i in meta.instances)
        self.named.update(meta.screen.caption_names)
        self.shown.update(meta.screen.source_shows)
        self.rows.append(sample_row(meta, self.unit, members["jpg"]))

    def skip(self, item: RawItem, key: str, error: SampleError) -> None:
        skipped = error if isinstance(error, Skipped) else Skipped(error.reason, error.detail)
        self.failures[error.reason] += 1
        self.named.update(skipped.screen.caption_names)
        self.shown.update(skipped.screen.source_shows)
        self.rows.append(skipped_row(self.unit, key, item.source_id, error.reason, error.detail, skipped.caption,
                                     tuple(skipped.screen.caption_names), tuple(skipped.screen.source_shows)))

    def finish(self, recipe_sha256: str, metadata: dict[bytes, bytes], start: float) -> dict[str, Any]:
        """Close the tar, write the table (with the build's ``metadata``), then the stats (last: they
        mark the shard finished). ``duration_s`` is the time since the group's start."""
        sha = self.writer.close()
        table_sha = write_table(parquet_path(self.out, self.unit), self.rows, metadata)
        unit = self.unit
        stats = {
            "shard": unit.name,
            "subset": unit.subset,
            "split": unit.split,
            "count": len(self.rows),
            "successes": self.samples,
            "failed": len(self.rows) - self.samples,
            "failures": dict(sorted(self.failures.items())),
            "contaminated": self.contaminated,
            "instances": dict(sorted(self.per_concept.items())),
            "screened": {"caption_names": dict(sorted(self.named.items())), "source_shows": dict(sorted(self.shown.items()))},
            "sha256": sha,
            "parquet_sha256": table_sha,
            "recipe_sha256": recipe_sha256,
            "duration_s": round(time.perf_counter() - start, 3),
        }
        atomic_write_json(stats_path(self.out, unit), stats)
        return stats


@lru_cache(maxsize=8)
def _blank_mask(size: int) -> bytes:
    """The mask of an image with nothing drawn, encoded once per size."""
    return _encode(Image.new("L", (size, size), 0), "PNG")


def _encode(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """JPEG at ``quality`` without chroma subsampling; PNG (the mask) at zlib level 1: half the time
    of the default level 6 for a file about a third larger (a mask is a few kilobytes either way)."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality, subsampling=0, optimize=False)
    else:
        image.save(buffer, format=fmt, optimize=False, compress_level=1)
    return buffer.getvalue()
