"""The carried recurrent state of a stateful family (Capibara with `hidden_state: carry`), planned.

The family says what it carries (`carried_state(cfg, batch)`: shape, dtype, logical axes); the
plan places it with the same rules as the parameters — its batch axis over the batch axes, so each
device holds the state of exactly the rows it trains on, its state axis like the layers' state
weights — and counts its bytes per device. The data pipeline then reads each batch row from one
contiguous stream (`DataPlan.streams`), so the state a row ends a batch with belongs to the tokens
that row reads next.
"""

from __future__ import annotations

import math

import numpy as np

from capidsl.plan.plan import HiddenStatePlan, MeshPlan
from capidsl.plan.sharding import place


def plan_hidden_state(family, cfg: dict, global_batch: int, mesh: MeshPlan, rules) -> HiddenStatePlan | None:
    """The family's carried state for batches of `global_batch` rows, placed on `mesh`; None if it carries none."""
    carried = getattr(family, "carried_state", None)
    spec_of = carried(cfg, global_batch) if callable(carried) else None
    if spec_of is None:
        return None
    shape, axes = tuple(int(d) for d in spec_of["shape"]), tuple(spec_of["logical_axes"])
    spec = place("hidden_state", shape, axes, mesh, rules)
    local = math.prod(d // math.prod(mesh.size(a) for a in mesh_axes) for d, mesh_axes in zip(shape, spec))
    return HiddenStatePlan(shape=shape, dtype=str(spec_of["dtype"]), logical_axes=axes, spec=spec,
                           bytes_per_device=local * np.dtype(spec_of["dtype"]).itemsize)
