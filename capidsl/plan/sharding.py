"""Per-parameter sharding: logical axes (from the model) → mesh axes (from the rules) → a MeshSpec.

Default rules follow MaxText's: the batch over (data, fsdp); FSDP splits the model dimension
(`embed`) of every weight; tensor parallelism splits heads, MLP hidden units and the vocabulary
(Megatron-style); the stacked-layers axis and norms stay whole. A mesh axis is used at most once
per array; an axis of size 1 is left out. A dimension its axes do not divide is an error that
names the parameter: silently replicating it would break the memory estimate.
"""

from __future__ import annotations

import math

import numpy as np

from capidsl.plan.errors import PlanError
from capidsl.plan.plan import MeshPlan, MeshSpec, ParamSharding, ShardingPlan

BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "hidden": ("tensor",),
    "state": ("tensor",),  # a recurrence's state channels: elementwise, so they split like MLP units
    "input": ("fsdp",),
    "classes": (),
    "norm": (),
    "layers": (),
}


def rules_with(overrides: dict) -> dict[str, tuple[str, ...]]:
    """The default rules with the recipe's `mesh.rules` (a logical axis → a mesh axis, a list, or null)."""
    rules = dict(DEFAULT_RULES)
    for name, axes in (overrides or {}).items():
        if axes is None:
            rules[name] = ()
        elif isinstance(axes, str):
            rules[name] = (axes,)
        else:
            rules[name] = tuple(axes)
    return rules


def place(path: str, shape, logical_axes, mesh: MeshPlan, rules) -> MeshSpec:
    """The mesh axes each dimension of one parameter is split over."""
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, logical_axes):
        axes = tuple(a for a in rules.get(name or "", ()) if mesh.size(a) > 1 and a not in used)
        ways = math.prod(mesh.size(a) for a in axes)
        if axes and dim % ways:
            layout = "×".join(f"{a}={mesh.size(a)}" for a in axes)
            raise PlanError(f"parameter {path} {tuple(shape)}: its {name!r} dimension ({dim}) does not divide "
                            f"over {layout}", subject=path,
                            hint=f"change the mesh, or map {name!r} elsewhere in mesh.rules (null keeps it whole)")
        used.update(axes)
        spec.append(axes)
    return tuple(spec)


def batch_spec(mesh: MeshPlan, rules) -> MeshSpec:
    return (tuple(a for a in rules.get("batch", BATCH_AXES) if mesh.size(a) > 1),)


def plan_sharding(table, mesh: MeshPlan, rules) -> ShardingPlan:
    """Every parameter of `table` (capidsl.models.ParamInfo rows) placed on `mesh`."""
    params = []
    for info in table:
        spec = place(info.path, info.shape, info.logical_axes, mesh, rules)
        local = math.prod(d // math.prod(mesh.size(a) for a in axes) for d, axes in zip(info.shape, spec))
        params.append(ParamSharding(path=info.path, shape=tuple(info.shape), dtype=str(info.dtype),
                                    logical_axes=tuple(info.logical_axes), spec=spec,
                                    bytes_per_device=local * np.dtype(info.dtype).itemsize))
    return ShardingPlan(rules=tuple(sorted(rules.items())), params=tuple(params), batch_spec=batch_spec(mesh, rules))
