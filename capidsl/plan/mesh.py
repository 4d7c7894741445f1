"""Mesh layout: the recipe's data/fsdp/tensor sizes (one may be -1 = the rest) checked against the topology.

The axes are laid out in the order data, fsdp, tensor, so `tensor` is the fastest-varying axis and
its devices are neighbours; with `tensor` dividing the devices of one host, tensor-parallel traffic
never leaves a host.
"""

from __future__ import annotations

import math

from capidsl.plan.errors import PlanError
from capidsl.plan.plan import Lint, MeshPlan, Topology

AXES = ("data", "fsdp", "tensor")


def layout(sizes: dict[str, int], topology: Topology, location=None) -> tuple[MeshPlan, list[Lint]]:
    """The MeshPlan for `sizes` on `topology`, and warnings about it."""
    n = topology.device_count
    rest = [a for a in AXES if sizes.get(a, 1) == -1]
    if len(rest) > 1:
        raise PlanError(f"only one mesh axis may be -1, not {' and '.join(rest)}", subject="mesh", location=location)
    fixed = math.prod(sizes.get(a, 1) for a in AXES if a not in rest)
    if rest:
        if n % fixed:
            raise PlanError(f"the fixed mesh axes ({fixed} devices) do not divide the {n} devices", subject="mesh",
                            location=location, hint=f"choose sizes whose product divides {n}")
        sizes = dict(sizes) | {rest[0]: n // fixed}
    shape = tuple(int(sizes.get(a, 1)) for a in AXES)
    mesh = MeshPlan(axes=AXES, shape=shape)
    if mesh.device_count < n:
        raise PlanError(f"the mesh {describe(mesh)} uses {mesh.device_count} of the {n} devices and leaves "
                        f"{n - mesh.device_count} idle", subject="mesh", location=location,
                        hint="set one axis to -1 to use the rest of the devices")
    if mesh.device_count > n:
        raise PlanError(f"the mesh {describe(mesh)} needs {mesh.device_count} devices, but the topology has {n}",
                        subject="mesh", location=location, hint="plan for more devices (--devices) or shrink an axis")
    lints = []
    per_host = topology.devices_per_process
    tensor = mesh.size("tensor")
    if topology.process_count > 1 and (tensor > per_host or per_host % tensor):
        lints.append(Lint("warning", "tensor-crosses-hosts",
                          f"the tensor axis ({tensor}) spans more than one host ({per_host} devices each): "
                          "tensor-parallel all-reduces will cross the network", str(location) if location else None))
    return mesh, lints


def describe(mesh: MeshPlan) -> str:
    return " × ".join(f"{a}={s}" for a, s in zip(mesh.axes, mesh.shape))


def batch_blocks(mesh: MeshPlan, topology: Topology, location=None) -> int:
    """Into how many distinct blocks of rows the processes split each global batch.

    Devices are numbered process by process and the mesh is laid out data, fsdp, tensor, so the
    batch shards (one per data×fsdp position) run along the devices in groups of `tensor`. With
    `tensor` dividing a host's devices every process holds whole shards of its own (one block per
    process); with a tensor group spanning several hosts those hosts are replicas and load the same
    rows (one block per data-parallel shard). Anything in between would give processes overlapping
    rows, which no per-process loader can deliver: an error.
    """
    procs, per_host, tensor = topology.process_count, topology.devices_per_process, mesh.size("tensor")
    if procs == 1:
        return 1
    if per_host % tensor == 0:
        return procs
    if tensor % per_host == 0:
        return mesh.data_parallel
    raise PlanError(f"the tensor axis ({tensor}) neither divides nor spans whole hosts of {per_host} devices: "
                    "processes would hold overlapping rows of each batch", subject="mesh.tensor", location=location,
                    hint=f"make mesh.tensor a divisor or a multiple of {per_host}")


def axes_across_hosts(mesh: MeshPlan, topology: Topology) -> tuple[str, ...]:
    """The mesh axes whose device groups span more than one process, so their collectives use the network.

    A group of axis i runs over `size_i × (sizes of the axes after it)` consecutive devices,
    starting at a multiple of that span; it stays in one host exactly when the span divides the
    devices of a host.
    """
    if topology.process_count == 1:
        return ()
    per_host = topology.devices_per_process
    out = []
    for i, (axis, size) in enumerate(zip(mesh.axes, mesh.shape)):
        span = size * math.prod(mesh.shape[i + 1:])
        if size > 1 and per_host % span:
            out.append(axis)
    return tuple(out)
