"""The precision policy: dtypes from the plan, and loss scaling for float16.

Parameters are stored in `param_dtype` (the master copy the optimizer updates), the model
computes in `compute_dtype`, and the loss is reduced in float32. With float16 compute, the loss is
multiplied by a scale before differentiation so that small gradients do not underflow; the
gradients are divided by it afterwards. Dynamic scaling (Micikevicius et al. 2018, "Mixed
Precision Training"; the rule of torch.cuda.amp.GradScaler and jmp.DynamicLossScale): on a
non-finite gradient the step is skipped and the scale halved; after `GROWTH_INTERVAL` finite steps
in a row it is doubled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from capidsl.plan.plan import PrecisionPlan

GROWTH_INTERVAL = 2000  # finite steps in a row before the scale doubles (GradScaler's default)
MIN_SCALE = 1.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossScale:
    """The loss-scale state carried in TrainState: the scale and the finite steps since it last changed."""

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32 scalar


def dtype(name: str) -> jnp.dtype:
    """A plan dtype string (float32 | bfloat16 | float16) as a numpy dtype."""
    return jnp.dtype(name)


def initial_loss_scale(p: PrecisionPlan) -> LossScale:
    """Scale 1 when the plan does not scale the loss, so the state has one shape for every plan."""
    value = p.loss_scale_value if p.loss_scale in ("static", "dynamic") else 1.0
    return LossScale(scale=jnp.asarray(value, jnp.float32), good_steps=jnp.zeros((), jnp.int32))


def scale_loss(p: PrecisionPlan, ls: LossScale, loss: jax.Array) -> jax.Array:
    return loss * ls.scale if p.loss_scale != "none" else loss


def unscale_grads(p: PrecisionPlan, ls: LossScale, grads):
    if p.loss_scale == "none":
        return grads
    inv = 1.0 / ls.scale
    return jax.tree_util.tree_map(lambda g: g * inv.astype(g.dtype), grads)


def next_loss_scale(p: PrecisionPlan, ls: LossScale, finite: jax.Array, growth_interval: int = GROWTH_INTERVAL) -> LossScale:
    """Dynamic: halve on overflow (not below 1), double after `growth_interval` finite steps. Else unchanged."""
    if p.loss_scale != "dynamic":
        return ls
    good = jnp.where(finite, ls.good_steps + 1, 0)
    grow = good >= growth_interval
    scale = jnp.where(finite, jnp.where(grow, ls.scale * 2.0, ls.scale), jnp.maximum(ls.scale * 0.5, MIN_SCALE))
    return LossScale(scale=scale.astype(jnp.float32), good_steps=jnp.where(grow, 0, good).astype(jnp.int32))
