"""One command that shows what capidsl does on an accelerator, in one table (issue 15).

A Llama-shaped model (rope, RMSNorm, SwiGLU, grouped-query attention, untied; "1b": 0.86B parameters,
seq 2048) with bfloat16 compute and `micro_batch: auto` trains through `capidsl run` (the real loop:
data pipeline, metrics, checkpoint at the end) and through the plain hand-written flax.nnx loop of
benchmarks/plain_model.py (a model written for the benchmark, not capidsl's), on every local device
on one `data` axis. Printed: tokens/s and MFU of each and their ratio; the plan's predicted peak
device memory against the measured one (`device.memory_stats()["peak_bytes_in_use"]`, where the
backend reports it); the plan's step time (its FLOPs at the assumed 40% MFU) against the measured one.
MFU's peak is the data sheet of the device kind JAX reports, or a measured matmul roofline on a CPU
or an unknown device (capidsl/exec/peak.py). Meant for one GPU in under 8 minutes; `--tiny` runs the
same on a CPU in seconds (its table's columns are smoke-tested in the suite, never its speed).

    .venv/bin/python benchmarks/accelerator.py [--tiny] [--steps N] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {  # gpt options; "1b" is benchmarks/hf_weights.py's Llama 1b with a 2048-token window
    "1b": dict(vocab_size=32768, seq_len=2048, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=5632),
    "tiny": dict(vocab_size=256, seq_len=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176),
}
LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", tied_embeddings=False, bias=False)
COLUMNS = ("system", "tokens/s", "MFU", "step s (measured)", "step s (plan at 40% MFU)", "peak device memory (measured)",
           "peak device memory (plan)")


def recipe_text(shape: str, batch: int, steps: int) -> str:
    model = ", ".join(f"{k}: {json.dumps(v)}" for k, v in {**SHAPES[shape], **LLAMA}.items())
    windows = batch * (steps + 2) * 2  # synthetic windows: enough for the run without a second epoch
    return f"""
name: accelerator-{shape}
model: {{family: gpt, {model}}}
data: {{source: synthetic, synthetic_examples: {windows}, validation_fraction: 0.0}}
training: {{batch_size: {batch}, micro_batch: auto, duration: "{steps} steps", seed: 0, grad_clip: 1.0}}
precision: {{params: float32, compute: bfloat16, output: float32}}
schedule: "constant(3e-4, rest)"
eval: {{every: null}}
checkpoint: {{every: null}}
stop: {{when: null, restore_best: false}}
logging: {{every: "every {max(steps // 6, 1)} steps", progress: none, tensorboard: false}}
"""


def capidsl_side(plan) -> dict:
    """capidsl run: the median log window's tokens/s, MFU and step time (the first, compiling, left out) and
    the devices' measured peak memory."""
    from capidsl import rundir
    from capidsl.exec.loop import run
    from capidsl.exec.metrics import device_peak_bytes

    with tempfile.TemporaryDirectory() as tmp:
        summary = run(plan, Path(tmp) / "run")
        rows = [r for r in rundir.read_metrics(Path(tmp) / "run") if "tokens_per_s" in r]
        performance = json.loads((Path(tmp) / "run" / rundir.SUMMARY).read_text()).get("performance", {})
    assert summary.steps == plan.cadence.total_steps, summary.stop_reason
    steady = rows[1:] or rows
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady),
            "step_s": statistics.median(r["step_time_s"] for r in steady),
            "peak_bytes": device_peak_bytes(), "peak_source": performance.get("peak_source", "?")}


def plain_side(plan, steps: int) -> dict:
    """The plain model in the hand-written loop, timed as executor_overhead times it."""
    import jax

    from capidsl.exec.metrics import device_peak_bytes
    from capidsl.exec.peak import run_peak
    from plain_model import plain_step_s

    step_s = plain_step_s(plan, steps)
    per_device = plan.flops.flops_per_step / step_s / jax.device_count()
    return {"tokens_per_s": plan.batch.tokens_per_step / step_s, "step_s": step_s,
            "mfu": per_device / run_peak(plan.precision.compute_dtype).flops_per_s, "peak_bytes": device_peak_bytes()}


def attention_check() -> str:
    """cuDNN's fused attention against XLA's on this device (bfloat16, grouped-query heads, forward and
    the gradient of q): the kernel the plan picks for NVIDIA GPUs; not run elsewhere."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from capidsl.models.transformer import fused_attention

    if jax.default_backend() != "gpu":
        return "cuDNN attention vs XLA: not run (no GPU here)"
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 512, 16, 128)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.standard_normal((2, 512, 4, 128)), jnp.bfloat16) for _ in range(2))

    def loss(impl):
        return lambda q: jnp.sum(fused_attention(q, k, v, impl).astype(jnp.float32) ** 2)

    kernels = ("cudnn", "recompute")  # recompute: XLA's dot_product_attention (the plan's stand-in for cuDNN)
    out = {impl: jax.jit(lambda q, impl=impl: fused_attention(q, k, v, impl))(q) for impl in kernels}
    grad = {impl: jax.jit(jax.grad(loss(impl)))(q) for impl in kernels}
    diff = float(jnp.max(jnp.abs(out["cudnn"].astype(jnp.float32) - out["recompute"].astype(jnp.float32))))
    gdiff = float(jnp.max(jnp.abs(grad["cudnn"].astype(jnp.float32) - grad["recompute"].astype(jnp.float32))))
    scale = float(jnp.max(jnp.abs(grad["recompute"].astype(jnp.float32))))
    ok = diff <= 2e-2 and gdiff <= 2e-2 * max(scale, 1.0)
    return (f"cuDNN attention vs XLA (bf16, 16 q / 4 kv heads, T 512): output max abs diff {diff:.3g}, gradient "
            f"{gdiff:.3g} (of max {scale:.3g}): {'OK' if ok else 'MISMATCH'}")


def _gib(n) -> str:
    return "n/a (not reported)" if n is None else f"{n / 2**30:.2f} GiB"


def table(plan, ours: dict, plain: dict) -> list[str]:
    predicted = plan.flops.step_time_s
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, r in (("capidsl run", ours), ("plain flax.nnx loop", plain)):
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['step_s']:.4f} | {predicted:.4f} | "
                     f"{_gib(r['peak_bytes'])} | {_gib(plan.memory.total)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model, for a CPU (seconds)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per system (default 60; --tiny 6)")
    ap.add_argument("--batch", type=int, default=None, help="global batch in sequences (default 8; --tiny 8)")
    args = ap.parse_args(argv)
    import jax

    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    shape = "tiny" if args.tiny else "1b"
    steps, batch = args.steps or (6 if args.tiny else 60), args.batch or 8
    t0 = time.perf_counter()
    plan = compile_plan(Recipe.from_text(recipe_text(shape, batch * jax.device_count(), steps), name=f"accelerator-{shape}.yaml"))
    device = jax.local_devices()[0]
    print(f"{shape}: {plan.model.param_count:,} parameters, {jax.device_count()} × {device.device_kind} "
          f"({device.platform}), batch {plan.batch.global_batch} = micro {plan.batch.micro_batch} × accumulation "
          f"{plan.batch.accumulation} × data {plan.batch.data_parallel}, seq {plan.batch.seq_len}, precision "
          f"{plan.precision.param_dtype}/{plan.precision.compute_dtype}, attention {plan.model.attention}, "
          f"remat {plan.model.remat}, {steps} steps each")
    ours = capidsl_side(plan)
    plain = plain_side(plan, steps)
    print(f"MFU peak: {ours['peak_source']}")
    print(attention_check())
    print("\n".join(table(plan, ours, plain)))
    print(f"capidsl / plain tokens/s: {ours['tokens_per_s'] / plain['tokens_per_s']:.3f}; "
          f"measured / plan step time: {ours['step_s'] / plan.flops.step_time_s:.2f}; "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
