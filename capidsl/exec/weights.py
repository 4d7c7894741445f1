"""Pretrained starting weights placed straight into the plan's shardings.

Each parameter is made with `jax.make_array_from_callback`: every device asks for its own slice,
and the slice is read from the memory-mapped safetensors files (only the pages it covers), cast to
the plan's parameter dtype, and put on that device. No host ever holds the whole model, so a model
larger than one device (or than one host's memory) loads as it is sharded.
"""

from __future__ import annotations

import numpy as np

import jax

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import param_path
from capidsl.plan.plan import Plan


def pretrained_params(plan: Plan, abstract_params, shardings):
    """The parameter state of `plan.model.init` with `shardings` (a tree like `abstract_params`)."""
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
            if not stacked:
                tensor, part = parts[0]
                return np.asarray(view(ckpt.array(tensor.name), tensor, part)[index], dtype=target)
            layers = range(*index[0].indices(len(parts)))
            return np.stack([np.asarray(view(ckpt.array(parts[i][0].name), *parts[i])[index[1:]], dtype=target)
                             for i in layers])

        return jax.make_array_from_callback(tuple(leaf.shape), sharding, piece)

    return jax.tree_util.tree_map_with_path(load, abstract_params, shardings)
