"""Ahead-of-time memory: compile the real train step on abstract inputs and ask XLA what it needs.

Nothing is allocated: the state is `abstract_state` (ShapeDtypeStructs with the plan's
shardings) and the batch is a ShapeDtypeStruct too. The figures are XLA's own, per device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import build_mesh
from capidsl.exec.state import abstract_state
from capidsl.exec.step import batch_sharding, make_train_step
from capidsl.plan.plan import Plan



def abstract_batch(plan: Plan, mesh: Mesh, rows: int | None = None, length: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """One global batch as ShapeDtypeStructs, as the data pipeline delivers it for the plan's data kind
    (`rows` × `length`: one of a bucketed plan's batch shapes; default the plan's global batch)."""
    b, sharding = rows or plan.batch.global_batch, batch_sharding(plan, mesh)
    t = length or plan.batch.seq_len
    if plan.data.kind == "lm":
        shapes = {"inputs": ((b, t), jnp.int32), "targets": ((b, t), jnp.int32), "mask": ((b, t), jnp.float32)}
    else:
        shapes = {"x": ((b, plan.data.input_dim), jnp.float32), "y": ((b,), jnp.int32), "mask": ((b,), jnp.float32)}
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in shapes.items()}


def compiled_memory(plan: Plan) -> dict[str, int]:
    """XLA's memory analysis of the plan's train step, bytes per device:
    argument, output, temp, alias, peak_memory, generated_code (keys end in `_bytes`).

    A bucketed plan compiles one program per batch shape; the figures are those of the most
    demanding one (arguments + temp), as the plan's estimate is."""
    want, have = plan.mesh.device_count, jax.local_devices()
    if len(have) < want:
        raise RunError(
            f"compiling the train step needs the plan's {want} devices here, and this process has {len(have)}",
            subject="plan --compile",
            hint=f"set XLA_FLAGS=--xla_force_host_platform_device_count={want} before jax is imported "
            "(fake CPU devices are enough to compile)",
        )
    mesh = build_mesh(plan, have[:want])
    graphdef, state = abstract_state(plan, mesh)
    step = make_train_step(plan, mesh, graphdef)
    names = {"argument": "argument_size_in_bytes", "output": "output_size_in_bytes", "temp": "temp_size_in_bytes",
             "alias": "alias_size_in_bytes", "peak_memory": "peak_memory_in_bytes",
             "generated_code": "generated_code_size_in_bytes"}
    shapes = [(b.rows, b.length) for b in plan.data.buckets] or [(None, None)]
    figures = []
    for rows, length in shapes:
        analysis = step.lower(state, abstract_batch(plan, mesh, rows, length)).compile().memory_analysis()
        if analysis is None:
            raise RunError("this backend reports no memory analysis", subject="plan --compile",
                           hint="compile on CPU (JAX_PLATFORMS=cpu) or a GPU/TPU backend")
        figures.append({f"{k}_bytes": int(getattr(analysis, attr, 0) or 0) for k, attr in names.items()})
    return max(figures, key=lambda f: f["argument_bytes"] + f["temp_bytes"])
