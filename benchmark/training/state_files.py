"""Training state as plain data: a JSON tree beside a safetensors file holding the tensors it names.

A resume reads every file of a checkpoint, and a checkpoint folder may sit on a shared filesystem
where anyone can plant a file. Pickle (``torch.save``, accelerate's ``save_state``) runs code on load,
and ``weights_only`` only narrows what it runs. Reading JSON and safetensors builds dicts, lists,
numbers, strings and tensors and nothing else, so a crafted file can at worst fail to load.

A state dict is written as ``STEM.json`` and ``STEM.safetensors``. In the JSON tree, lists, strings,
numbers, booleans and null are themselves; every JSON object is a one-key tag for what JSON lacks:
``{"dict": [[key, value], ...]}`` (keys keep their type, as an optimizer's integer ids),
``{"tuple": [...]}``, ``{"tensor": name}`` (in the safetensors file, dtype and bytes exact) and
``{"ndarray": {"dtype": ..., "data": [...]}}`` (numpy's RNG state). Python floats round-trip
exactly through JSON's shortest repr, so a state reloads bit for bit.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from implicit_concept.bounded_reads import read_regular_file
from implicit_concept.disk_space import size_text, writing
from implicit_concept.files import atomic_write_json
from implicit_concept.json_records import MAX_JSON_FILE_BYTES, parse_json

JSON_SUFFIX = ".json"
TENSORS_SUFFIX = ".safetensors"
_NDARRAY_KINDS = "biuf"


def save_state(stem: Path, state: Any) -> None:
    """Write ``state`` (a state dict of containers, scalars, tensors and numpy arrays) as
    ``stem.json`` and ``stem.safetensors``; anything else raises, naming the file."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, stem.with_suffix(JSON_SUFFIX))
    with writing(stem.with_suffix(TENSORS_SUFFIX)):
        save_file(tensors, str(stem.with_suffix(TENSORS_SUFFIX)))
    atomic_write_json(stem.with_suffix(JSON_SUFFIX), tree)


def load_state(stem: Path, most: int | None = None) -> Any:
    """The state written by :func:`save_state` at ``stem``, its tensors on the CPU; a missing or
    malformed file raises ``ValueError`` naming it, and so does a tensor file of over ``most`` bytes,
    unread: every tensor is read whole, so a huge (or sparse and huge) file would fill the memory
    before any check of what it holds."""
    index, tensor_file = stem.with_suffix(JSON_SUFFIX), stem.with_suffix(TENSORS_SUFFIX)
    for path in (index, tensor_file):
        if not path.is_file():
            raise ValueError(f"{path}: missing from the checkpoint")
    if most is not None and (size := tensor_file.stat().st_size) > most:
        raise ValueError(f"{tensor_file}: {size_text(size)}, more than a whole checkpoint of this run holds ({size_text(most)}); "
                         "not this run's state (refused unread)")
    try:
        tree = parse_json(read_regular_file(index, MAX_JSON_FILE_BYTES), index, non_finite=True)  # as written before the float tag
    except ValueError as e:
        raise ValueError(f"{index}: not a JSON state index ({str(e).removeprefix(f'{index}: ')})") from None
    try:
        tensors = load_file(str(tensor_file))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{tensor_file}: not a safetensors file ({e})") from None
    try:
        return _decode(tree, tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"{index}: malformed state ({type(e).__name__}: {e})") from None


#: A float that is not finite, as a tag's text: strict JSON, as every record is, holds no such number.
_NOT_FINITE = ("nan", "inf", "-inf")


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"tensor": name}
    if isinstance(value, np.ndarray) and value.dtype.kind in _NDARRAY_KINDS:
        data = [x if not isinstance(x, float) or math.isfinite(x) else repr(x) for x in value.ravel().tolist()]  # numpy reads the text back
        return {"ndarray": {"dtype": value.dtype.str, "shape": list(value.shape), "data": data}}
    if isinstance(value, list):
        return [_encode(v, tensors, where) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors, where) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors, where), _encode(v, tensors, where)] for k, v in value.items()]}
    raise TypeError(f"{where}: cannot write a {type(value).__name__} as plain data")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(f"a JSON object must be one tag, not {sorted(node) if isinstance(node, dict) else node!r}")
    (tag, body), = node.items()
    if tag == "tensor":
        return tensors[body]
    if tag == "float":
        if body not in _NOT_FINITE:
            raise ValueError(f"a float tag holds {body!r}, not one of {list(_NOT_FINITE)}")
        return float(body)
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in _a_list(body))
    if tag == "dict":
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in (_a_pair(p) for p in _a_list(body))}
    if tag == "ndarray":
        dtype = np.dtype(body["dtype"])
        if dtype.kind not in _NDARRAY_KINDS:
            raise ValueError(f"ndarray of dtype {dtype} is not plain numbers")
        return np.asarray(body["data"], dtype=dtype).reshape(body["shape"])
    raise ValueError(f"unknown tag {tag!r}")


def _a_list(body: Any) -> list[Any]:
    if not isinstance(body, list):
        raise TypeError(f"expected a list, found {type(body).__name__}")
    return body


def _a_pair(pair: Any) -> list[Any]:
    if not isinstance(pair, list) or len(pair) != 2:
        raise ValueError(f"a dict item must be [key, value], not {pair!r}")
    return pair


def _hashable(key: Any) -> Any:
    if not isinstance(key, (str, int, float, bool, type(None))):
        raise TypeError(f"a dict key must be a string or a number, not {type(key).__name__}")
    return key
