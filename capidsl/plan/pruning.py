"""The pruning part of the plan: the schedule on concrete steps, and which weights take part.

Pruned: every weight matrix — a parameter with at least two dimensions besides a stacked-layers
axis — except embedding tables unless `pruning.embeddings` (a table is a parameter named
`embedding`, or one whose first weight axis is the vocabulary). Biases and norm scales never are.
"per_layer" ranks each matrix on its own, and each layer of a stacked matrix on its own; "global"
ranks all of them together. The counts here are the ones the executor's masks will have.
"""

from __future__ import annotations

import math

import numpy as np

from capidsl.lang import LangError
from capidsl.lang.pruning import pruned_count
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import ParamSharding, PruningPlan, ShardingPlan

STACKED_AXIS = "layers"


def _weight_axes(p: ParamSharding) -> tuple:
    return tuple(a for a in p.logical_axes if a != STACKED_AXIS)


def is_table(p: ParamSharding) -> bool:
    axes = _weight_axes(p)
    return p.path.rsplit(".", 1)[-1] == "embedding" or (bool(axes) and axes[0] == "vocab")


def pruned_params(sharding: ShardingPlan, embeddings: bool) -> tuple[ParamSharding, ...]:
    """The parameters pruning applies to, in the sharding table's order."""
    return tuple(p for p in sharding.params if len(_weight_axes(p)) >= 2 and (embeddings or not is_table(p)))


def group_sizes(params, scope: str) -> tuple[int, ...]:
    """The sizes of the sets of weights ranked together: per matrix (per layer if stacked), or one."""
    sizes = []
    for p in params:
        if p.logical_axes and p.logical_axes[0] == STACKED_AXIS:
            sizes.extend([math.prod(p.shape[1:])] * p.shape[0])
        else:
            sizes.append(math.prod(p.shape))
    return (sum(sizes),) if scope == "global" else tuple(sizes)


def mask_bytes(params) -> int:
    """Per device: one byte (a bool) per pruned weight, sharded like its parameter."""
    return sum(p.bytes_per_device // np.dtype(p.dtype).itemsize for p in params)


def plan_pruning(config, sharding: ShardingPlan, total_steps: int, steps_per_epoch: int, tokens_per_step: int,
                 where) -> PruningPlan | None:
    """The recipe's `pruning:` for this run, or None when it has no schedule."""
    if config is None or config.schedule is None:
        return None
    try:
        schedule = config.schedule.resolve(total_steps, steps_per_epoch, tokens_per_step)
    except LangError as err:
        raise PlanError(err.message, subject="pruning.schedule", location=where("pruning.schedule", err.column),
                        hint=err.hint) from None
    params = pruned_params(sharding, config.embeddings)
    if not params:
        raise PlanError("no parameter of this model can be pruned (no weight matrices)", subject="pruning",
                        location=where("pruning"), hint="remove the pruning section")
    sizes = group_sizes(params, config.scope)
    final = schedule.sparsity_at(schedule.end_step)
    return PruningPlan(schedule=schedule, scope=config.scope, params=tuple(p.path for p in params),
                       weights=sum(sizes), groups=len(sizes), final_zeros=sum(pruned_count(final, n) for n in sizes))
