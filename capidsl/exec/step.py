"""The train step and the eval step: pure functions of (state, batch), each one `jax.jit`.

A plan with a carried recurrent state (`plan.hidden_state`) threads it through both: the state is
split into micro-batches with the rows it belongs to, and each row's new state comes back out.

The global batch arrives as rows [data_parallel × accumulation × micro_batch, ...], split over the
plan's batch axes. Each device's own rows are cut into `accumulation` micro-batches, run by
`jax.lax.scan`; the gradient of the *sum* of the per-token losses is accumulated, and divided once
by the count of real tokens over all micro-batches. So the accumulated update equals the update
of one large batch exactly, whatever the masks (Axolotl #3196: averaging per-micro-batch means
weights tokens unequally when micro-batches hold different numbers of real tokens).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from capidsl.exec.mesh import to_partition_spec
from capidsl.exec.optimizer import learning_rate, make_optimizer, stop_frozen
from capidsl.exec.precision import next_loss_scale, scale_loss, unscale_grads
from capidsl.exec.pruning import achieved_sparsity
from capidsl.exec.state import TrainState, abstract_state, model_family
from capidsl.models.layers import rows_sharding
from capidsl.plan.plan import Plan

Batch = dict[str, jax.Array]


def batch_axes(plan: Plan):
    """The mesh axes the batch dimension is split over (a PartitionSpec entry)."""
    spec = to_partition_spec(plan.sharding.batch_spec)
    return spec[0] if len(spec) else None


def batch_sharding(plan: Plan, mesh: Mesh) -> NamedSharding:
    """Rows split over the batch axes, every other dimension whole (applies to every batch array)."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(plan)))


def split_micro(batch: Batch, shards: int, chunks: int, mesh: Mesh, axes) -> Batch:
    """[shards × chunks × m, ...] → [chunks, shards × m, ...], keeping every row on its device.

    Shard d owns rows [d·chunks·m, (d+1)·chunks·m); its micro-batch i is the i-th run of m of them.
    The reshape/transpose moves no data between devices; the sharding constraint says so to XLA.
    """

    def one(x):
        m = x.shape[0] // (shards * chunks)
        y = x.reshape((shards, chunks, m) + x.shape[1:]).swapaxes(0, 1)
        y = y.reshape((chunks, shards * m) + x.shape[1:])
        return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, PartitionSpec(None, axes)))

    return jax.tree_util.tree_map(one, batch)


def merge_micro(tree, shards: int, chunks: int, sharding):
    """The inverse of `split_micro`: [chunks, shards × m, ...] → [shards × chunks × m, ...] (rows stay put)."""

    def one(y):
        m = y.shape[1] // shards
        z = y.reshape((chunks, shards, m) + y.shape[2:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(z.reshape((shards * chunks * m,) + y.shape[2:]), sharding)

    return jax.tree_util.tree_map(one, tree)


def _sum_grads(params, micro: Batch, loss_fn: Callable, chunks: int, key: jax.Array):
    """Σ over micro-batches of (∇ scaled loss_sum, loss_sum, weight_sum), in float32, and each
    micro-batch's third auxiliary output (a carried state, or ()) stacked [chunks, ...].

    `loss_fn(params, micro_batch, key) -> (scaled loss, (loss_sum, weight_sum, extra))`;
    micro-batch i gets the dropout key fold_in(key, i).
    """

    def one(i, mb):
        return jax.grad(loss_fn, has_aux=True)(params, mb, jax.random.fold_in(key, i))

    if chunks == 1:  # no loop at all: nothing for XLA to schedule around
        g, (l, w, extra) = one(0, jax.tree_util.tree_map(lambda x: x[0], micro))
        extra = jax.tree_util.tree_map(lambda e: e[None], extra)
        return jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), g), l, w, extra

    def body(carry, xs):
        gsum, lsum, wsum = carry
        g, (l, w, extra) = one(*xs)
        gsum = jax.tree_util.tree_map(lambda a, b: a + b.astype(jnp.float32), gsum, g)
        return (gsum, lsum + l, wsum + w), extra

    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (gsum, lsum, wsum), extras = jax.lax.scan(body, init, (jnp.arange(chunks), micro))
    return gsum, lsum, wsum, extras


def model_loss(plan: Plan, fam, model, mb: Batch, *, deterministic: bool, rngs):
    """(loss_sum, weight_sum, metrics, new carried state or ()) of one micro-batch.

    With a carried state (`plan.hidden_state`) the micro-batch holds its rows' incoming state under
    "hidden"; the family continues each row's stream from it and returns the state to carry on.
    """
    if plan.hidden_state is None:
        return (*fam.loss(model, mb, deterministic=deterministic, rngs=rngs), ())
    rows = {k: v for k, v in mb.items() if k != "hidden"}
    return fam.loss_with_state(model, rows, mb["hidden"], deterministic=deterministic, rngs=rngs)


def _unpadded(batch: Batch) -> jax.Array:
    """Positions of a bucketed batch that hold a piece, when the mask is 0 on prompts as well as on padding:
    a row's piece fills its first positions, so its count runs to its last position where the input, the
    target or the mask is not 0 (padding is 0 in all three; only a piece ending in two prompt tokens of
    id 0 would count short)."""
    held = (batch["inputs"] != 0) | (batch["targets"] != 0) | (batch["mask"] > 0)
    last = jnp.max(jnp.where(held, jnp.arange(1, held.shape[1] + 1), 0), axis=1)
    return jnp.sum(last).astype(jnp.float32)


def make_train_step(plan: Plan, mesh: Mesh, graphdef: nnx.GraphDef):
    """step(state, batch) -> (state, metrics): one jitted pure function with donated state.

    Metrics are device scalars: loss (mean over real tokens), grad_norm, lr, weight_sum, loss_scale
    where the plan scales the loss, sparsity (zeros among the pruned weights) where it prunes, and
    loss_tokens (the targets the mask keeps: completions) for supervised examples.
    A step whose loss or gradient is not finite leaves parameters, optimizer state and the carried
    state untouched (fp16 overflow then halves the loss scale). A carried state enters the step
    without a gradient path: backpropagation is truncated at the batch border.
    """
    fam, _ = model_family(plan)
    tx = make_optimizer(plan)
    lr = learning_rate(plan)
    prec = plan.precision
    shards, chunks, axes = plan.batch.data_parallel, plan.batch.accumulation, batch_axes(plan)
    _, abstract = abstract_state(plan, mesh)
    state_sh = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
    frozen = stop_frozen(plan)  # no gradient path to a frozen parameter (identity when all train)

    def loss_fn(params, mb, key, loss_scale):
        model = nnx.merge(graphdef, frozen(params))
        # The Rngs object is made inside the differentiated function: nnx refuses to advance an
        # RNG stream created at another trace level.
        loss_sum, weight_sum, _, hidden = model_loss(plan, fam, model, mb, deterministic=False,
                                                     rngs=nnx.Rngs(dropout=key))
        loss_sum = loss_sum.astype(jnp.float32)
        return scale_loss(prec, loss_scale, loss_sum), (loss_sum, weight_sum.astype(jnp.float32), hidden)

    rows_at = batch_sharding(plan, mesh)

    def step(state: TrainState, batch: Batch):
        with rows_sharding(rows_at):  # activations keep the batch's row split (models' shard_rows)
            return _step(state, batch)

    def _step(state: TrainState, batch: Batch):
        key = jax.random.fold_in(jax.random.key(plan.seed), state.step)
        rows = batch if plan.hidden_state is None else {**batch, "hidden": jax.lax.stop_gradient(state.hidden)}
        micro = split_micro(rows, shards, chunks, mesh, axes)
        gsum, lsum, wsum, hiddens = _sum_grads(
            state.params, micro, lambda p, mb, r: loss_fn(p, mb, r, state.loss_scale), chunks, key
        )
        hidden = merge_micro(hiddens, shards, chunks, state_sh.hidden) if plan.hidden_state is not None else ()
        denom = jnp.where(wsum == 0, 1.0, wsum)  # an all-padding batch: loss 0; a NaN weight stays NaN
        grads = jax.tree_util.tree_map(lambda g: g / denom, unscale_grads(prec, state.loss_scale, gsum))
        loss = lsum / denom
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = TrainState(
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            step=state.step + 1,
            loss_scale=next_loss_scale(prec, state.loss_scale, finite),
            hidden=keep(hidden, state.hidden),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": jnp.asarray(lr(state.step), jnp.float32), "weight_sum": wsum}
        if prec.loss_scale != "none":
            metrics["loss_scale"] = state.loss_scale.scale
        if plan.pruning is not None:
            metrics["sparsity"] = achieved_sparsity(plan, new_state.params)
        supervised = plan.data.format == "supervised"
        if supervised:  # the mask is 1 on completion targets only: how many targets counted in the loss
            metrics["loss_tokens"] = wsum
        if plan.data.buckets:  # rows padded to their bucket: how many positions were padding
            real = _unpadded(batch) if supervised else jnp.sum(batch["mask"] > 0).astype(jnp.float32)
            metrics["real_tokens"], metrics["padded_tokens"] = real, batch["mask"].size - real
        return new_state, metrics

    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sharding(plan, mesh)),
        out_shardings=(state_sh, NamedSharding(mesh, PartitionSpec())),
        donate_argnums=0,
    )


def make_eval_step(plan: Plan, mesh: Mesh, graphdef: nnx.GraphDef):
    """eval_step(params, batch) -> {loss_sum, weight_sum, correct_sum}: sums, so the loop can add batches.

    A batch of several micro-batches' worth of rows is evaluated one micro-batch at a time (scan),
    so evaluation needs no more activation memory than training.
    """
    fam, _ = model_family(plan)
    shards, axes = plan.batch.data_parallel, batch_axes(plan)
    _, abstract = abstract_state(plan, mesh)
    params_sh = jax.tree_util.tree_map(lambda a: a.sharding, abstract.params)
    per_chunk = shards * plan.batch.micro_batch

    def sums(params, mb):
        model = nnx.merge(graphdef, params)
        loss_sum, weight_sum, metrics = fam.loss(model, mb, deterministic=True, rngs=None)
        correct = metrics.get("correct_sum", metrics.get("correct", jnp.zeros(()))) if metrics else jnp.zeros(())
        return jnp.stack([loss_sum.astype(jnp.float32), weight_sum.astype(jnp.float32), jnp.asarray(correct, jnp.float32)])

    rows_at = batch_sharding(plan, mesh)

    def eval_step(params, batch: Batch):
        with rows_sharding(rows_at):
            return _eval_step(params, batch)

    def _eval_step(params, batch: Batch):
        rows = jax.tree_util.tree_leaves(batch)[0].shape[0]
        chunks = rows // per_chunk if rows % per_chunk == 0 else 1
        if chunks > 1:
            micro = split_micro(batch, shards, chunks, mesh, axes)
            total = jax.lax.scan(lambda acc, mb: (acc + sums(params, mb), None), jnp.zeros(3, jnp.float32), micro)[0]
        else:
            total = sums(params, batch)
        return {"loss_sum": total[0], "weight_sum": total[1], "correct_sum": total[2]}

    return jax.jit(eval_step, in_shardings=(params_sh, batch_sharding(plan, mesh)), out_shardings=NamedSharding(mesh, PartitionSpec()))


def make_stream_eval_step(plan: Plan, mesh: Mesh, graphdef: nnx.GraphDef):
    """eval_step(params, batch, hidden) -> (sums, hidden): one batch of the validation streams, each row
    continued from the state the previous batch left (a plan with a carried state), micro-batch by micro-batch."""
    fam, _ = model_family(plan)
    shards, chunks, axes = plan.batch.data_parallel, plan.batch.accumulation, batch_axes(plan)
    _, abstract = abstract_state(plan, mesh)
    params_sh = jax.tree_util.tree_map(lambda a: a.sharding, abstract.params)
    hidden_sh = abstract.hidden.sharding

    def sums(acc, mb, params):
        model = nnx.merge(graphdef, params)
        loss_sum, weight_sum, metrics, hidden = model_loss(plan, fam, model, mb, deterministic=True, rngs=None)
        row = jnp.stack([loss_sum.astype(jnp.float32), weight_sum.astype(jnp.float32),
                         jnp.asarray(metrics.get("correct_sum", 0.0), jnp.float32)])
        return acc + row, hidden

    rows_at = batch_sharding(plan, mesh)

    def eval_step(params, batch: Batch, hidden):
        micro = split_micro({**batch, "hidden": hidden}, shards, chunks, mesh, axes)
        with rows_sharding(rows_at):
            total, hiddens = jax.lax.scan(lambda acc, mb: sums(acc, mb, params), jnp.zeros(3, jnp.float32), micro)
        out = {"loss_sum": total[0], "weight_sum": total[1], "correct_sum": total[2]}
        return out, merge_micro(hiddens, shards, chunks, hidden_sh)

    return jax.jit(eval_step, in_shardings=(params_sh, batch_sharding(plan, mesh), hidden_sh),
                   out_shardings=(NamedSharding(mesh, PartitionSpec()), hidden_sh))


def make_evaluator_step(plan: Plan, mesh: Mesh, graphdef: nnx.GraphDef):
    """step(params, batch, hidden) -> (sums, hidden) for every plan: the stream step when the plan
    carries a state, else `make_eval_step` with `hidden` passed through (it is ())."""
    if plan.hidden_state is not None:
        return make_stream_eval_step(plan, mesh, graphdef)
    plain = make_eval_step(plan, mesh, graphdef)
    return lambda params, batch, hidden: (plain(params, batch), hidden)
