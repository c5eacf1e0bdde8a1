"""The JSON records every output carries: one strict layout written, bounded objects read, and the
fields two records differ in.

Labs read records with ``JSON.parse``, jq and pandas, so every one is strict JSON in UTF-8
(:func:`json_text`); a record handed over is read by one strict rule, bounded, and checked to be an
object (:func:`parse_json`, :func:`read_json_object`); every "did the config change?" check names the
fields that differ (:func:`json_differences`).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from implicit_concept.bounded_reads import read_regular_file


def json_text(obj: Any) -> str:
    """The one JSON layout of every record the project writes: sorted keys, indented, UTF-8, and
    strict JSON, as ``JSON.parse``, jq and every other parser read it: a number that is not finite
    (NaN, infinity: Python's ``json`` would write tokens no other parser takes) is ``null``, and a
    lone surrogate (a file name that is not UTF-8, as Python holds one) its ``\\uDCxx`` escape, which
    ``json.loads`` reads back as the same name (its bytes would not be UTF-8)."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # only lone surrogates fail to encode


def finite_json(value: Any) -> Any:
    """``value`` with every float that is not finite (NaN, infinity) replaced by None, at any depth
    (dicts, lists, tuples): JSON has no such number, and ``null`` is what ``JSON.stringify`` writes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


#: The largest JSON file read as a record, state or config: far above any the project writes (the
#: tiny track's results.json is 250 KB), and parsed whole, so a file handed over cannot take the memory.
MAX_JSON_FILE_BYTES = 64 << 20
#: The deepest nesting of objects (tables) and lists read from a record or config: far above any the
#: project reads (results.json nests 9 deep), and far below Python's recursion limit, which every
#: reader that walks a record shares.
MAX_NESTING = 100


class _Refused(ValueError):
    """What the parser's hooks raise: JSON that parses, but that readers would take differently."""


def parse_json(text: bytes | str, where: str | Path, *, non_finite: bool = False) -> Any:
    """The value of strict JSON text (UTF-8 bytes or a string) from ``where`` (a file, a shard's
    member), or ValueError naming ``where`` and the problem in one line: bad UTF-8, bad JSON, a key
    twice in one object (Python keeps the last, other readers the first or refuse it), NaN or
    infinity (not JSON: Python alone reads them, and :func:`json_text` never writes them), or
    nesting past :data:`MAX_NESTING`. ``non_finite``: NaN and infinity are read as Python reads them,
    for the one kind of file that held them before every record was strict JSON (a training state's
    index, whose NaN must come back as NaN)."""
    numbers = {} if non_finite else {"parse_constant": _not_a_number, "parse_float": _finite_float}
    try:
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text, object_pairs_hook=_unique_keys, **numbers)
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not valid JSON (not UTF-8: byte {e.object[e.start:e.start + 1]!r} at offset {e.start})") from None
    except _Refused as e:
        raise ValueError(f"{where}: {e}") from None
    except ValueError as e:  # bad JSON, or an integer over Python's 4300 digits
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise too_deep(where) from None
    check_nesting(value, where)
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        twice = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise _Refused(f"key {twice!r} appears twice in one object (JSON readers differ on which one counts)")
    return obj


def _not_a_number(token: str) -> Any:
    raise _Refused(f"{token} is not JSON (a number is finite; null stands for a missing one)")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(f"number {token[:40]} is beyond a double's range (not finite)")
    return value


def check_nesting(value: Any, where: str | Path) -> None:
    """Refuse, naming ``where``, a parsed record or config (JSON, TOML) whose dicts and lists nest past
    :data:`MAX_NESTING`; walked without recursion, so no depth makes this raise RecursionError."""
    level, depth = ([value] if isinstance(value, (dict, list)) else []), 1
    while level:  # one level at a time: no tuple per container (a tokenizer.json holds 50 000 lists)
        if depth > MAX_NESTING:
            raise too_deep(where)
        level = [c for item in level for c in (item.values() if isinstance(item, dict) else item) if isinstance(c, (dict, list))]
        depth += 1


def too_deep(where: str | Path) -> ValueError:
    """What :func:`check_nesting` raises, for a parser that ran out of recursion on ``where`` first."""
    return ValueError(f"{where}: nested too deeply (more than {MAX_NESTING} levels of objects and lists)")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a file someone may have handed over or edited, by :func:`parse_json`'s rule;
    ValueError names the file unless it is one (FileNotFoundError, and IsADirectoryError for a folder,
    pass through, for the caller to say what was expected there). At most :data:`MAX_JSON_FILE_BYTES`,
    from a regular file (:func:`read_regular_file`: a FIFO or device refused unread)."""
    value = parse_json(read_regular_file(Path(path), MAX_JSON_FILE_BYTES), path)
    if not isinstance(value, dict):
        raise ValueError(f"{path}: holds a JSON {type(value).__name__}, not an object")
    return value


def read_json_object_or_none(path: Path) -> dict[str, Any] | None:
    """:func:`read_json_object`, or None where there is none to read (missing, unreadable, damaged,
    not an object): a shard's stats, a drawing's record or an export's marker that is not there or
    not whole means the same, that this output is not one to keep, and it is made anew."""
    try:
        return read_json_object(path)
    except (OSError, ValueError):
        return None


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: In :func:`json_changes`, the side of a change that has no such key (or list item).
MISSING: Any = _Missing()


def json_changes(old: Any, new: Any, *, into_lists: bool = False, where: str = "") -> list[tuple[str, Any, Any]]:
    """``(path, old value, new value)`` wherever two JSON values differ: objects are compared key by
    key (``a.b``; a key only one side has is :data:`MISSING` on the other), any other value whole.
    ``into_lists``: lists that hold objects or lists are compared item by item too (``a[3].b``).
    Two values the same at the top: no change; differing there, the path is ``(the whole record)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append((path, old.get(key, MISSING), new.get(key, MISSING)))
            else:
                out += json_changes(old[key], new[key], into_lists=into_lists, where=path)
        return out
    if into_lists and isinstance(old, list) and isinstance(new, list) and any(isinstance(v, (dict, list)) for v in old + new):
        out = []
        for i in range(max(len(old), len(new))):
            a, b = (old[i] if i < len(old) else MISSING), (new[i] if i < len(new) else MISSING)
            path = f"{where}[{i}]"
            out += [(path, a, b)] if a is MISSING or b is MISSING else json_changes(a, b, into_lists=True, where=path)
        return out
    return [] if old == new else [(where or "(the whole record)", old, new)]


def json_differences(old: Any, new: Any, *, into_lists: bool = False) -> list[str]:
    """The paths at which two JSON values differ (:func:`json_changes`): what every "did the config
    change?" check names."""
    return [path for path, _, _ in json_changes(old, new, into_lists=into_lists)]


def shown_differences(paths: Sequence[str], show: int = 8) -> str:
    """``paths`` for a message: the first ``show``, then how many more."""
    return ", ".join(paths[:show]) + (f" and {len(paths) - show} more" if len(paths) > show else "")
