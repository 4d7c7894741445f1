"""capidsl's executor against a minimal hand-written flax.nnx + optax loop: the throughput ratio.

Both train the same model (capidsl's GPT module with the recipe's options), on the same token
stream (the recipe's data), on the same mesh (every local device on `data`), in one process.
The hand-written loop is what a careful user writes in 40 lines: `nnx.split`, one `jax.jit` step
with donated buffers, `optax.adamw` with the plan's settings and clipping, numpy batches sampled from
the stream, the loss fetched every `log_every` steps. capidsl runs its whole loop: the grain pipeline, metrics
windows, metrics.jsonl, the stop rule, and the final checkpoint.

Both are timed the same way: the wall time between two log points (each one waits for the loss of
its step), divided by the steps in between — everything the loop does per step, data included. The
first window (compilation) is left out; a system's figure is the median window of a run, and runs
alternate between the systems, REPEATS each. The last line is capidsl / hand-written throughput
(goal ≥ 0.98). (A first version took the difference of two run lengths' wall times: on a small model
the noise of start-up swamped the steps.) Both loops train capidsl's GPT module, so this ratio sees the
loop, not the module: benchmarks/plain_model.py adds an independent plain model and reuses the batches,
the timing and the optimizer below.

Run: .venv/bin/python benchmarks/executor_overhead.py [recipe.yaml] [--steps N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from capidsl import rundir

REPO = Path(__file__).resolve().parents[1]
REPEATS, LOG_EVERY = 3, 10
# No eval, no periodic checkpoint, no stop rule: what is compared is the training loop itself.
QUIET = ["eval.every=null", "checkpoint.every=null", "stop.when=null", "stop.restore_best=false",
         "logging.progress=none", "logging.tensorboard=false", f"logging.every=every {LOG_EVERY} steps"]


def capidsl_step_s(plan, steps: int) -> float:
    """Median seconds per step over capidsl's log windows (metrics.jsonl `step_time_s`), the first left out."""
    from capidsl.exec.loop import run

    with tempfile.TemporaryDirectory() as tmp:
        summary = run(plan, Path(tmp) / "run", max_steps=steps)
        rows = rundir.read_metrics(Path(tmp) / "run")
    assert summary.steps == steps, summary.stop_reason
    return statistics.median(r["step_time_s"] for r in rows[1:])


def data_mesh():
    """Every local device on one `data` axis (Auto), and the sharding that splits a batch's rows over it."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return mesh, NamedSharding(mesh, P("data"))


def sampled_batches(plan):
    """Endless numpy batches (inputs, targets, mask or None) of random windows of the recipe's training
    stream, drawn as a careful user draws them; the mask (1 on the targets that count) only for a
    supervised source. A mixture's sources are drawn from as one stream, not in the mixture's proportions
    (the token values do not change the time of a step)."""
    import dataclasses

    import numpy as np

    from capidsl.data.sources import lm_masks, lm_streams, source_key

    d = plan.data
    parts = [dataclasses.replace(d, source=m.source, path=m.path, field=m.field, hf_split=m.hf_split, store=m.store,
                                 mixture=(), mixture_stages=()) for m in d.mixture] if d.mixture else [d]
    streams = [lm_streams(source_key(p))[0] for p in parts]
    stream = streams[0] if len(streams) == 1 else np.concatenate([s[:] for s in streams])  # s[:]: a store's split whole
    masks = lm_masks(source_key(d)) if not d.mixture else None
    masks = None if masks is None else masks[0]
    window = plan.batch.seq_len + 1
    n_windows = len(stream) // window
    rng = np.random.default_rng(plan.seed)
    while True:
        idx = rng.integers(0, n_windows, plan.batch.global_batch)
        at = idx[:, None] * window + np.arange(window)
        tokens = np.asarray(stream[at], np.int32)
        mask = None if masks is None else np.asarray(masks[at][:, 1:], np.float32)
        yield tokens[:, :-1], tokens[:, 1:], mask


def timed_windows(plan, steps: int, one_step) -> float:
    """Median seconds per step of a hand-written loop: `one_step(x, y, mask)` takes device arrays and
    returns the step's loss (a device scalar); the loss is fetched every log_every steps and the wall
    time between two fetches divided by the steps in between, the first (compiling) window left out."""
    import jax

    _, rows = data_mesh()
    batches = sampled_batches(plan)
    every = plan.cadence.log_every
    windows, last = [], time.perf_counter()
    for i in range(steps):
        x, y, mask = next(batches)
        loss = one_step(jax.device_put(x, rows), jax.device_put(y, rows),
                        None if mask is None else jax.device_put(mask, rows))
        if (i + 1) % every == 0:
            float(loss)
            now = time.perf_counter()
            windows.append((now - last) / every)
            last = now
    return statistics.median(windows[1:])


def rotated_rounds(systems: dict, plan, steps: int, repeats: int) -> dict[str, list[float]]:
    """name -> seconds per step of each run: `repeats` rounds, each running every system once, the
    order rotated from round to round (on a noisy machine no system always goes first)."""
    names, per_step = list(systems), {name: [] for name in systems}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            per_step[name].append(systems[name](plan, steps))
    return per_step


def print_rounds(per_step: dict[str, list[float]], plan, steps: int, repeats: int) -> None:
    """The table of `rotated_rounds`: each system's median s/step, tokens/s and every run."""
    print(f"seconds per step: median of {steps // LOG_EVERY - 1} log windows of {LOG_EVERY} steps after the first, "
          f"{repeats} runs each, rotating:")
    print(f"{'system':<14}{'median s/step':>15}{'tokens/s':>12}   all runs (s/step)")
    for name, values in per_step.items():
        m = statistics.median(values)
        print(f"{name:<14}{m:>15.4f}{plan.batch.tokens_per_step / m:>12,.0f}   " + ", ".join(f"{v:.4f}" for v in values))


def user_schedule(plan):
    """The plan's learning-rate schedule as a user writes it in optax: a constant, or linear warmup then
    cosine decay (what every shipped recipe says); None for any other shape of schedule."""
    import optax

    p = plan.schedule.pieces
    if len(p) == 1 and p[0].kind == "constant":
        return p[0].init_value
    if len(p) == 2 and (p[0].kind, p[1].kind) == ("linear", "cosine") and p[0].end_value == p[1].init_value:
        return optax.warmup_cosine_decay_schedule(p[0].init_value, p[0].end_value, p[0].steps,
                                                  p[0].steps + p[1].steps, p[1].end_value)
    return None


def user_optimizer(plan):
    """optax.adamw with the plan's settings (schedule, betas, epsilon, weight decay on matrices only,
    global-norm clipping), written as a user writes it; the plan must name adamw and such a schedule."""
    import jax
    import optax

    o = plan.optimizer
    assert o.name == "adamw" and o.decay_mask in ("matrices", "all"), (o.name, o.decay_mask)
    lr = user_schedule(plan)
    assert lr is not None, plan.schedule.text
    mask = (lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)) if o.decay_mask == "matrices" else None
    adamw = optax.adamw(lr, o.beta1, o.beta2, o.epsilon, weight_decay=o.weight_decay, mask=mask)
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip is not None else adamw


def hand_written_step_s(plan, steps: int) -> float:
    """A minimal flax.nnx + optax loop over the same model, stream and mesh; timed like capidsl's windows."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from capidsl.models.transformer import GPT, GPTConfig

    mesh, _ = data_mesh()
    param_dtype, compute_dtype = jnp.dtype(plan.precision.param_dtype), jnp.dtype(plan.precision.compute_dtype)
    config = GPTConfig(**plan.model.options, unroll_layers=plan.model.layer_loop == "unrolled")  # as the plan runs it
    model = GPT(config, rngs=nnx.Rngs(plan.seed), param_dtype=param_dtype, compute_dtype=compute_dtype)
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    tx = user_optimizer(plan)
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, opt_state]

    def one_step(x, y, mask):
        state[0], state[1], loss = step(state[0], state[1], x, y)
        return loss

    return timed_windows(plan, steps, one_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "base.yaml"))
    ap.add_argument("--steps", type=int, default=60, help="steps per run (a multiple of the log cadence, 10)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    import jax

    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    plan = compile_plan(Recipe.from_yaml(args.recipe, overrides=QUIET + args.overrides))
    per_step = rotated_rounds({"capidsl": capidsl_step_s, "hand-written": hand_written_step_s}, plan, args.steps, REPEATS)
    b = plan.batch
    print(f"{Path(args.recipe).name}: {plan.model.param_count:,} parameters, batch {b.global_batch}×{b.seq_len}, "
          f"mesh {dict(zip(plan.mesh.axes, plan.mesh.shape))}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print_rounds(per_step, plan, args.steps, REPEATS)
    ratio = statistics.median(per_step["hand-written"]) / statistics.median(per_step["capidsl"])
    print(f"throughput ratio capidsl / hand-written: {ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
