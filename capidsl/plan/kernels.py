"""How the plan has the model run on its device kind: the attention kernel (cuDNN's fused attention
where it runs, XLA's formulation elsewhere), the layer loop (unrolled or scanned) and XLA flags.

The choice is a pure function of the topology's device kind and the model (no JAX import), so a plan
for an H100 cluster made on a laptop chooses what the cluster will run. cuDNN's flash attention
(`jax.nn.dot_product_attention(..., implementation="cudnn")`) never holds the T×T score matrix: it
keeps q, k, v, the output and one float32 logsumexp per row and query head for the backward pass.
Its limits, as jax 0.10 enforces them at trace time (`jax/_src/cudnn/fused_attention_stablehlo.py`:
`check_layout`, `check_is_flash_attention`): float16 or bfloat16 inputs, a head dimension that is a
multiple of 8 and at most 128 (256 from Hopper, compute capability 9.0, on), no dropout (the function
takes none). Grouped-query attention is native (fewer k/v heads dividing the query heads).
"""

from __future__ import annotations

XLA, CUDNN = "xla", "cudnn"
# How the plan's activation trace stands in for a kernel it cannot trace on the planning machine:
# tracing "cudnn" without a GPU raises `RuntimeError: cuDNN is not detected`, so the trace uses
# "recompute" (capidsl/models/transformer.py), which keeps exactly what cuDNN's backward reads.
TRACED_AS = {XLA: XLA, CUDNN: "recompute"}

FUSED_FAMILIES = ("gpt",)  # families whose attention can run on the fused kernel
CUDNN_DTYPES = ("bfloat16", "float16")
# NVIDIA device kinds (capidsl/plan/topology.py) → the largest head dimension cuDNN flash attention takes
# there: 128 before Hopper (A100 is compute capability 8.0, L4 8.9), 256 on Hopper (H100, H200: 9.0).
CUDNN_HEAD_DIM = {"a100-40g": 128, "a100-80g": 128, "l4": 128, "h100": 256, "h200": 256}
HEAD_DIM_MULTIPLE = 8


def choose_attention(device_kind: str, compute_dtype: str, head_dim: int, dropout: float) -> str:
    """CUDNN when the fused kernel runs this attention on `device_kind`, else XLA."""
    largest = CUDNN_HEAD_DIM.get(device_kind)
    if largest is None or compute_dtype not in CUDNN_DTYPES or dropout > 0.0:
        return XLA
    if head_dim > largest or head_dim % HEAD_DIM_MULTIPLE:
        return XLA
    return CUDNN


def plan_attention(family: str, cfg: dict, device_kind: str, compute_dtype: str) -> str:
    """The kernel for a family's normalised options on `device_kind`: XLA for a family without a fused path."""
    if family not in FUSED_FAMILIES:
        return XLA
    return choose_attention(device_kind, compute_dtype, cfg["d_model"] // cfg["n_heads"], float(cfg["dropout"]))


SCANNED, UNROLLED = "scanned", "unrolled"
LAYER_LOOPS = (SCANNED, UNROLLED)
LOOP_FAMILIES = ("gpt",)  # families whose layer scan can be unrolled (the plan chooses for these only)
UNROLL_LAYERS = 16  # "auto" unrolls models this deep or shallower
UNROLL_KINDS = ("cpu",)  # device kinds where "auto" unrolls: measured faster there


class LoopError(ValueError):
    """training.layer_loop asks for something this model cannot run (the compiler places it)."""


def choose_layer_loop(family: str, n_layers: int, remat: str, requested: str = "auto", device_kind: str = "cpu") -> str:
    """How the stacked layers run: UNROLLED (`jax.lax.scan(..., unroll=True)`: the block traced once, the
    parameters still stacked, the program straight-line) or SCANNED (a loop).

    Measured (docs/performance.md, benchmarks/plain_model.py --profile, 2-core CPU): the loop costs
    zero-filled stacked buffers, per-layer slices written and read, copies and serialised kernels;
    unrolled, the base shape's step takes 0.88 of the looping one's time. Unrolling costs compile
    time, which grows with depth (1.8 s at 4 layers either way; 3.3 vs 1.8 s at 12; 5.8 vs 1.9 s at
    24), so "auto" unrolls up to UNROLL_LAYERS layers, and only on UNROLL_KINDS: on accelerators the
    speed-up is not measured, and the plan's memory estimate is validated against the looping program
    there (unrolled, XLA:CPU fuses elementwise residuals away on data meshes and schedules tensor-parallel
    steps less tightly: base reads 1.36 on data=8 and 0.83 on tensor=8 unrolled, 1.05 and 0.93 scanned;
    docs/plan.md). Under remat it keeps the loop: in a straight-line program XLA merges the backward's
    recomputation with the forward pass (the compiled temp memory of remat full and dots equals no
    remat's, measured on 8 fake CPU devices), so remat would save nothing; an explicit "unrolled" with
    remat is refused for that reason."""
    if requested not in ("auto",) + LAYER_LOOPS:
        raise LoopError(f"layer_loop must be auto, scanned or unrolled, not {requested!r}")
    if family not in LOOP_FAMILIES:
        if requested == UNROLLED:
            raise LoopError(f"the {family} family cannot unroll its layers (layer_loop applies to "
                            f"{', '.join(LOOP_FAMILIES)} only)")
        return SCANNED
    if requested == UNROLLED and remat != "none":
        raise LoopError(f"an unrolled layer loop cannot keep remat {remat}'s savings: XLA merges the recomputed "
                        "forward pass with the original in a straight-line program, so the memory is no remat's")
    if requested != "auto":
        return requested
    shallow = remat == "none" and n_layers <= UNROLL_LAYERS
    return UNROLLED if shallow and device_kind in UNROLL_KINDS else SCANNED


# XLA flags the executor sets for a device kind, known to matter for training there (each with its
# source). They must be in XLA_FLAGS before JAX starts its backend, so the executor sets them in the
# environment of the process it starts (capidsl/exec/xla_flags.py). None for CPUs (nothing to gain)
# nor, yet, for TPUs (libtpu reads LIBTPU_INIT_ARGS; no flag there is known to us to be a safe default).
GPU_FLAGS = (
    # overlaps collectives with compute: JAX's GPU performance tips; set in NVIDIA's JAX-Toolbox images
    "--xla_gpu_enable_latency_hiding_scheduler=true",
)
XLA_FLAGS = {kind: GPU_FLAGS for kind in CUDNN_HEAD_DIM}  # the NVIDIA kinds


def xla_flags(device_kind: str) -> tuple[str, ...]:
    """The XLA flags a plan for `device_kind` runs with; () for a kind without any."""
    return XLA_FLAGS.get(device_kind, ())


def describe(attention: str) -> str:
    """How `capidsl plan` names the kernel."""
    return "cudnn (fused)" if attention == CUDNN else attention
