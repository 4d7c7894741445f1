"""capidsl against an independent plain flax.nnx GPT of the same shape: what the model module costs (issue 15).

benchmarks/executor_overhead.py compares `capidsl run` with a hand-written loop around capidsl's *own* GPT
module, so it sees the loop and not the module. Here a third system trains a GPT written plainly for this
benchmark, importing no capidsl model code: a Python loop over blocks of nnx.MultiHeadAttention (causal;
for rotary positions nnx.Linear q/k/v/o, the rotation and jax.nn.dot_product_attention), nnx.LayerNorm or
nnx.RMSNorm, an nnx.Linear GELU MLP or SwiGLU, nnx.Embed with tied (`attend`) or untied output, `nnx.split`
and one `jax.jit` step with donated buffers, optax.adamw with clipping. Shape, batch, data stream, optimizer
settings and dtypes come from the compiled plan; its parameter count must equal the plan's (asserted), so
the FLOPs match. The plain loop and the hand-written loop share executor_overhead.py's batches and timing.

Each system's figure is the median log window of a run (first window left out), runs rotate between the
three systems, REPEATS each. Printed: capidsl / plain (the new ratio: loop and module), capidsl /
hand-written (executor_overhead's loop-only ratio) and hand-written / plain (the module alone), each with
the ratios of the single rounds as its spread.

Shapes with a feature the plain model lacks (adapters, frozen parameters, pruning, buckets, accumulation,
remat, ...) are listed as not covered; most can still be compared without it, e.g. `recipes/pruning.yaml
--set pruning=null`, `recipes/finetune.yaml --set training.trainable=null`, `recipes/seed.yaml --set
training.gradient_accumulation_steps=1`.

`--profile` then takes the first recipe's train step apart, outside any loop (one batch on the device):
XLA's cost analysis, temp buffer, compile time and top-level op counts of capidsl's compiled step, of the
same step rebuilt from capidsl's pieces with one suspect changed at a time (the non-finite guard removed,
the layer scan unrolled as a Python loop, a plain mean loss, all three; and `jax.lax.scan(unroll=True)`,
which the plan now chooses for shallow models without remat) and of the plain model's step; each timed alone, rounds rotating; and four of them traced
with jax.profiler, XLA:CPU's kernels (thunks) summed by kind.

Run: .venv/bin/python benchmarks/plain_model.py [recipe.yaml ...] [--steps N] [--repeats R] [--set k=v ...] [--profile]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from executor_overhead import (QUIET, REPO, capidsl_step_s, data_mesh, hand_written_step_s, print_rounds,
                               rotated_rounds, timed_windows, user_optimizer, user_schedule)

REPEATS = 3
INIT = nnx.initializers.normal(0.02)  # GPT-2's initialiser; the values do not change the timing


# ---- the plain model ----------------------------------------------------------------------------


def not_covered(plan) -> list[str]:
    """Why the plain model cannot train this plan as capidsl does (empty: it can)."""
    o = plan.model.options
    if plan.model.family != "gpt":
        return [f"family {plan.model.family}"]
    checks = [("lora_rank" in o, "low-rank adapters"), (o["dropout"] > 0, "dropout"),
              (o["rope_scaling"] != "none", "rope scaling"), (bool(plan.optimizer.frozen), "frozen parameters"),
              (plan.pruning is not None, "pruning"), (bool(plan.data.buckets), "bucketed batches (one program per bucket)"),
              (plan.batch.accumulation > 1, f"gradient accumulation ({plan.batch.accumulation} micro-batches)"),
              (plan.model.remat != "none", f"remat {plan.model.remat}"), (plan.model.attention != "xla", "fused attention"),
              (plan.precision.loss_scale != "none", "loss scaling"), (plan.optimizer.name != "adamw", plan.optimizer.name),
              (user_schedule(plan) is None, f"schedule {plan.schedule.text}"), (plan.hidden_state is not None, "carried state")]
    return [reason for bad, reason in checks if bad]


def rotate(x: jax.Array, theta: float) -> jax.Array:
    """Rotary positions on x [B, T, heads, head_dim], "rotate half" layout (GPT-NeoX, Llama in HF)."""
    t, d = x.shape[1], x.shape[-1]
    angles = jnp.arange(t, dtype=jnp.float32)[:, None] / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
    x1, x2 = x[..., : d // 2].astype(jnp.float32), x[..., d // 2:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RopeAttention(nnx.Module):
    """Causal self-attention with rotary positions: nnx.Linear q/k/v/o, k/v over n_kv_heads (GQA)."""

    def __init__(self, o: dict, linear):
        d, self.heads, self.kv_heads = o["d_model"], o["n_heads"], o["n_kv_heads"]
        self.head_dim, self.theta = d // self.heads, o["rope_theta"]
        self.q, self.o = linear(d, self.heads * self.head_dim), linear(self.heads * self.head_dim, d)
        self.k, self.v = linear(d, self.kv_heads * self.head_dim), linear(d, self.kv_heads * self.head_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        q = rotate(self.q(x).reshape(b, t, self.heads, self.head_dim), self.theta)
        k = rotate(self.k(x).reshape(b, t, self.kv_heads, self.head_dim), self.theta)
        v = self.v(x).reshape(b, t, self.kv_heads, self.head_dim)
        return self.o(jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, -1))


def norm(o: dict, **kw) -> nnx.Module:
    if o["norm"] == "layernorm":
        return nnx.LayerNorm(o["d_model"], epsilon=o["norm_eps"], use_bias=o["bias"], **kw)
    return nnx.RMSNorm(o["d_model"], epsilon=o["norm_eps"], **kw)


class PlainBlock(nnx.Module):
    def __init__(self, o: dict, dtype, param_dtype, rngs: nnx.Rngs):
        d, f = o["d_model"], o["d_ff"]
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        linear = partial(nnx.Linear, use_bias=o["bias"], kernel_init=INIT, **kw)
        self.ln1, self.ln2 = norm(o, **kw), norm(o, **kw)
        self.rope = o["position"] == "rope"
        self.attn = RopeAttention(o, linear) if self.rope else nnx.MultiHeadAttention(
            num_heads=o["n_heads"], in_features=d, num_kv_heads=o["n_kv_heads"], use_bias=o["bias"],
            kernel_init=INIT, decode=False, **kw)
        self.up, self.down = linear(d, f), linear(f, d)
        self.gate = linear(d, f) if o["mlp"] == "swiglu" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.ln1(x)
        x = x + (self.attn(h) if self.rope else self.attn(h, is_causal=True))
        h = self.ln2(x)
        h = jax.nn.silu(self.gate(h)) * self.up(h) if self.gate is not None else jax.nn.gelu(self.up(h))
        return x + self.down(h)


class PlainGPT(nnx.Module):
    """Token ids [B, T] -> float32 logits [B, T, vocab]; the blocks run as a Python loop."""

    def __init__(self, o: dict, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.wte = nnx.Embed(o["vocab_size"], o["d_model"], embedding_init=INIT, **kw)
        self.wpe = nnx.Embed(o["max_positions"], o["d_model"], embedding_init=INIT, **kw) if o["position"] == "learned" else None
        self.blocks = nnx.List([PlainBlock(o, dtype, param_dtype, rngs) for _ in range(o["n_layers"])])
        self.ln_f = norm(o, **kw)
        self.head = None if o["tied_embeddings"] else nnx.Linear(o["d_model"], o["vocab_size"], use_bias=False,
                                                                 kernel_init=INIT, **kw)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(jnp.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return (self.wte.attend(x) if self.head is None else self.head(x)).astype(jnp.float32)


def plain_parts(plan):
    """(params, opt_state, step, loss_fn) of the plain model: step(params, opt_state, x, y, mask) ->
    (params, opt_state, loss), jitted with the state donated; mask None or 1 on the targets that count."""
    model = PlainGPT(plan.model.options, jnp.dtype(plan.precision.compute_dtype),
                     jnp.dtype(plan.precision.param_dtype), nnx.Rngs(plan.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert count == plan.model.param_count, f"plain model {count:,} parameters, capidsl's {plan.model.param_count:,}"
    mesh, _ = data_mesh()
    params = jax.device_put(params, NamedSharding(mesh, P()))
    tx = user_optimizer(plan)

    def loss_fn(params, x, y, mask):
        nll = optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(x), y)
        return nll.mean() if mask is None else jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y, mask):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return params, tx.init(params), step


def plain_step_s(plan, steps: int) -> float:
    """The plain model in the hand-written loop (executor_overhead's batches and timing)."""
    params, opt_state, step = plain_parts(plan)
    state = [params, opt_state]

    def one_step(x, y, mask):
        state[0], state[1], loss = step(state[0], state[1], x, y, mask)
        return loss

    return timed_windows(plan, steps, one_step)


# ---- where the time goes (--profile) ------------------------------------------------------------


def capidsl_variant(plan, graphdef, *, guard: bool, unroll: bool, capidsl_loss: bool):
    """capidsl's train step rebuilt from its pieces (its GPT module, loss and optimizer), with each
    suspect switchable: the non-finite guard (`jnp.where(finite, new, old)` over parameters and optimizer
    state), the layers scanned or unrolled, the loss as capidsl's family writes it (a masked sum divided
    by the weight) or a plain mean. step(params, opt_state, batch) -> (params, opt_state, loss)."""
    from capidsl.exec.optimizer import make_optimizer

    tx = make_optimizer(plan)

    def loss_fn(params, b):
        logits = nnx.merge(graphdef, params)(b["inputs"], deterministic=False, unroll=unroll)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
        if not capidsl_loss:
            return nll.mean()
        mask = b["mask"]
        return jnp.sum(jnp.where(mask > 0, nll * mask, 0.0)) / jnp.sum(mask)

    @partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, b):
        loss, grads = jax.value_and_grad(loss_fn)(params, b)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if guard:
            finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
            keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
            new_params, new_opt = keep(new_params, params), keep(new_opt, opt_state)
        return new_params, new_opt, loss

    return step


def hlo_summary(compiled) -> dict:
    """XLA's cost analysis (a while loop's body is counted once, not per trip), the temp buffer, and the
    compiled program's instructions by opcode (ENTRY and loop bodies; not inside fusions or reducers)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    text = compiled.as_text()
    inner = set(re.findall(r"(?:calls|to_apply)=(%[\w.-]+)", text))
    ops, skip = Counter(), False
    for line in text.splitlines():
        if line and not line.startswith(" "):  # a computation's header (or its closing brace)
            skip = line.split(" ")[0] in inner
            continue
        m = re.search(r" = .*?\s([a-z][a-z0-9-]*)\(", line)
        if m and not skip and m.group(1) not in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            ops[m.group(1)] += 1
    return {"flops": cost.get("flops", 0.0), "bytes": cost.get("bytes accessed", 0.0),
            "temp": compiled.memory_analysis().temp_size_in_bytes, "ops": ops}


def gpt_graphdef(plan, unroll_layers: bool):
    """The graphdef of capidsl's GPT with its layer scan looping or unrolled by XLA (`jax.lax.scan(...,
    unroll=True)`: one trace of the block, no while loop; the plan's choice for shallow models without
    remat, capidsl/plan/kernels.py `choose_layer_loop`), whatever the plan chose."""
    from capidsl.models.transformer import GPT, GPTConfig

    p = plan.precision
    return nnx.graphdef(nnx.eval_shape(lambda: GPT(
        GPTConfig(**plan.model.options, unroll_layers=unroll_layers), rngs=nnx.Rngs(plan.seed),
        param_dtype=jnp.dtype(p.param_dtype), compute_dtype=jnp.dtype(p.compute_dtype))))


TRACED = ("capidsl train step", "  without the guard", "  layers unrolled", "plain model")
TRACED_STEPS = 3


def thunk_times(runs: dict) -> None:
    """Each run of TRACED_STEPS steps under jax.profiler: XLA:CPU's thunks (its kernels: fusions, dots,
    copies, the while loop...) summed by kind, ms per step. Thunks may run two at a time on two cores, so a
    column's sum can differ from the wall time below it."""
    import gzip
    import json
    import tempfile

    sums, walls = {}, {}
    for name, run in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            with jax.profiler.trace(tmp, create_perfetto_trace=True):
                run()
            walls[name] = (time.perf_counter() - t0) / TRACED_STEPS
            trace = json.load(gzip.open(next(Path(tmp).rglob("*.trace.json.gz"))))
        events = trace["traceEvents"] if isinstance(trace, dict) else trace
        sums[name] = Counter()
        for e in events:
            if e.get("ph") == "X" and not e["name"].startswith(("$", "Thunk", "Pjit", "np.", "Slinky", "Parse")):
                sums[name][re.sub(r"[.\d]+$", "", e["name"])] += e.get("dur", 0) / 1000 / TRACED_STEPS
    kinds = sorted(set().union(*sums.values()), key=lambda k: -max(c[k] for c in sums.values()))
    print(f"\nXLA:CPU thunks by kind, ms per step ({TRACED_STEPS} steps traced with jax.profiler)")
    print(f"{'kind':<40}" + "".join(f"{n.strip()[:18]:>20}" for n in runs))
    for k in kinds[:16]:
        print(f"{k:<40}" + "".join(f"{sums[n][k]:>20.1f}" for n in runs))
    print(f"{'sum of all thunks':<40}" + "".join(f"{sum(sums[n].values()):>20.1f}" for n in runs))
    print(f"{'wall (traced)':<40}" + "".join(f"{walls[n] * 1000:>20.1f}" for n in runs))


def profile(plan, steps: int, rounds: int) -> None:
    """The compiled steps compared, then the steps alone timed alternately (one batch on the device)."""
    import numpy as np

    from capidsl.exec.mesh import build_mesh
    from capidsl.exec.state import init_state
    from capidsl.exec.step import batch_sharding, make_train_step
    from executor_overhead import sampled_batches

    mesh = build_mesh(plan)
    graphdef, state0 = init_state(plan, mesh)
    x, y, mask = next(sampled_batches(plan))
    rows = batch_sharding(plan, mesh)
    batch = {k: jax.device_put(v, rows) for k, v in
             {"inputs": x, "targets": y, "mask": np.ones(x.shape, np.float32) if mask is None else mask}.items()}
    fresh = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731  (each system donates its own copy)

    # name -> (jitted step, a fresh state (its donated arguments), its other arguments, output -> (state, loss))
    systems = {"capidsl train step": (make_train_step(plan, mesh, graphdef), lambda: [fresh(state0)], (batch,),
                                      lambda out: ([out[0]], out[1]["loss"]))}
    hand_out = lambda out: (list(out[:2]), out[2])  # noqa: E731
    for name, kw in [("rebuilt: scan, guard, masked sum", dict(guard=True, unroll=False, capidsl_loss=True)),
                     ("  without the guard", dict(guard=False, unroll=False, capidsl_loss=True)),
                     ("  layers unrolled", dict(guard=True, unroll=True, capidsl_loss=True)),
                     ("  mean loss", dict(guard=True, unroll=False, capidsl_loss=False)),
                     ("  unrolled, no guard, mean loss", dict(guard=False, unroll=True, capidsl_loss=False)),
                     ("  scan(unroll=True)", dict(guard=True, unroll=False, capidsl_loss=True))]:
        gd = gpt_graphdef(plan, unroll_layers="scan(unroll" in name)  # the rebuilt steps loop unless told
        systems[name] = (capidsl_variant(plan, gd, **kw), lambda: [fresh(state0.params), fresh(state0.opt_state)],
                         (batch,), hand_out)
    params, opt_state, plain = plain_parts(plan)
    systems["plain model"] = (plain, lambda: [fresh(params), fresh(opt_state)],
                              (batch["inputs"], batch["targets"], None if mask is None else batch["mask"]), hand_out)

    print(f"\ncompiled steps ({plan.name}, layers {plan.model.layer_loop}): XLA cost analysis (a scan's body counted once), temp buffer, "
          "lower+compile time, top-level ops")
    print(f"{'system':<34}{'GFLOP':>8}{'GB accessed':>13}{'temp MiB':>10}{'compile s':>11}   ops (most frequent)")
    for name, (fn, make_state, extra, unpack) in systems.items():
        t0 = time.perf_counter()
        compiled = fn.lower(*make_state(), *extra).compile()
        systems[name] = (compiled, make_state, extra, unpack)  # timed below as compiled here
        took, h = time.perf_counter() - t0, hlo_summary(compiled)
        top = ", ".join(f"{op} {n}" for op, n in h["ops"].most_common(6))
        print(f"{name:<34}{h['flops'] / 1e9:>8.2f}{h['bytes'] / 1e9:>13.3f}{h['temp'] / 2**20:>10.1f}{took:>11.2f}   {top}")

    states, times = {}, {name: [] for name in systems}

    def advance(name, n):
        fn, _, extra, unpack = systems[name]
        for _ in range(n):
            states[name], loss = unpack(fn(*states[name], *extra))
        return float(loss)

    for name, (_, make_state, _, _) in systems.items():  # compile and warm up
        states[name] = make_state()
        advance(name, 2)
    names = list(systems)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            advance(name, steps)
            times[name].append((time.perf_counter() - t0) / steps)
    base = statistics.median(times["capidsl train step"])
    print(f"\nsteps alone: {steps} steps a round, {rounds} rounds rotating; median s/step (all rounds)")
    print(f"{'system':<34}{'s/step':>9}{'/ capidsl':>11}   all rounds")
    for name, values in times.items():
        m = statistics.median(values)
        print(f"{name:<34}{m:>9.4f}{m / base:>11.3f}   " + ", ".join(f"{v:.4f}" for v in values))
    thunk_times({n: (lambda n=n: advance(n, TRACED_STEPS)) for n in TRACED})


# ---- the comparison -----------------------------------------------------------------------------


def compare(plan, label: str, steps: int, repeats: int) -> None:
    """capidsl run, the plain model and the hand-written loop, runs rotating; the table and the ratios."""
    systems = {"capidsl": capidsl_step_s, "plain model": plain_step_s, "hand-written": hand_written_step_s}
    per_step = rotated_rounds(systems, plan, steps, repeats)
    b, o = plan.batch, plan.model.options
    shape = (f"d_model {o['d_model']}, {o['n_layers']} layers, {o['n_heads']}/{o['n_kv_heads']} heads, "
             f"{o['position']}, {o['norm']}, {o['mlp']}, {'tied' if o['tied_embeddings'] else 'untied'}")
    print(f"\n{label}: {plan.model.param_count:,} parameters ({shape}), batch {b.global_batch}×{b.seq_len}, "
          f"{plan.precision.compute_dtype}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
    print_rounds(per_step, plan, steps, repeats)
    for what, faster, slower in [("capidsl / plain model (loop and module)", "capidsl", "plain model"),
                                 ("capidsl / hand-written (loop only)", "capidsl", "hand-written"),
                                 ("hand-written / plain model (module only)", "hand-written", "plain model")]:
        ratio = statistics.median(per_step[slower]) / statistics.median(per_step[faster])
        rounds = ", ".join(f"{s / f:.3f}" for f, s in zip(per_step[faster], per_step[slower]))
        print(f"throughput ratio {what}: {ratio:.3f}   (rounds: {rounds})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=[str(REPO / "recipes" / "base.yaml")])
    ap.add_argument("--steps", type=int, default=60, help="steps per run (a multiple of the log cadence, 10)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help="runs of each system")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--profile", action="store_true", help="also take the first recipe's step apart")
    ap.add_argument("--profile-steps", type=int, default=10, help="steps a round when timing the steps alone")
    ap.add_argument("--profile-rounds", type=int, default=5)
    ap.add_argument("--no-compare", action="store_true", help="only --profile")
    args = ap.parse_args()

    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    plans = [(Path(r).name, compile_plan(Recipe.from_yaml(r, overrides=QUIET + args.overrides))) for r in args.recipes]
    for label, plan in plans:
        why = not_covered(plan)
        if why:
            print(f"\n{label}: not covered by the plain model: {'; '.join(why)}")
        elif not args.no_compare:
            compare(plan, label, args.steps, args.repeats)
    if args.profile:
        profile(plans[0][1], args.profile_steps, args.profile_rounds)


if __name__ == "__main__":
    sys.exit(main())
