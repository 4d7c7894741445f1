"""Per-device memory, analytically: parameters, gradients, optimizer state, activations, input batch.

Parameters, gradients and optimizer state are arithmetic on the sharded shapes (gradients in the
parameter dtype; adamw/adam keep 2 moments, lion and sgd-with-momentum 1, adafactor the factored
row and column second moments of every ≥2-D weight). Activations are a model: the family's
per-layer formula (Korthikanti et al. 2022 for transformers, see capidsl/models) for one
micro-batch, divided by the tensor-parallel size, times the layers, plus the float32 logits.
"""

from __future__ import annotations

import math

import numpy as np

from capidsl.plan.plan import MemoryEstimate, MeshPlan, ShardingPlan


def optimizer_state_bytes(name: str, momentum: float, sharding: ShardingPlan, mesh: MeshPlan) -> int:
    total = 0
    for p in sharding.params:
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


def estimate(*, family, cfg: dict, sharding: ShardingPlan, mesh: MeshPlan, optimizer: str, momentum: float,
             micro_batch: int, rows_per_device: int, batch_shapes: dict, compute_dtype: str, remat: str,
             device_memory: int, state_bytes: int = 0) -> MemoryEstimate:
    """The estimate for one device holding `micro_batch` rows per micro-step and `rows_per_device` per step.

    `state_bytes`: training state besides parameters and optimizer moments (pruning masks, a carried
    recurrent state), per device."""
    params = sum(p.bytes_per_device for p in sharding.params)
    opt = optimizer_state_bytes(optimizer, momentum, sharding, mesh)
    compute_bytes = np.dtype(compute_dtype).itemsize if compute_dtype != "bfloat16" else 2
    tensor = mesh.size("tensor")
    layers = family.num_layers(cfg)
    per_layer = family.activation_bytes_per_layer(cfg, micro_batch, compute_bytes, remat)
    logits = 0
    if "inputs" in batch_shapes:  # language model: float32 logits of one micro-batch
        logits = micro_batch * cfg["seq_len"] * cfg["vocab_size"] * 4 // tensor
    activations = -(-per_layer * layers // tensor) + logits
    batch = 0
    for shape, dtype in batch_shapes.values():
        row = math.prod(shape[1:]) * np.dtype(dtype).itemsize
        batch += row * rows_per_device
    total = 2 * params + opt + activations + batch + state_bytes
    formula = (f"activations = {layers} layers × per-layer({remat}) / tensor {tensor} + logits "
               f"(Korthikanti et al. 2022, generalised per saved tensor; see capidsl/models)")
    return MemoryEstimate(params=params, grads=params, opt_state=opt, activations=activations, batch=batch,
                          total=total, device_memory=device_memory, fits=total <= device_memory,
                          activation_formula=formula, state=state_bytes)
