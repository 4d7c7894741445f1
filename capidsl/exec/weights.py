"""Pretrained starting weights placed straight into the plan's shardings.

Each parameter is made with `jax.make_array_from_callback`: every device asks for its own slice,
and the slice is read from the memory-mapped safetensors files (only the pages it covers, each
tensor mapped only while it is copied), cast to the plan's parameter dtype in the same pass, and
put on that device. The copy is deliberate: an array aliasing the file would change or fault if the
file were rewritten during the run (an export over the directory it started from, say). No host ever holds the whole model, so a model
larger than one device (or than one host's memory) loads as it is sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import param_path
from capidsl.plan.plan import Plan


def pretrained_params(plan: Plan, mesh, abstract_params, shardings):
    """The parameter state of `plan.model.init` with `shardings` (a tree like `abstract_params`)."""
    if plan.model.init.kind == "run":
        return _run_params(plan, mesh, shardings)
    from capidsl.models.errors import ModelError
    from capidsl.models.hf.layout import sources, tensors, view
    from capidsl.models.hf.safetensors import Checkpoint

    init = plan.model.init
    try:
        ckpt = Checkpoint(init.path)
    except ModelError as err:
        raise RunError(err.message, subject="model.init.from", hint=err.hint) from None
    options = plan.model.options
    where = sources(tensors(init.architecture, options, set(ckpt.tensors)))

    def load(keypath, leaf, sharding):
        path = param_path(keypath)
        if path not in where:
            raise RunError(f"parameter {path} has no tensor in {init.path}", subject="model.init.from",
                           hint="compile the plan again: the checkpoint or capidsl changed since")
        parts = where[path]
        target = np.dtype(leaf.dtype)
        stacked = parts[0][1].layer is not None

        def piece(index):
            """This device's slice, copied out of the file (never aliasing it) once, in the target dtype."""
            if not stacked:
                tensor, part = parts[0]
                return np.array(view(ckpt.array(tensor.name), tensor, part)[index], dtype=target, copy=True)
            layers = range(*index[0].indices(len(parts)))
            out = None
            for j, i in enumerate(layers):
                tensor, part = parts[i]
                one = view(ckpt.array(tensor.name), tensor, part)[index[1:]]
                if out is None:
                    out = np.empty((len(layers), *one.shape), target)
                out[j] = one  # cast and copy in one pass; the layer's mapping closes after it
            return out

        return jax.make_array_from_callback(tuple(leaf.shape), sharding, piece)

    return jax.tree_util.tree_map_with_path(load, abstract_params, shardings)


def _run_params(plan: Plan, mesh, shardings):
    """A capidsl run's parameters at the plan's step, restored into this run's mesh and dtype.

    The whole train state of that step is restored (orbax reads what it was written as), sharded
    as the old plan shards it but on this run's mesh; the optimizer state is then dropped."""
    from capidsl import rundir
    from capidsl.exec.checkpoint import Checkpoints
    from capidsl.exec.state import abstract_state

    init = plan.model.init
    try:
        old = Plan.loads(rundir.read_plan_text(init.path))
    except rundir.RunDirError as err:
        raise RunError(err.message, subject="model.init.from", hint=err.hint) from None
    _, abstract = abstract_state(old, mesh)
    ckpts = Checkpoints(init.path, old.checkpoint)
    try:
        params = ckpts.restore_state(init.step, abstract).params
    finally:
        ckpts.close()
    target = jnp.dtype(plan.precision.param_dtype)
    return jax.tree_util.tree_map(lambda a, s: jax.device_put(a.astype(target), s), params, shardings)
