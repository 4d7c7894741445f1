"""Communication per optimizer step and device, analytically: what FSDP, data and tensor parallelism move.

Counted as the bytes each device sends (equal to what it receives) with ring algorithms, where a
collective over a group of n devices costs, for a per-device shard of s bytes:
  all-gather of n shards           (n−1)·s
  reduce-scatter to shards of s     (n−1)·s
  all-reduce of s                   2·(n−1)/n·s   (a reduce-scatter followed by an all-gather)

Per parameter p, with s_p its bytes per device (parameter dtype, after sharding), F_p the product
of the batch axes (data, fsdp) its dimensions are split over and R_p that of the batch axes it is
replicated over, and A micro-batches per step (ZeRO-3 accounting, Rajbhandari et al. 2020):
  FSDP all-gather        A · 2·(F_p−1)·s_p     gathered for the forward and again for the backward
  FSDP reduce-scatter    A · (F_p−1)·s_p       its gradient summed over F_p and left sharded
  data all-reduce        A · 2·(R_p−1)/R_p·s_p  its gradient summed over the replicas
Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, §3) all-reduces activations over the T
devices of the tensor axis: a weight [d_in, d_out] split on d_in (row-parallel: attention's output
projection, the MLP's down projection, a vocabulary-split embedding) leaves partial sums of its
output, all-reduced in the forward pass; weights split on d_out (column-parallel: q/k/v, up/gate,
an untied output head) all-reduce their input's gradient in the backward pass, once per module
(weights of one module share their input). Each such all-reduce moves 2·(T−1)/T · m·t·d·c bytes
for micro-batch m, sequence t, width d and compute dtype c; a GPT block has 4 (2 forward, 2
backward), as in Megatron-LM.

These are estimates of what the plan asks for, not of what XLA emits: XLA may hoist parameter
gathers out of the accumulation loop (dividing that term by A) or combine and split collectives;
a tied output embedding's backward all-reduce and the loss's reductions over a split vocabulary
(a few bytes per token) are not counted. Which axes cross hosts says which terms use the network.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from capidsl.plan.mesh import axes_across_hosts
from capidsl.plan.plan import BatchPlan, CommsEstimate, MeshPlan, ShardingPlan, Topology

BATCH_AXES = ("data", "fsdp")
TENSOR = "tensor"


def _ways(mesh: MeshPlan, axes) -> int:
    return math.prod(mesh.size(a) for a in axes)


def _module(path: str) -> str:
    """The module a weight belongs to, whose weights share one input: blocks.attn for blocks.attn.q.kernel;
    hidden.0 for hidden.0.kernel (the numbered layers of a list are modules of their own)."""
    parts = path.split(".")
    return ".".join(parts[:-1] if len(parts) > 1 and parts[-2].isdigit() else parts[:-2])


def _tensor_all_reduces(p, mesh: MeshPlan, rows: int, seq_len: int, compute_bytes: int):
    """(activation bytes all-reduced in the forward, (module, bytes) all-reduced in the backward) for one
    2-D weight of one layer, before the 2·(T−1)/T ring factor."""
    dims = list(zip(p.shape, p.spec, p.logical_axes))
    if dims and p.logical_axes[0] == "layers":
        dims = dims[1:]
    if len(dims) != 2:
        return 0, None
    (d_in, in_axes, _), (d_out, out_axes, _) = dims
    act = rows * seq_len * compute_bytes
    if TENSOR in in_axes:  # row-parallel: partial sums of the output
        return act * d_out, None
    if TENSOR in out_axes:  # column-parallel: partial sums of the input's gradient, once per module
        return 0, (_module(p.path), act * d_in)
    return 0, None


def estimate(sharding: ShardingPlan, mesh: MeshPlan, batch: BatchPlan, topology: Topology,
             compute_dtype: str) -> CommsEstimate:
    """Bytes per device per optimizer step by collective, for the plan's sharding, mesh and batching."""
    a = batch.accumulation
    gather = scatter = reduce = 0.0
    for p in sharding.params:
        s = p.bytes_per_device
        split = {ax for axes in p.spec for ax in axes}
        f = _ways(mesh, [ax for ax in BATCH_AXES if ax in split])
        r = _ways(mesh, [ax for ax in BATCH_AXES if ax not in split])
        gather += a * 2 * (f - 1) * s
        scatter += a * (f - 1) * s
        reduce += a * 2 * (r - 1) / r * s

    t = mesh.size(TENSOR)
    compute_bytes = 2 if compute_dtype in ("bfloat16", "float16") else np.dtype(compute_dtype).itemsize
    ring = 2 * (t - 1) / t
    per_layer = rest = 0.0
    layers = 0
    modules: OrderedDict[tuple[bool, str], float] = OrderedDict()
    for p in sharding.params:
        if p.logical_axes and p.logical_axes[0] == "layers":
            layers = max(layers, p.shape[0])
    if t > 1:
        for p in sharding.params:
            stacked = bool(p.logical_axes) and p.logical_axes[0] == "layers"
            forward, backward = _tensor_all_reduces(p, mesh, batch.micro_batch, batch.seq_len, compute_bytes)
            if stacked:
                per_layer += forward
            else:
                rest += forward
            if backward is not None:
                modules.setdefault((stacked, backward[0]), backward[1])
        for (stacked, _), nbytes in modules.items():
            if stacked:
                per_layer += nbytes
            else:
                rest += nbytes
        per_layer, rest = a * ring * per_layer, a * ring * rest
    total_tensor = per_layer * layers + rest
    formula = ("per device per step, ring collectives: FSDP all-gather A·2(F−1)s, reduce-scatter A·(F−1)s, "
               "data all-reduce A·2(R−1)/R·s per parameter shard s; tensor all-reduce A·2(T−1)/T·m·t·d·c per "
               "row-parallel output and column-parallel module input (Megatron-LM)")
    return CommsEstimate(fsdp_all_gather=int(round(gather)), fsdp_reduce_scatter=int(round(scatter)),
                         data_all_reduce=int(round(reduce)), tensor_all_reduce=int(round(total_tensor)),
                         tensor_per_layer=int(round(per_layer)), layers=layers,
                         across_hosts=axes_across_hosts(mesh, topology), formula=formula)
