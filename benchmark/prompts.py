"""Evaluation prompts: a CSV in the ESD/I2P style (case_number, prompt, evaluation_seed).

Prompts are clean captions (they never name a concept). For the embedded default they are the
captions of icd-tiny's test split, with the drawn scene kept beside them so prompt-following can be
scored; for a dataset of your own, the captions of its test split.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from builders.recipe import load_recipe
from builders.sources import SOURCES, make_source
from implicit_concept.files import atomic_write_text
from implicit_concept.json_records import parse_json
from implicit_concept.scene.grammar import Scene
from implicit_concept.shard_reader import iter_samples

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
COLUMNS = ("case_number", "prompt", "evaluation_seed", "scene")
#: Image i of a prompt is seeded ``evaluation_seed * 1000 + i``; torch's ``manual_seed`` takes
#: [-2**63, 2**64 - 1], so every i below 1000 stays in range within these bounds.
SEED_RANGE = (-(2**63) // 1000 + 1, (2**64 - 1 - 999) // 1000)


@dataclass(frozen=True)
class Prompt:
    case_number: int
    prompt: str
    evaluation_seed: int
    scene: dict[str, Any] | None = None


def read_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    path = resolve_prompts(path)
    rows: list[Prompt] = []
    # utf-8-sig: a CSV saved by a spreadsheet starts with a byte-order mark, which would hide the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = {"case_number", "prompt", "evaluation_seed"} - set(header)
            if missing:
                raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
            twice = sorted({c for c in header if c in COLUMNS and header.count(c) > 1})
            if twice:
                raise ValueError(f"{path}: column(s) {twice} appear more than once; keep one of each")
            for row in islice(reader, limit):
                line = reader.line_num  # the row's last line: a quoted prompt may span several
                if any(row.get(None) or ()):
                    # Filled fields past the header: an unquoted comma, which would cut a last-column prompt short
                    # (empty ones, a spreadsheet's trailing comma, hold nothing to lose).
                    raise ValueError(f"{path}:{line}: bad row ({len(header) + len(row[None])} fields for the header's "
                                     f"{len(header)}; quote a prompt that holds a comma)")
                try:
                    scene = _scene(row["scene"]) if row.get("scene") else None
                    rows.append(Prompt(_integer(row, "case_number"), row["prompt"], _integer(row, "evaluation_seed"), scene))
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{path}:{line}: bad row ({e})") from None
                if not SEED_RANGE[0] <= rows[-1].evaluation_seed <= SEED_RANGE[1]:
                    raise ValueError(f"{path}:{line}: evaluation_seed {rows[-1].evaluation_seed} is outside {list(SEED_RANGE)} "
                                     f"(seed * 1000 + i must fit torch's manual_seed)")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
        except csv.Error as e:
            raise ValueError(f"{path}: not a CSV ({e})") from None
    numbers = [r.case_number for r in rows]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{path}: case_number values must be unique")
    return rows


def _integer(row: dict[str, Any], column: str) -> int:
    """A decimal integer as written: Python's ``int`` also reads ``1_0`` as 10 (and other digit
    scripts), which would name another case's images."""
    text = row[column]
    if text is None:
        raise ValueError(f"no {column}")
    if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        raise ValueError(f"{column} {text!r} is not a whole number")
    return int(text)


def prompts_sha256(prompts: list[Prompt]) -> str:
    """The content of the prompts scored (each case once, in order): two ICRs compare only on the
    same prompts, and a file's name or count says nothing of its rows."""
    distinct = {p.case_number: p for p in prompts}.values()
    rows = [[p.case_number, p.prompt, p.evaluation_seed, p.scene] for p in distinct]
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def write_prompts(path: Path, prompts: list[Prompt]) -> None:
    """Write the CSV whole or not at all: a run's ``prompts-<subset>.csv`` is read back on resume as
    written, so one cut short by a kill would be scored as fewer prompts."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in prompts:
        writer.writerow([p.case_number, p.prompt, p.evaluation_seed, json.dumps(p.scene, sort_keys=True) if p.scene else ""])
    atomic_write_text(Path(path), text.getvalue())


def _scene(text: str) -> dict[str, Any]:
    """A row's ``scene`` (JSON), checked to be one prompt following can read when the images are
    scored (:meth:`Scene.from_json`), not only after they are drawn."""
    scene = parse_json(text, "scene")  # the one rule for JSON records: a key twice, NaN, nesting
    try:
        Scene.from_json(scene)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError(f"scene: not a scene a procedural recipe writes ({type(e).__name__}: {e})") from None
    return scene


def resolve_prompts(path: str | Path) -> Path:
    """A CSV path (a name ending in ``.csv``), or the name of one shipped in ``benchmark/prompts/``."""
    p = Path(path)
    if p.suffix == ".csv":
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such prompts file")
        return p
    shipped = PROMPTS_DIR / f"{path}.csv"
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"{path}: no such prompts file (shipped: {', '.join(q.stem for q in PROMPTS_DIR.glob('*.csv'))})")


def _check_seed_base(seed_base: int, count: int) -> None:
    """Prompts written with these seeds must read back (:data:`SEED_RANGE`)."""
    if not (SEED_RANGE[0] <= seed_base and seed_base + max(count, 1) - 1 <= SEED_RANGE[1]):
        raise ValueError(f"seed base {seed_base}: the evaluation seeds of {count} prompts must lie in {list(SEED_RANGE)}")


def procedural_prompts(recipe: str, count: int, seed_base: int = 1000) -> list[Prompt]:
    """Captions and scenes of the recipe's procedural test split, as evaluation prompts (what made
    the shipped ``icd-tiny-eval.csv``: ``implicit-concept prompts icd-tiny --count 512``)."""
    _check_seed_base(seed_base, count)
    kind = load_recipe(recipe, check_components=False).source.get("kind")  # first: another source's files are not looked for
    if isinstance(kind, str) and kind in SOURCES and kind != "procedural":
        raise ValueError(f"{recipe}: its source is {kind!r}, and prompts are the scenes of a procedural recipe's test "
                         "split (such as icd-tiny); a track draws another source's test captions with prompts = \"test-split\"")
    r = load_recipe(recipe)
    source = make_source(r.source, image_size=r.image_size, shard_size=r.shard_size, seed=r.seed)
    return [
        Prompt(i, source.scene("test", i).caption, seed_base + i, source.scene("test", i).to_json())
        for i in range(count)
    ]


def shard_prompts(path: str | Path, count: int, seed_base: int = 1000) -> list[Prompt]:
    """Captions of a test split of your own (e.g. data/icd-v1/icd-qrcode/test)."""
    _check_seed_base(seed_base, count)
    prompts = [Prompt(i, s.caption, seed_base + i) for i, s in enumerate(islice(iter_samples(path, with_extras=False), count))]
    if not prompts and count > 0:
        raise ValueError(f"{path}: no samples to take prompts from")
    return prompts
