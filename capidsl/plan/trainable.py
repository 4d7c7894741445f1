"""Which parameters train: `training.trainable`'s glob patterns resolved against the plan's parameter table.

A pattern is an `fnmatch` glob over a parameter's dotted path (`blocks.attn.q.kernel`); `*` crosses
dots, so `blocks.*` is every parameter of the blocks and `*.bias` every bias. A pattern also names
a module: it matches every parameter under a leading part of the path (`lm_head` is `lm_head.kernel`,
`blocks.attn` all of attention). Parameters no pattern matches are frozen: no gradient, no
optimizer state, never changed. Low-rank adapters (model.lora) always train. Patterns are resolved
once, here; the plan records the frozen paths.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from fnmatch import fnmatchcase

from capidsl.models.family import is_adapter
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import ShardingPlan

SHOWN = 6  # parameter paths a "matches nothing" error lists


def matches(pattern: str, path: str) -> bool:
    """The pattern matches the whole path or a module of it (the path up to one of its dots)."""
    parts = path.split(".")
    return any(fnmatchcase(".".join(parts[:n]), pattern) for n in range(len(parts), 0, -1))


def frozen_params(patterns: tuple[str, ...] | None, sharding: ShardingPlan, where) -> tuple[str, ...]:
    """The paths of the parameters that `patterns` leave frozen, in the table's order; () when all train.

    A model with low-rank adapters (model.lora) trains its adapters always and, without patterns,
    nothing else; patterns then name the base parameters that train beside them (norms, say).
    A pattern that matches no parameter is a PlanError at its list item; an empty list (nothing would
    train) at the key. Patterns that each match something always leave something to train."""
    paths = [p.path for p in sharding.params]
    adapters = {path for path in paths if is_adapter(path)}
    if adapters and not patterns:
        return tuple(path for path in paths if path not in adapters)
    if patterns is None:
        return ()
    if not patterns:
        raise PlanError("is empty: no parameter would train", subject="training.trainable",
                        location=where("training.trainable"),
                        hint="leave training.trainable out (or null) to train every parameter")
    for i, pattern in enumerate(patterns):
        if not any(matches(pattern, path) for path in paths):
            close = difflib.get_close_matches(pattern, _names(paths), n=1)
            raise PlanError(f"{pattern!r} matches no parameter of this model", subject=f"training.trainable[{i}]",
                            location=where(f"training.trainable[{i}]"),
                            hint=(f"did you mean {close[0]!r}? " if close else "")
                            + f"patterns are globs over dotted parameter paths, such as {_some(paths)}")
    return tuple(path for path in paths
                 if path not in adapters and not any(matches(pattern, path) for pattern in patterns))


def trained(sharding: ShardingPlan, frozen: tuple[str, ...]) -> ShardingPlan:
    """The sharding table without the frozen parameters: what pruning may touch."""
    if not frozen:
        return sharding
    out = set(frozen)
    return replace(sharding, params=tuple(p for p in sharding.params if p.path not in out))


def _some(paths: list[str]) -> str:
    """A few paths spread over the whole table (it is sorted: the first few would all be one module's)."""
    if len(paths) <= SHOWN:
        return ", ".join(paths)
    picked = [paths[round(i * (len(paths) - 1) / (SHOWN - 1))] for i in range(SHOWN)]
    return ", ".join(picked) + f" ({len(paths)} in all; `capidsl plan` lists them)"


def _names(paths: list[str]) -> list[str]:
    """What a pattern could have meant: every path, and every module as itself and as `module.*`."""
    modules = {".".join(p.split(".")[:n]) for p in paths for n in range(1, p.count(".") + 1)}
    return paths + sorted(modules) + sorted(m + ".*" for m in modules)
