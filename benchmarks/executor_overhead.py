"""capidsl's executor against a minimal hand-written flax.nnx + optax loop: the throughput ratio.

Both train the same model (capidsl's GPT module with the recipe's options), on the same token
stream (the recipe's data), on the same mesh (every local device on `data`), in one process.
The hand-written loop is what a careful user writes in 40 lines: `nnx.split`, one `jax.jit` step
with donated buffers, `optax.adamw` with clipping, numpy batches sampled from the stream, the
loss fetched every `log_every` steps. capidsl runs its whole loop: the grain pipeline, metrics
windows, metrics.jsonl, the stop rule, and the final checkpoint.

Both are timed the same way: the wall time between two log points (each one waits for the loss of
its step), divided by the steps in between — everything the loop does per step, data included. The
first window (compilation) is left out; a system's figure is the median window of a run, and runs
alternate between the systems, REPEATS each. The last line is capidsl / hand-written throughput
(goal ≥ 0.98). (A first version took the difference of two run lengths' wall times: on a small model
the noise of start-up swamped the steps.)

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


def hand_written_step_s(plan, steps: int) -> float:
    """A minimal flax.nnx + optax loop over the same model, stream and mesh; timed like capidsl's windows."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    from capidsl.data.sources import lm_streams, source_key
    from capidsl.models.transformer import GPT, GPTConfig

    cfg = plan.model.options
    o = plan.optimizer
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    model = GPT(GPTConfig(**cfg), rngs=nnx.Rngs(plan.seed), param_dtype=jnp.float32, compute_dtype=jnp.float32)
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.device_put(params, NamedSharding(mesh, P()))
    total = plan.cadence.total_steps
    lr = optax.warmup_cosine_decay_schedule(0.0, 1e-3, max(1, total // 10), total, 1e-4)
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip or 1e9),
                     optax.adamw(lr, o.beta1, o.beta2, o.epsilon, weight_decay=o.weight_decay,
                                 mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p)))
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    stream = lm_streams(source_key(plan.data))[0]
    window = plan.batch.seq_len + 1
    n_windows = len(stream) // window
    rng = np.random.default_rng(plan.seed)
    windows, last = [], time.perf_counter()
    for i in range(steps):
        idx = rng.integers(0, n_windows, plan.batch.global_batch)
        tokens = np.asarray(stream[idx[:, None] * window + np.arange(window)], np.int32)
        x, y = jax.device_put(tokens[:, :-1], rows), jax.device_put(tokens[:, 1:], rows)
        params, opt_state, loss = step(params, opt_state, x, y)
        if (i + 1) % plan.cadence.log_every == 0:
            float(loss)
            now = time.perf_counter()
            windows.append((now - last) / plan.cadence.log_every)
            last = now
    return statistics.median(windows[1:])


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
    systems = {"capidsl": capidsl_step_s, "hand-written": hand_written_step_s}
    per_step: dict[str, list[float]] = {name: [] for name in systems}
    for r in range(REPEATS):
        for name, fn in (systems.items() if r % 2 == 0 else reversed(systems.items())):
            per_step[name].append(fn(plan, args.steps))
    b = plan.batch
    print(f"{Path(args.recipe).name}: {plan.model.param_count:,} parameters, batch {b.global_batch}×{b.seq_len}, "
          f"mesh {dict(zip(plan.mesh.axes, plan.mesh.shape))}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"seconds per step: median of {args.steps // LOG_EVERY - 1} log windows of {LOG_EVERY} steps after the first, "
          f"{REPEATS} runs each, alternating:")
    print(f"{'system':<14}{'median s/step':>15}{'tokens/s':>12}   all runs (s/step)")
    for name, values in per_step.items():
        m = statistics.median(values)
        print(f"{name:<14}{m:>15.4f}{b.tokens_per_step / m:>12,.0f}   " + ", ".join(f"{v:.4f}" for v in values))
    ratio = statistics.median(per_step["hand-written"]) / statistics.median(per_step["capidsl"])
    print(f"throughput ratio capidsl / hand-written: {ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
