"""The device mesh and named shardings, exactly as the plan lays them out."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from capidsl.exec.errors import RunError
from capidsl.plan.plan import MeshSpec, Plan


def build_mesh(plan: Plan, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The plan's mesh over `devices` (default: every device of the job), with Auto axes.

    Auto (GSPMD-style) axes, not jax's default Explicit ones: with Explicit axes ordinary flax code
    fails on the embedding gather (see STACK.md).
    """
    devices = list(jax.devices() if devices is None else devices)
    want = plan.mesh.device_count
    if len(devices) != want:
        layout = " × ".join(f"{a}={s}" for a, s in zip(plan.mesh.axes, plan.mesh.shape))
        raise RunError(
            f"the plan's mesh ({layout}) needs {want} devices, but this run has {len(devices)}",
            subject="mesh",
            hint="re-plan for the live machine (`capidsl plan`/`capidsl run` on the recipe, not an old plan.json)",
        )
    axis_types = (AxisType.Auto,) * len(plan.mesh.axes)
    return jax.make_mesh(tuple(plan.mesh.shape), tuple(plan.mesh.axes), axis_types=axis_types, devices=devices)


def to_partition_spec(spec: MeshSpec) -> PartitionSpec:
    """Per dimension: no axes → None, one axis → its name, several → a tuple of names."""
    return PartitionSpec(*(axes[0] if len(axes) == 1 else (tuple(axes) or None) for axes in spec))


def named_sharding(mesh: Mesh, spec: MeshSpec) -> NamedSharding:
    return NamedSharding(mesh, to_partition_spec(spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_path(keypath: tuple) -> str:
    """The plan's name for the parameter at a pytree key path: its dict keys joined by dots.

    Works for a leaf of the parameter state and for a leaf of an optimizer state that mirrors it
    (optax wraps the parameter tree in its own attributes and sequences, which carry no dict keys).
    """
    return ".".join(str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey))


def param_specs(plan: Plan) -> dict[str, tuple[tuple[int, ...], MeshSpec]]:
    """Parameter path -> (shape, spec), from the plan's sharding table."""
    return {p.path: (tuple(p.shape), tuple(p.spec)) for p in plan.sharding.params}


def spec_for_leaf(specs: dict, path: str, shape: tuple[int, ...]) -> MeshSpec:
    """The plan's spec for a parameter, or for a state array derived from one.

    Same shape as the parameter: the parameter's spec. Adafactor's factored second moments drop
    the last or the second-to-last dimension; their spec drops the same one. Anything else
    (counters, scalars, unknown leaves) is replicated.
    """
    if path not in specs:
        return ((),) * len(shape)
    pshape, spec = specs[path]
    if shape == pshape:
        return spec
    if len(pshape) >= 1 and shape == pshape[:-1]:
        return spec[:-1]
    if len(pshape) >= 2 and shape == pshape[:-2] + pshape[-1:]:
        return spec[:-2] + spec[-1:]
    return ((),) * len(shape)


def tree_shardings(plan: Plan, mesh: Mesh, tree):
    """A NamedSharding for every array leaf of a parameter-derived tree (params, grads, optimizer state)."""
    specs = param_specs(plan)

    def one(keypath, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return named_sharding(mesh, spec_for_leaf(specs, param_path(keypath), shape))

    return jax.tree_util.tree_map_with_path(one, tree)
