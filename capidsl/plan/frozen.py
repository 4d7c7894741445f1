"""JSON round-trip for frozen dataclasses, driven by their type hints.

The Plan crosses process and time boundaries (plan.json, checkpoints), so every field must
serialise to canonical JSON and load back to an equal object. Supported field types: str, int,
float, bool, None, tuples (homogeneous `tuple[T, ...]` or fixed `tuple[A, B]`), `X | None`,
nested frozen dataclasses, and any class with `to_json()` / `from_json(obj)` (the language ASTs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Union, get_args, get_origin, get_type_hints


def to_jsonable(value: Any) -> Any:
    """Turn a frozen dataclass tree into plain JSON data (dicts, lists, scalars)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "to_json") and not isinstance(value, type):
        return value.to_json()
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        raise ValueError("NaN cannot be part of a plan")
    return value


def from_jsonable(tp: Any, data: Any) -> Any:
    """Rebuild a value of type `tp` from what `to_jsonable` produced."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if data is None:
            return None
        if len(args) == 1:
            return from_jsonable(args[0], data)
        for a in args:  # first that fits, scalars only (unions of classes are not used in the Plan)
            if a in (int, float, str, bool) and isinstance(data, a):
                return data
        return data
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], d) for d in data)
        return tuple(from_jsonable(a, d) for a, d in zip(args, data))
    if tp is Any or tp is typing.Any:
        return _freeze(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = get_type_hints(tp)
        return tp(**{f.name: from_jsonable(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data})
    if isinstance(tp, type) and hasattr(tp, "from_json"):
        return tp.from_json(data)
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def _freeze(data: Any) -> Any:
    if isinstance(data, list):
        return tuple(_freeze(d) for d in data)
    if isinstance(data, dict):
        return tuple((k, _freeze(v)) for k, v in data.items())
    return data


def canonical_json(data: Any) -> str:
    """One byte-exact JSON text per value: sorted keys, no spaces, repr-exact floats."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(data: Any) -> str:
    """A stable short hash of JSON data (sha256 of the canonical text, 16 hex digits)."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:16]
