"""What changes between two plans (or a plan and a checkpoint's record of one): the leaves of their JSON that differ.

Each difference is named the way the Plan's fields are: `batch.accumulation`; frozen options and
other (key, value) tables by key (`model.config.d_model`, `sharding.rules.embed`); parameter rows
by their path (`sharding.params[blocks.attn.q.kernel].spec`); other lists of records by position
when both have as many (`lints[0].message`); lists of plain values whole (`mesh.shape`).
"""

from __future__ import annotations

from typing import Any

# Fields holding (key, value) pairs (frozen mappings), compared by key; nested options are frozen the same way.
PAIR_TABLES = ("model.config", "sharding.rules", "memory.compiled", "memory.breakdown")


def _is_pairs(path: str, v: Any) -> bool:
    in_table = any(path == t or path.startswith(t + ".") for t in PAIR_TABLES)
    return in_table and isinstance(v, list) and bool(v) and \
        all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) for x in v)


def _is_rows(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) and isinstance(x.get("path"), str) for x in v)


def json_diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(name, old, new) for every leaf that differs between two plan JSON values; a missing leaf is None."""
    if _is_pairs(path, old) or _is_pairs(path, new):
        old, new = (dict(v) if _is_pairs(path, v) else v for v in (old, new))
    if _is_rows(old) and _is_rows(new):
        rows_old, rows_new = ({x["path"]: {k: y for k, y in x.items() if k != "path"} for x in v} for v in (old, new))
        out = []
        for k in rows_old | rows_new:  # the table's order, rows only in `new` last
            out += json_diff(rows_old.get(k), rows_new.get(k), f"{path}[{k}]")
        return out
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(old.keys() | new.keys()):
            out += json_diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) \
            and any(isinstance(x, (dict, list)) for x in old + new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += json_diff(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [(path, old, new)]


def plan_diff(a, b) -> list[tuple[str, Any, Any]]:
    """(name, value in plan a, value in plan b) for every leaf that differs, in the Plan's field order by name."""
    return json_diff(a.to_json(), b.to_json())
