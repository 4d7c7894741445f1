"""The optax optimizer the plan names: clipping, the optimizer itself, the schedule, the decay mask,
and which parameters it leaves alone (`plan.optimizer.frozen`, from `training.trainable`).

Non-finite gradients are kept away from the parameters by the train step (it selects the old
state when the loss or the gradient norm is not finite), so no transformation here needs to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
    return _per_parameter(weight_dims, lambda dims: dims >= 2, "optimizer.decay_mask")


def _per_parameter(table: dict, value, subject: str):
    """A callable params -> tree of `value(table[path])` per leaf; a leaf the plan does not know is a RunError."""
    def tree(params):
        def one(keypath, leaf):
            path = param_path(keypath)
            if path not in table:
                raise RunError(f"parameter {path!r} is not in the plan", subject=subject,
                               hint="the model built here differs from the one the plan was compiled for")
            return value(table[path])

        return jax.tree_util.tree_map_with_path(one, params)

    return tree


def frozen_mask(plan: Plan, frozen: bool = True):
    """A callable params -> bool tree: True where the parameter is frozen (`plan.optimizer.frozen`);
    with `frozen=False`, True where it trains."""
    names = set(plan.optimizer.frozen)
    return _per_parameter({p.path: p.path in names for p in plan.sharding.params},
                          lambda is_frozen: is_frozen == frozen, "training.trainable")


def stop_frozen(plan: Plan):
    """A callable params -> params with `lax.stop_gradient` on every frozen parameter (identity when
    none is): the loss then has no gradient path to them, so the backward pass computes no weight
    gradient for them (XLA drops those matmuls) and their gradient is a zero that adds nothing to the
    logged gradient norm."""
    if not plan.optimizer.frozen:
        return lambda params: params
    mask = frozen_mask(plan)

    def stop(params):
        return jax.tree_util.tree_map(lambda p, is_frozen: jax.lax.stop_gradient(p) if is_frozen else p,
                                      params, mask(params))

    return stop


def keep_as_is() -> optax.GradientTransformation:
    """Updates of -0.0 and no state: what frozen parameters get. -0.0, not optax.set_to_zero's +0.0,
    because it is IEEE 754's additive identity (x + -0 = x for every x, while -0 + +0 = +0), so
    `optax.apply_updates` leaves a frozen weight bitwise as it was, even a negative zero."""
    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u: jnp.full_like(u, -0.0), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(plan: Plan, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm (when the plan clips) → the plan's optimizer, with its learning-rate schedule
    → magnitude pruning (when the plan prunes; capidsl/exec/pruning.py).

    adamw, lion and adafactor decay weights the decoupled way (their own argument); adam and sgd
    have none, so their decay is the classic L2 one (added to the gradient before the update, as
    torch.optim does), under the same mask.

    With frozen parameters, clipping and the optimizer see only the trained ones (`optax.masked`):
    the global norm that clipping bounds is the trained parameters' (a frozen gradient is never
    applied, so it must not shrink the others' update) and the optimizer state has no leaf for a
    frozen parameter; frozen ones get `keep_as_is`. Two masks, not `optax.partition`: its state keys
    the inner states by label in a dict, which would put "train." in front of every moment's path
    and lose the moment's sharding (`capidsl.exec.mesh.param_path`). Pruning comes after and covers
    trained weights only (the plan leaves frozen ones out of `plan.pruning.params`).
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
    if o.frozen:  # only then: the state of a plan without frozen parameters keeps its old tree
        tx = optax.chain(optax.masked(tx, frozen_mask(plan, False)), optax.masked(keep_as_is(), frozen_mask(plan)))
    if plan.pruning is not None:  # last in the chain: it rewrites the final update of masked weights
        from capidsl.exec.pruning import magnitude_pruning

        tx = optax.chain(tx, magnitude_pruning(plan))
    return tx
