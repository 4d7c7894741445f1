"""MFU: the model FLOPs a run achieves per device, over the device's peak.

The achieved rate is PaLM's (Chowdhery et al. 2022, appendix B): the plan's model FLOPs per token
times the log window's `tokens_per_s`, over the devices of the mesh. For fixed batches that is
exactly `plan.flops.flops_per_step / step_time_s / devices`; under bucketed batching it counts the
real tokens, as `tokens_per_s` does. The peak is the data-sheet row (capidsl/plan/topology.py) of
the device kind JAX reports at run time, for the plan's compute dtype. A CPU or an unknown device
has no data sheet: its peak is a **measured roofline**, the best of a few jitted square matmuls in
the compute dtype, taken once at run start (about 0.2 s on a 2-core CPU), not a vendor figure.
Fake CPU devices share the host's cores, so each gets an equal share of the measured rate.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from capidsl.plan.plan import Plan
from capidsl.plan.topology import DEVICE_KINDS, match_device_kind

CPU_MATMUL = 1024  # the measured roofline's matrix size on a CPU: ~20 ms per product on 2 cores
ACCELERATOR_MATMUL = 8192  # on an unknown accelerator: big enough to keep its matrix units busy
REPS = 5


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s for the compute dtype, and where the figure came from."""

    flops_per_s: float
    source: str  # "data sheet: h100" | "measured: 1024² float32 matmul, shared by 8 CPU devices"


def _bf16_column(compute_dtype: str) -> bool:
    return compute_dtype in ("bfloat16", "float16")


def table_peak(device_kind: str, compute_dtype: str) -> Peak | None:
    """The data-sheet peak of a jax `device_kind` string ("NVIDIA H100 80GB HBM3"), or None when
    the table has no row for it (a CPU, an unknown accelerator)."""
    name = match_device_kind(device_kind)
    if name is None:
        return None
    row = DEVICE_KINDS[name]
    return Peak(row.bf16 if _bf16_column(compute_dtype) else row.f32, f"data sheet: {name}")


@functools.lru_cache(maxsize=None)
def measured_peak(compute_dtype: str, size: int = CPU_MATMUL, share: int = 1, reps: int = REPS) -> Peak:
    """2·size³ FLOPs over the fastest of `reps` jitted size × size matmuls on the first local
    device, divided by `share` (devices using the same cores). Measured once per process and setting."""
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((size, size), compute_dtype), device)
    b = jax.device_put(jnp.full((size, size), 0.5, compute_dtype), device)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()  # compile
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    where = f", shared by {share} CPU devices" if share > 1 else ""
    return Peak(2.0 * size**3 / max(best, 1e-9) / share, f"measured: {size}² {compute_dtype} matmul{where}")


def run_peak(compute_dtype: str) -> Peak:
    """The peak per device for this process's devices: the data sheet when the table knows the
    kind, else the measured roofline."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        known = table_peak(device.device_kind, compute_dtype)
        if known is not None:
            return known
        return measured_peak(compute_dtype, ACCELERATOR_MATMUL)
    return measured_peak(compute_dtype, CPU_MATMUL, share=len(jax.local_devices()))


@dataclass(frozen=True)
class Throughput:
    """Turns a log line's tokens/s into `tflops_per_device` and `mfu`; built once per run."""

    flops_per_token: float
    flops_per_step: float
    devices: int
    device_kind: str
    peak: Peak

    @classmethod
    def for_run(cls, plan: Plan, devices: int) -> Throughput:
        return cls(plan.flops.flops_per_token, plan.flops.flops_per_step, devices,
                   jax.local_devices()[0].device_kind, run_peak(plan.precision.compute_dtype))

    def fields(self, row: dict[str, Any]) -> dict[str, float]:
        """`tflops_per_device` and `mfu` for a training row (from its `tokens_per_s`)."""
        per_device = self.flops_per_token * float(row["tokens_per_s"]) / self.devices
        return {"tflops_per_device": per_device / 1e12, "mfu": per_device / self.peak.flops_per_s}

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """summary.json's `performance`: the peak and its source, and the median log window of this
        invocation (the first left out when there are more, for it holds the compilation)."""
        out = {"device_kind": self.device_kind, "devices": self.devices, "flops_per_step": self.flops_per_step,
               "peak_tflops_per_device": self.peak.flops_per_s / 1e12, "peak_source": self.peak.source,
               "step": None, "step_time_s": None, "tflops_per_device": None, "mfu": None}
        steady = rows[1:] or rows
        if steady:
            median = statistics.median_low(r["tflops_per_device"] for r in steady)
            row = next(r for r in steady if r["tflops_per_device"] == median)
            out.update({k: row[k] for k in ("step", "step_time_s", "tflops_per_device", "mfu")})
        return out
