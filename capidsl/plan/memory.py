"""Per-device memory, analytically: what the compiled train step holds as arguments and as temporaries.

Arguments (exact arithmetic on the sharded shapes): parameters, optimizer state (adamw/adam 2
moments, lion and sgd-with-momentum 1, adafactor the factored row and column second moments of
every ≥2-D weight), the step's batch rows and other state (pruning masks, a carried recurrent state).
A frozen parameter (`training.trainable`) counts as a parameter only: it has no moments and no gradient.

Temporaries (XLA's `temp_size_in_bytes`), a sum of terms, each something the step really holds:
  saved activations   every residual `jax.vjp` of the family's loss keeps for the backward pass, for
                      one device's micro-batch, divided by the mesh axes that split it
                      (capidsl/plan/activations.py; with the plan's fused attention kernel, what it
                      keeps: no T×T scores); the family's own per-layer formula
                      (Korthikanti et al. 2022 for transformers) only if the loss cannot be traced
  backward working    2 × the largest tensor one layer saves (the cotangent coming in and the one
                      going out of its backward), 3 × when the layers run as a looping scan (the
                      layer's slice of the stacked residual, read out of the stack: XLA's buffer
                      assignment shows it); under remat 3 × (the recomputed tensor as well),
                      or, with tensor > 1, all one layer saves without remat (Korthikanti et al.
                      2022 §5: full recomputation holds one layer's activations; the layer's
                      all-reduces keep XLA from fusing the recomputation into the backward)
  gradients           float32, one per parameter shard: the step differentiates float32 loss sums
  optimizer copy      the optimizer state once more: the step keeps the old state on a non-finite
                      step (`where(finite, new, old)` over donated buffers), so XLA copies the old
                      moments before writing the new ones in place (seen in the HLO: copy(opt_state))
  or accumulation     when accumulating, the larger of that copy and a second float32 gradient set
                      (the micro-batch's beside the running sum): the copy is needed only after the
                      micro-batch loop, so XLA places it there and the two never coexist
  FSDP gather         with fsdp > 1: the largest layer's weights all-gathered in the compute dtype
                      and their float32 gradient before the reduce-scatter
Measured against XLA's compiled figures in docs/plan.md ("How good the estimates are").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from capidsl.plan.activations import traced_model
from capidsl.plan.kernels import LOOP_FAMILIES, SCANNED
from capidsl.plan.plan import MemoryEstimate, MeshPlan, ShardingPlan, freeze_options
from capidsl.plan.shapes import ModelShapes
from capidsl.plan.sharding import BATCH_AXES


def optimizer_state_bytes(name: str, momentum: float, sharding: ShardingPlan, mesh: MeshPlan,
                          frozen: frozenset[str] = frozenset()) -> int:
    """The optimizer's moments per device; a frozen parameter has none."""
    total = 0
    for p in sharding.params:
        if p.path in frozen:
            continue
        if name in ("adamw", "adam"):
            total += 2 * p.bytes_per_device
        elif name == "lion" or (name == "sgd" and momentum):
            total += p.bytes_per_device
        elif name == "adafactor":
            if len(p.shape) >= 2:
                ways = math.prod(math.prod(mesh.size(a) for a in axes) for axes in p.spec)
                rows, cols = math.prod(p.shape[:-1]), math.prod(p.shape[:-2]) * p.shape[-1]
                total += -(-(rows + cols) * 4 // ways)
            else:
                total += p.bytes_per_device
    return total


def gradient_bytes(sharding: ShardingPlan, frozen: frozenset[str] = frozenset()) -> int:
    """float32 gradients of every trained parameter shard (the step casts and accumulates them in
    float32; it takes no gradient of a frozen parameter)."""
    return sum(p.bytes_per_device // np.dtype(p.dtype).itemsize * 4 for p in sharding.params if p.path not in frozen)


def gathered_layer_bytes(sharding: ShardingPlan, mesh: MeshPlan, compute_bytes: int,
                         frozen: frozenset[str] = frozenset()) -> int:
    """FSDP's transient: one layer's weights gathered over the batch axes (compute dtype) plus their
    float32 gradient before the reduce-scatter (none for a frozen weight); a layer is one slice of the
    stacked ("layers") parameters, or the largest unstacked parameter (an embedding) if that is bigger."""
    layer = largest = 0
    for p in sharding.params:
        ways = math.prod(mesh.size(a) for axes in p.spec for a in axes if a in BATCH_AXES)
        if ways == 1:
            continue
        elements = p.bytes_per_device // np.dtype(p.dtype).itemsize * ways
        held = elements * (compute_bytes + (0 if p.path in frozen else 4))
        if p.logical_axes and p.logical_axes[0] == "layers":
            layer += held // p.shape[0]
        else:
            largest = max(largest, held)
    return max(layer, largest)


def _formula_activations(family, cfg, micro_batch, compute_bytes, remat, tensor, lm) -> int:
    """The family's own per-layer formula: the fallback for a loss that cannot be traced abstractly."""
    logits = micro_batch * cfg["seq_len"] * cfg["vocab_size"] * 4 // tensor if lm else 0  # float32 logits
    per_layer = family.activation_bytes_per_layer(cfg, micro_batch, compute_bytes, remat)
    return -(-per_layer * family.num_layers(cfg) // tensor) + logits


def estimate(*, family, cfg: dict, sharding: ShardingPlan, mesh: MeshPlan, optimizer: str, momentum: float,
             micro_batch: int, rows_per_device: int, batch_shapes: dict, compute_dtype: str, remat: str,
             device_memory: int, state_bytes: int = 0, frozen: frozenset[str] = frozenset(),
             attention: str = "xla", layer_loop: str = "scanned") -> MemoryEstimate:
    """The estimate for one device holding `micro_batch` rows per micro-step and `rows_per_device` per step.

    `state_bytes`: training state besides parameters and optimizer moments (pruning masks, a carried
    recurrent state), per device. `frozen`: parameters that do not train (no gradient, no moments).
    `attention`: the plan's attention kernel (capidsl/plan/kernels.py); "cudnn" saves no T×T scores.
    `layer_loop`: how the stacked layers run (kernels.choose_layer_loop); a looping scan reads each layer's
    residuals out of their stack into a buffer of their own.
    FITS is judged on `total` = arguments + the temporaries' terms."""
    params = sum(p.bytes_per_device for p in sharding.params)
    opt = optimizer_state_bytes(optimizer, momentum, sharding, mesh, frozen)
    compute_bytes = np.dtype(compute_dtype).itemsize if compute_dtype != "bfloat16" else 2
    batch = 0
    for shape, dtype in batch_shapes.values():
        row = math.prod(shape[1:]) * np.dtype(dtype).itemsize
        batch += row * rows_per_device

    param_dtype = sharding.params[0].dtype if sharding.params else "float32"
    model, reason = traced_model(family, freeze_options(cfg), sharding, mesh, param_dtype, compute_dtype, remat, attention)
    if model is not None:
        saved = model.saved_bytes(micro_batch)
        whole_layer = model.recompute and mesh.size("tensor") > 1
        sliced = layer_loop == SCANNED and family.name in LOOP_FAMILIES
        times = 3 if model.recompute or sliced else 2
        working = model.layer_bytes(micro_batch) if whole_layer else times * model.largest_layer_tensor(micro_batch)
        work = "one recomputed layer" if whole_layer else f"{times}× the largest layer tensor"
        kernel = f", {attention} attention" if attention != "xla" else ""
        formula = (f"temp = saved residuals (jax.vjp of the {family.name} loss{kernel}, {micro_batch} rows/device, "
                   f"split as the mesh splits them) + {work} "
                   "+ f32 grads + " + ("max(optimizer copy, accumulation)" if rows_per_device > micro_batch else "optimizer copy")
                   + (" + FSDP gathered layer" if mesh.size("fsdp") > 1 else "") + "; see docs/plan.md")
    else:
        saved = _formula_activations(family, cfg, micro_batch, compute_bytes, remat, mesh.size("tensor"),
                                     "inputs" in batch_shapes)
        working = 0
        formula = (f"temp = {family.num_layers(cfg)} layers × the family's per-layer formula ({remat}) / tensor "
                   f"+ f32 logits + f32 grads + optimizer copy (the loss could not be traced: {reason})")
    grads = gradient_bytes(sharding, frozen)
    copy = ("optimizer copy or accumulation", max(opt, grads)) if rows_per_device > micro_batch else ("optimizer copy", opt)
    terms = (("saved activations", saved), ("backward working set", working), ("gradients f32", grads), copy,
             ("fsdp gather", gathered_layer_bytes(sharding, mesh, compute_bytes, frozen) if mesh.size("fsdp") > 1 else 0))
    temp = sum(v for _, v in terms)
    total = params + opt + batch + state_bytes + temp
    return MemoryEstimate(params=params, grads=grads, opt_state=opt, activations=saved + working, batch=batch,
                          total=total, device_memory=device_memory, fits=total <= device_memory,
                          activation_formula=formula, state=state_bytes, temp=temp,
                          breakdown=tuple((k, v) for k, v in terms if v))


@dataclass(frozen=True)
class Workload:
    """Everything the estimate needs besides the batch shape: fixed once the model is placed."""

    model: ModelShapes
    mesh: MeshPlan
    optimizer: str
    momentum: float
    device_memory: int
    state_bytes: int  # training state besides parameters and moments (pruning masks, a carried state)
    frozen: frozenset[str] = frozenset()  # parameters without gradients or moments (training.trainable)
    attention: str = "xla"  # the attention kernel (capidsl/plan/kernels.py)
    layer_loop: str = "scanned"  # how the stacked layers run (kernels.choose_layer_loop)

    def at(self, micro: int, accumulation: int, seq_len: int | None = None) -> MemoryEstimate:
        """The estimate for `micro` rows per device and micro-step, `accumulation` micro-steps, rows of `seq_len`."""
        m = self.model
        cfg = m.cfg if seq_len is None else {**m.cfg, "seq_len": seq_len}  # a bucket's rows are shorter than seq_len
        return estimate(family=m.family, cfg=cfg, sharding=m.sharding, mesh=self.mesh, optimizer=self.optimizer,
                        momentum=self.momentum, micro_batch=micro, rows_per_device=micro * accumulation,
                        batch_shapes=m.family.batch_shapes(cfg, 1), compute_dtype=m.precision.compute_dtype,
                        remat=m.remat, device_memory=self.device_memory, state_bytes=self.state_bytes,
                        frozen=self.frozen, attention=self.attention, layer_loop=self.layer_loop)
