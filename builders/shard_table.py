"""What a shard's parquet holds: one row per source item it read, img2dataset's per-sample status.

A row is a sample written to the tar (``status`` "success", ``sha256`` of its ``KEY.jpg``) or an
item that was not, with why: ``reason`` (the key counted in the stats' failures), ``error_message``
(the full text) and a status in img2dataset's spirit, so tools that filter on ``status`` work:

- ``failed_to_read``: the source could not hand the item over (img2dataset's ``failed_to_download``):
  a missing or unreadable file or caption, a tar member over its cap, a corrupt tar;
- ``failed_to_decode``: the image did not decode or resize (img2dataset's ``failed_to_resize``);
- ``filtered``: a screen dropped it (its caption names a concept, its image already shows one).

The columns and their types are fixed (:data:`SCHEMA`), whatever a shard holds, so every shard's
table and the manifest read back alike.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from implicit_concept.files import atomic_write_bytes
from implicit_concept.provenance import version as provenance_version
from implicit_concept.sample import SampleMeta

if TYPE_CHECKING:
    from builders.shard_builder import WorkUnit

SCHEMA = pa.schema([
    ("subset", pa.string()),
    ("split", pa.string()),
    ("shard", pa.string()),
    ("key", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("error_message", pa.string()),
    ("caption", pa.string()),
    ("contaminated", pa.bool_()),
    ("concepts", pa.string()),
    ("num_instances", pa.int64()),
    ("instances", pa.string()),
    ("source_id", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("sha256", pa.string()),
    ("caption_names", pa.string()),
    ("source_shows", pa.string()),
])
COLUMNS = SCHEMA.names

#: The reasons a screen gives; every other reason of the resizer's is a decode failure.
FILTERED = ("caption_names_concept", "caption_empty_after_screen", "concept_in_source")
DECODE_FAILURES = (
    "unreadable_image", "truncated_image", "too_large", "unsupported_mode", "unsupported_format", "too_many_chunks",
    "too_small", "decoder_failed",
)


def status_of(reason: str) -> str:
    if reason in FILTERED:
        return "filtered"
    return "failed_to_decode" if reason in DECODE_FAILURES else "failed_to_read"


def sample_row(meta: SampleMeta, unit: "WorkUnit", image: bytes) -> dict[str, Any]:
    """The row of a sample written to the tar; ``image`` is its ``KEY.jpg``."""
    return {
        "subset": unit.subset,
        "split": unit.split,
        "shard": unit.name,
        "key": meta.key,
        "status": "success",
        "reason": None,
        "error_message": None,
        "caption": meta.caption,
        "contaminated": meta.contaminated,
        "concepts": ",".join(meta.concepts),
        "num_instances": len(meta.instances),
        "instances": json.dumps([{**i.to_json(meta.width, meta.height), "params": i.params} for i in meta.instances], sort_keys=True),
        "source_id": meta.source["id"],
        "width": meta.width,
        "height": meta.height,
        "sha256": hashlib.sha256(image).hexdigest(),
        "caption_names": ",".join(meta.screen.caption_names),
        "source_shows": ",".join(meta.screen.source_shows),
    }


def skipped_row(
    unit: "WorkUnit", key: str, source_id: str, reason: str, detail: str, caption: str | None = None,
    caption_names: tuple[str, ...] = (), source_shows: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The row of a source item that did not become a sample, and why."""
    return {
        "subset": unit.subset,
        "split": unit.split,
        "shard": unit.name,
        "key": key,
        "status": status_of(reason),
        "reason": reason,
        "error_message": _utf8(f"{reason}: {detail}" if detail else reason),
        "caption": None if caption is None else _utf8(caption),
        "contaminated": False,
        "concepts": "",
        "num_instances": 0,
        "instances": "[]",
        "source_id": _utf8(source_id),
        "width": None,
        "height": None,
        "sha256": None,
        "caption_names": ",".join(caption_names),
        "source_shows": ",".join(source_shows),
    }


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can hold it: a file name in another encoding (lone surrogates, as Python
    reads it) keeps its bytes as ``\\xff`` escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no byte became (a JSON escape such as \ud800)
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


#: The schema metadata of every parquet a build writes (``pq.read_schema(path).metadata``): what made
#: it, with no timestamp, so the same build writes the same bytes.
METADATA_KEYS = (b"implicit_concept.recipe", b"implicit_concept.recipe_sha256", b"implicit_concept.seed",
                 b"implicit_concept.version")


def table_metadata(recipe: Any, env: dict[str, Any] | None = None) -> dict[bytes, bytes]:
    """A build's parquet metadata: its recipe's name, sha256 and seed, and the implicit-concept
    version ``env`` (the build record's environment) names, else this process's (a resume under
    other versions is refused, so a worker's is the build's)."""
    packages = env.get("packages") if isinstance(env, dict) else None
    version = packages.get("implicit-concept") if isinstance(packages, dict) else None
    if not isinstance(version, str):
        version = provenance_version()
    values = (str(recipe.name), str(recipe.sha256), str(recipe.seed), version)
    return {k: v.encode("utf-8") for k, v in zip(METADATA_KEYS, values)}


def parquet_bytes(table: pa.Table, metadata: dict[bytes, bytes] | None = None) -> bytes:
    """``table`` as a parquet file's bytes, its schema metadata replaced by ``metadata``: the one
    writer of shard tables and the manifest."""
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buffer)
    return buffer.getvalue()


def table_bytes(rows: list[dict[str, Any]], metadata: dict[bytes, bytes] | None = None) -> bytes:
    return parquet_bytes(pa.Table.from_pylist(rows, schema=SCHEMA), metadata)


def write_table(path: Path, rows: list[dict[str, Any]], metadata: dict[bytes, bytes] | None = None) -> str:
    """Write the table of ``rows`` to ``path`` with ``metadata`` (:func:`table_metadata`); returns
    its sha256 (the shard's stats record it)."""
    data = table_bytes(rows, metadata)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()
