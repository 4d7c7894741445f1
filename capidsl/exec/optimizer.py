"""The optax optimizer the plan names: clipping, the optimizer itself, the schedule, the decay mask.

Non-finite gradients are kept away from the parameters by the train step (it selects the old
state when the loss or the gradient norm is not finite), so no transformation here needs to.
"""

from __future__ import annotations

import jax
import optax

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import param_path
from capidsl.plan.plan import Plan

STACKED_AXIS = "layers"  # the logical axis of stacked (scanned) layers: not a weight dimension


def learning_rate(plan: Plan) -> optax.Schedule:
    """The plan's resolved schedule as an optax schedule of the optimizer step."""
    from capidsl.exec.schedule import to_optax  # compiles a ResolvedSchedule with optax.join_schedules

    return to_optax(plan.schedule)


def decay_mask(plan: Plan):
    """A callable params -> bool tree: True where weight decay applies, per `plan.optimizer.decay_mask`.

    "matrices": only weights with at least two dimensions besides a stacked-layers axis (kernels,
    embeddings), never biases or norm scales. "all": every parameter.
    """
    if plan.optimizer.decay_mask == "all":
        return None
    if plan.optimizer.decay_mask != "matrices":
        raise RunError(f"unknown decay mask {plan.optimizer.decay_mask!r}", subject="optimizer.decay_mask",
                       hint="the plan compiler emits 'matrices' or 'all'")
    weight_dims = {p.path: sum(1 for a in p.logical_axes if a != STACKED_AXIS) for p in plan.sharding.params}

    def mask(params):
        def one(keypath, leaf):
            path = param_path(keypath)
            if path not in weight_dims:
                raise RunError(f"parameter {path!r} is not in the plan", subject="optimizer.decay_mask",
                               hint="the model built here differs from the one the plan was compiled for")
            return weight_dims[path] >= 2

        return jax.tree_util.tree_map_with_path(one, params)

    return mask


def make_optimizer(plan: Plan, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm (when the plan clips) → the plan's optimizer, with its learning-rate schedule
    → magnitude pruning (when the plan prunes; capidsl/exec/pruning.py).

    adamw, lion and adafactor decay weights the decoupled way (their own argument); adam and sgd
    have none, so their decay is the classic L2 one (added to the gradient before the update, as
    torch.optim does), under the same mask.
    """
    o = plan.optimizer
    lr = learning_rate(plan) if schedule is None else schedule
    mask = decay_mask(plan)
    wd = o.weight_decay

    if o.name == "adamw":
        core = optax.adamw(lr, b1=o.beta1, b2=o.beta2, eps=o.epsilon, weight_decay=wd, mask=mask)
    elif o.name == "lion":
        core = optax.lion(lr, b1=o.beta1, b2=o.beta2, weight_decay=wd, mask=mask)
    elif o.name == "adafactor":
        # epsilon is left at adafactor's own (1e-30): the plan's epsilon is adam's denominator term.
        core = optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask)
    elif o.name in ("adam", "sgd"):
        if o.name == "adam":
            inner = optax.adam(lr, b1=o.beta1, b2=o.beta2, eps=o.epsilon)
        else:
            inner = optax.sgd(lr, momentum=o.momentum or None, nesterov=o.nesterov)
        core = optax.chain(optax.add_decayed_weights(wd, mask), inner) if wd else inner
    else:
        raise RunError(f"unknown optimizer {o.name!r}", subject="optimizer.name",
                       hint="one of adamw, adam, sgd, adafactor, lion")

    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), core) if o.grad_clip is not None else core
    if plan.pruning is not None:  # last in the chain: it rewrites the final update of masked weights
        from capidsl.exec.pruning import magnitude_pruning

        tx = optax.chain(tx, magnitude_pruning(plan))
    return tx
