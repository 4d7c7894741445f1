"""The base of every AST node: JSON round-trip by field, and the registry `from_json` reads.

A node's JSON is `{"type": ClassName, field: value, ...}` over the fields that take part in
equality; source positions (`span`, `source`) are left out, so `from_json(x.to_json()) == x`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_REGISTRY: dict[str, type] = {}


class Node:
    """Mixin for the frozen dataclasses of the language."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.compare:
                data[f.name] = _dump(getattr(self, f.name))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        node = node_from_json(data)
        if not isinstance(node, cls):
            raise ValueError(f"expected a {cls.__name__} in JSON, found {type(node).__name__}")
        return node


def node_from_json(data: dict[str, Any]) -> Node:
    """Rebuild any node from its `to_json()` form."""
    if not isinstance(data, dict) or data.get("type") not in _REGISTRY:
        raise ValueError(f"not the JSON of a language node: {data!r:.200}")
    cls = _REGISTRY[data["type"]]
    args = {k: _load(v) for k, v in data.items() if k != "type"}
    return cls(**args)


def _dump(value: Any) -> Any:
    if isinstance(value, Node):
        return value.to_json()
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    return value


def _load(value: Any) -> Any:
    if isinstance(value, dict) and "type" in value:
        return node_from_json(value)
    if isinstance(value, list):
        return tuple(_load(v) for v in value)
    return value
