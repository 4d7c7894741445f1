"""Magnitude pruning as an optax transformation whose masks live in the optimizer state.

At each event of the plan's schedule (after the update of that step) the weights of every group
are ranked by |w| and the smallest `round(s·N)` are masked; weights masked before rank first, so
a pruned weight never comes back. Between events the masks stay. The transformation comes last
in the chain and rewrites the update of a masked weight to −w, so `optax.apply_updates` leaves it
exactly 0 (w + (−w) = +0 in IEEE arithmetic) whatever momentum or weight decay computed for it;
kept weights get their update unchanged. The masks (bools, sharded like their parameters) are in
the optimizer state, hence in every checkpoint, so a resumed run prunes exactly as a straight one.

Counts are exact: the table of how many weights each group loses at each event is computed on the
host with rationals (`capidsl.lang.pruning.pruned_count`), and ranks come from a stable argsort,
so ties (zeros among them) never make a group miss its count.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import param_path
from capidsl.lang.pruning import pruned_count
from capidsl.plan.plan import Plan

STACKED_AXIS = "layers"


class PruningState(NamedTuple):
    count: jax.Array  # int32: updates applied so far
    masks: Any  # like the parameters: a bool mask (True = kept) for pruned ones, a bool scalar elsewhere


def _layout(plan: Plan) -> dict[str, tuple[int, int | None, int]]:
    """Pruned parameter path -> (first group index, layers if stacked else None, weights per group)."""
    shapes = {p.path: p for p in plan.sharding.params}
    out, at = {}, 0
    for path in plan.pruning.params:
        p = shapes[path]
        stacked = bool(p.logical_axes) and p.logical_axes[0] == STACKED_AXIS
        layers = p.shape[0] if stacked else None
        out[path] = (at, layers, math.prod(p.shape[1:] if stacked else p.shape))
        at += layers or 1
    return out


def count_table(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(event steps [E], weights each group must have pruned at each event [E, groups]), exactly."""
    pr = plan.pruning
    layout = _layout(plan)
    sizes = []
    for _, (_, layers, n) in sorted(layout.items(), key=lambda kv: kv[1][0]):
        sizes.extend([n] * (layers or 1))
    if pr.scope == "global":
        sizes = [sum(sizes)]
    events = pr.schedule.events()
    table = [[pruned_count(pr.schedule.sparsity_at(e), n) for n in sizes] for e in events]
    return np.asarray(events, np.int32), np.asarray(table, np.int32)


def _keep(magnitude: jax.Array, k: jax.Array) -> jax.Array:
    """True for all but the `k` smallest entries of a flat vector (stable: earlier index first on ties)."""
    order = jnp.argsort(magnitude, stable=True)
    ranks = jnp.zeros(magnitude.shape, jnp.int32).at[order].set(jnp.arange(magnitude.shape[0], dtype=jnp.int32))
    return ranks >= k


def magnitude_pruning(plan: Plan) -> optax.GradientTransformationExtraArgs:
    """The plan's pruning as a transformation to chain after the optimizer (it needs `params`)."""
    layout = _layout(plan)
    events_np, table_np = count_table(plan)
    scope = plan.pruning.scope

    def paths_of(tree):
        return [param_path(k) for k, _ in jax.tree_util.tree_leaves_with_path(tree)]

    def init(params):
        missing = set(layout) - set(paths_of(params))
        if missing:
            raise RunError(f"pruned parameters {sorted(missing)[:3]} are not in the model", subject="pruning",
                           hint="compile the plan again for this model")

        def one(keypath, p):
            return jnp.ones(p.shape, bool) if param_path(keypath) in layout else jnp.ones((), bool)

        return PruningState(count=jnp.zeros((), jnp.int32), masks=jax.tree_util.tree_map_with_path(one, params))

    def new_masks(candidate, masks, counts):
        """Masks for the candidate parameters at an event: `counts[g]` weights pruned in group g."""
        paths = paths_of(candidate)
        leaves, treedef = jax.tree_util.tree_flatten(candidate)
        old = jax.tree_util.tree_leaves(masks)
        # masked weights rank below every kept one, so they stay masked
        mags = {path: jnp.where(m, jnp.abs(p.astype(jnp.float32)), -1.0)
                for path, p, m in zip(paths, leaves, old) if path in layout}
        out = dict(zip(paths, old))
        if scope == "global":
            flat = jnp.concatenate([mags[path].reshape(-1) for path in layout])
            keep, at = _keep(flat, counts[0]), 0
            for path in layout:
                size = mags[path].size
                out[path] = keep[at:at + size].reshape(mags[path].shape)
                at += size
        else:
            for path, (first, layers, n) in layout.items():
                m = mags[path]
                if layers is None:
                    out[path] = _keep(m.reshape(-1), counts[first]).reshape(m.shape)
                else:
                    per_layer = jax.vmap(_keep)(m.reshape(layers, n), counts[first:first + layers])
                    out[path] = per_layer.reshape(m.shape)
        return jax.tree_util.tree_unflatten(treedef, [out[p] for p in paths])

    def update(updates, state, params=None, **extra):
        if params is None:
            raise RunError("magnitude pruning needs the parameters", subject="pruning",
                           hint="call update(grads, state, params)")
        events, table = jnp.asarray(events_np), jnp.asarray(table_np)
        step = state.count + 1
        i = jnp.minimum(jnp.searchsorted(events, step), events.shape[0] - 1)
        candidate = optax.apply_updates(params, updates)
        masks = jax.lax.cond(events[i] == step, lambda: new_masks(candidate, state.masks, table[i]),
                             lambda: state.masks)

        def masked(keypath, u, p, m):
            if param_path(keypath) not in layout:
                return u
            return jnp.where(m, u, -p.astype(u.dtype))

        updates = jax.tree_util.tree_map_with_path(masked, updates, params, masks)
        return updates, PruningState(count=step, masks=masks)

    return optax.GradientTransformationExtraArgs(init, update)


def achieved_sparsity(plan: Plan, params) -> jax.Array:
    """The share of the pruned parameters' weights that are exactly zero (what metrics log)."""
    zeros = [jnp.sum(p == 0) for k, p in jax.tree_util.tree_leaves_with_path(params) if param_path(k) in set(plan.pruning.params)]
    return sum(z.astype(jnp.float32) for z in zeros) / plan.pruning.weights
