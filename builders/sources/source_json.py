"""A source sample's JSON metadata (img2dataset's ``KEY.json``), read with bounds: it is copied into
our ``KEY.json``, so what a strict reader would refuse is made null or refused here, once, for
every kind of source."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

from implicit_concept.shard_reader import MAX_JSON_BYTES

#: A sample's JSON metadata is copied into KEY.json: refused above MAX_JSON_BYTES or this nesting.
MAX_JSON_DEPTH = 32


#: Sidecars built to hurt: the sample is skipped. Any other problem keeps it, flagged ``json_error``.
SKIPPED = ("json_too_large", "json_too_deep")


def read_source_json(data: bytes) -> tuple[dict[str, Any], str | None]:
    """``(meta, skipped)``: what a sample's JSON adds to its source meta (``{"json": ...}``, or
    ``{"json_error": "invalid_json"}``), or the reason the sample is skipped (one of :data:`SKIPPED`)."""
    parsed, error = _parse(data)
    if error in SKIPPED:
        return {}, error
    return ({"json_error": error} if error else {"json": parsed}), None


def _parse(data: bytes) -> tuple[Any, str | None]:
    """The parsed JSON, or why not: ``json_too_large``, ``json_too_deep``, ``invalid_json``.

    ``NaN``, ``Infinity`` and ``-Infinity`` (img2dataset writes them, e.g. a LAION similarity) are not
    JSON, and a strict reader of our KEY.json would refuse them: each becomes ``null``, and so does
    a number too large for a double, whether written with an exponent (``1e999``, which would be
    written back as ``Infinity``) or in 400 digits (which a reader parsing numbers as doubles, as
    JavaScript does, reads as infinity, and past 4300 digits Python refuses)."""
    if len(data) > MAX_JSON_BYTES:
        return None, "json_too_large"
    try:
        parsed = json.loads(data, parse_constant=_null, parse_float=_finite, parse_int=_finite_int)
    except RecursionError:
        return None, "json_too_deep"
    except ValueError:
        return None, "invalid_json"
    if _depth(parsed) > MAX_JSON_DEPTH:
        return None, "json_too_deep"
    if not encodable(json.dumps(parsed, ensure_ascii=False, allow_nan=False)):
        return None, "invalid_json"
    return parsed, None


def _null(constant: str) -> None:
    """What a non-standard JSON constant (``NaN``, ``Infinity``, ``-Infinity``) is read as."""
    return None


def _finite(text: str) -> float | None:
    """A JSON number with a fraction or exponent, or null where a double cannot hold it."""
    value = float(text)
    return value if math.isfinite(value) else None


def _finite_int(text: str) -> int | None:
    """A JSON integer, exactly, or null where a double cannot hold it (``float`` has no digit limit)."""
    return int(text) if math.isfinite(float(text)) else None


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def encodable(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 once written: tar names and JSON escapes may carry lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_caption_hint(meta: Mapping[str, Any], json_name: str | None, caption_name: str) -> str:
    """For a sample without its caption file whose JSON holds a caption (``{"caption": ...}``, as
    img2dataset writes it beside KEY.txt): the text its ``missing_caption`` record ends with."""
    found = meta.get("json")
    fields = [f for f in ("caption", "text", "prompt", "alt") if isinstance(found, dict) and isinstance(found.get(f), str)]
    if not fields or json_name is None:
        return ""
    return f"; {json_name} has a {fields[0]!r} field, but the caption is read from {caption_name} only, not from the JSON"
