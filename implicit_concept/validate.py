"""Field checks for configs read from TOML, YAML and JSON, each naming the field it refuses.

Configuration is plain data validated once, at the edge: every loader (recipes, tracks, concept
options, detector scales, training configs) refuses unknown fields and out-of-range values here,
with a message that names the field, so a typo fails in the first second rather than an hour in.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Sequence

from implicit_concept.bounded_reads import read_regular_file
from implicit_concept.json_records import check_nesting, too_deep

#: Seeds go to torch, numpy and Python's random: the range all of them take.
MAX_SEED = 2**32 - 1
#: A name that becomes a folder (a recipe's, a method's): no separators, no leading dot, at most 64.
FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_fields(given: Iterable[str], known: Iterable[str], where: str, error: type[Exception] = ValueError) -> None:
    """Refuse any of ``given`` (a mapping's keys) that is not in ``known``, naming the known field
    each is nearest to (a typo's fix), if any is near."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        named = ", ".join(f"{where}.{u}" if where else u for u in unknown)
        near = {u: close[0] for u in unknown if (close := difflib.get_close_matches(u, known, n=1))}
        hint = "; ".join(f"did you mean {m!r}{'' if len(unknown) == 1 else f' for {u!r}'}?" for u, m in near.items())
        raise error(f"{named}: unknown field{'s' if len(unknown) > 1 else ''}{'; ' + hint if hint else ''} (known: {', '.join(known)})")


def from_table(cls: type, options: Any, where: str) -> Any:
    """A config dataclass from a recipe or track table: a mapping, no unknown field, then its own checks."""
    if not isinstance(options, Mapping):
        raise ValueError(f"{where} must be a table, got {type(options).__name__}")
    check_fields(options, cls.__dataclass_fields__, where)
    return cls(**options)


def check_choice(name: str, value: Any, options: Sequence[Any]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite_number(v: Any) -> bool:
    """What a setting may be: infinity passes an unbounded check (``<= math.inf``), and a record
    writes it as null (strict JSON), so the run it made could not be resumed or compared."""
    return is_number(v) and math.isfinite(v)


def check_range(name: str, value: Any, lo: float = 0.0, hi: float = 1.0, open_lo: bool = True) -> None:
    """Require two numbers ``lo < a <= b <= hi`` (``lo <= a`` when ``open_lo`` is False)."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(is_finite_number(v) for v in value)
        and (value[0] > lo if open_lo else value[0] >= lo)
        and value[0] <= value[1] <= hi
    )
    if not ok:
        op = "<" if open_lo else "<="
        raise ValueError(f"{name}: expected two numbers {lo:g} {op} lo <= hi <= {hi:g}, got {value!r}")


def check_int_range(name: str, value: Any, lo: int, hi: int) -> None:
    """Require two integers ``lo <= a <= b <= hi``."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and lo <= value[0] <= value[1] <= hi
    )
    if not ok:
        raise ValueError(f"{name}: expected two integers {lo} <= lo <= hi <= {hi}, got {value!r}")


def check_number(name: str, value: Any, lo: float, hi: float, open_lo: bool = False) -> None:
    """Require one finite number in ``[lo, hi]`` (``(lo, hi]`` when ``open_lo``)."""
    if not (is_finite_number(value) and (lo < value if open_lo else lo <= value) and value <= hi):
        raise ValueError(f"{name}: expected a number in {'(' if open_lo else '['}{lo:g}, {hi:g}], got {value!r}")


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    """Require one integer in ``[lo, hi]`` (``>= lo`` without ``hi``)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value and (hi is None or value <= hi)):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an integer {bound}, got {value!r}")


def is_names(value: Any) -> bool:
    """Whether ``value`` is a list of strings, the only thing looked up among known names: a list or
    table in a name's place is unhashable, a TypeError traceback instead of the field's error."""
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def check_weights(name: str, value: Any, allowed: Sequence[str]) -> None:
    """Require a mapping from some of ``allowed`` to non-negative numbers, not all zero."""
    ok = (
        isinstance(value, Mapping)
        and set(value) <= set(allowed)
        and all(is_finite_number(v) and v >= 0 for v in value.values())
        and sum(value.values()) > 0
    )
    if not ok:
        raise ValueError(
            f"{name}: expected a mapping from {sorted(allowed)} to weights >= 0 (not all 0), got {value!r}"
        )


def check_folder_name(name: str, value: Any) -> None:
    """Require a name that becomes one folder: letters, digits, ``-``, ``_``, ``.``, not starting
    with a dot (so never empty, ``.`` or ``..``), at most 64 characters: it cannot leave its parent."""
    if not (isinstance(value, str) and FOLDER_NAME.fullmatch(value)):
        raise ValueError(
            f"{name}: expected a folder name (letters, digits, '-', '_', '.', not starting with '.' or '-', "
            f"at most 64 characters), got {value!r}"
        )


def check_str(name: str, value: Any, empty: bool = False) -> None:
    """Require a string (a non-empty one unless ``empty``)."""
    if not isinstance(value, str) or (not empty and not value):
        raise ValueError(f"{name}: expected a{'' if empty else ' non-empty'} string, got {value!r}")


def check_unique(name: str, values: Sequence[Any]) -> None:
    """Require a list with no value twice."""
    twice = sorted({repr(v) for v in values if list(values).count(v) > 1})
    if twice:
        raise ValueError(f"{name}: {', '.join(twice)} given more than once")


def check_finite(where: str, value: Any) -> None:
    """Refuse any NaN or infinite float anywhere in ``value`` (tables and lists walked), naming its path."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_finite(f"{where}.{k}" if where else str(k), v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(f"{where}[{i}]", v)


def check_like_defaults(cls: type, options: Mapping[str, Any], where: str) -> None:
    """Require each of ``options`` to have the type of ``cls``'s default for that field: a bool for a
    bool, an integer (not a float, not a bool) for an int, a finite number for a float, a string for a
    string. Fields whose default is None or a table are left to ``cls``'s own checks."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in options.items():
        default = defaults.get(key, dataclasses.MISSING)
        name = f"{where}.{key}" if where else key
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, want = is_finite_number(value), "a finite number"
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise ValueError(f"{name}: expected {want}, got {value!r}")


def check_positive(where: str, options: Mapping[str, Any], names: Iterable[str]) -> None:
    """Require each of ``names`` present in ``options`` to be a finite number > 0."""
    for key in names:
        if key in options and not (is_finite_number(options[key]) and options[key] > 0):
            raise ValueError(f"{where}.{key}: expected a number > 0, got {options[key]!r}")


#: The largest TOML file read as a config: the shipped ones are a few KB, and one is parsed whole.
MAX_TOML_FILE_BYTES = 1 << 20


def read_toml(path: Path, error: type[Exception] = ValueError, what: str = "file") -> dict[str, Any]:
    """A config file's table, or ``error`` with one line naming the file: a folder, a FIFO or device
    (refused unread: a read would block or never end), over :data:`MAX_TOML_FILE_BYTES`, unreadable,
    not UTF-8 (a byte-order mark, as Notepad saves, is let pass), not TOML (or an integer of more
    digits than Python converts), or nested past :data:`~implicit_concept.json_records.MAX_NESTING`."""
    try:
        data = read_regular_file(Path(path), MAX_TOML_FILE_BYTES)
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a {what}") from None
    except ValueError as e:  # a FIFO, a device or an oversized file, named
        raise error(str(e)) from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or type(e).__name__})") from None
    try:
        table = tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML: {e}") from None
    except ValueError as e:  # an integer past the digits Python converts
        raise error(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise error(str(too_deep(path))) from None
    try:
        check_nesting(table, path)  # the one bound on nesting, as for JSON records
    except ValueError as e:
        raise error(str(e)) from None
    return table
