"""What changes between two plans: the leaves of their JSON that differ, by dotted path."""

from __future__ import annotations

from typing import Any


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "path" in v for v in value):
        for v in value:  # parameter rows: keyed by their path, not by position
            _flatten({k: x for k, x in v.items() if k != "path"}, f"{prefix}[{v['path']}]", out)
    else:
        out[prefix] = value


def plan_diff(a, b) -> list[tuple[str, Any, Any]]:
    """(path, value in a, value in b) for every leaf that differs; a missing leaf is None."""
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    _flatten(a.to_json(), "", fa)
    _flatten(b.to_json(), "", fb)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)]
