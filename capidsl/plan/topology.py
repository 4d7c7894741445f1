"""Device kinds and the topology a plan is made for: the live machine, or a simulated cluster.

Peak figures are dense (no sparsity) per device, from the vendors' data sheets: NVIDIA A100
(312 TFLOP/s bf16, 19.5 f32), H100 SXM and H200 (989 bf16, 67 f32), L4 (121 bf16, 30.3 f32, 24 GB;
the data sheet's 242 is with sparsity); Google Cloud TPU system architecture pages: v4 275 bf16,
v5e 197, v5p 459, v6e 918 TFLOP/s with 32 GiB HBM (Cloud TPU v6e page). TPU f32 matmuls run as
several bf16 passes; we state a quarter of bf16 as a nominal f32 figure. The cpu row is nominal,
for plans made on a laptop; it is not a measurement. `match_device_kind` maps what JAX reports as
`device_kind` ("NVIDIA H100 80GB HBM3", "TPU v5 lite", ...) to a row; the executor's MFU uses it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from capidsl.plan.errors import PlanError
from capidsl.plan.plan import Topology

GiB = 2**30


@dataclass(frozen=True)
class DeviceKind:
    name: str
    memory: int  # bytes per device
    bf16: float  # peak FLOP/s
    f32: float
    per_host: int  # devices in one host (one process)


DEVICE_KINDS: dict[str, DeviceKind] = {k.name: k for k in (
    DeviceKind("cpu", 16 * GiB, 1e12, 1e12, 1),
    DeviceKind("a100-40g", 40 * GiB, 312e12, 19.5e12, 8),
    DeviceKind("a100-80g", 80 * GiB, 312e12, 19.5e12, 8),
    DeviceKind("h100", 80 * GiB, 989e12, 67e12, 8),
    DeviceKind("h200", 141 * 10**9, 989e12, 67e12, 8),
    DeviceKind("l4", 24 * 10**9, 121e12, 30.3e12, 8),
    DeviceKind("tpu-v4", 32 * GiB, 275e12, 275e12 / 4, 4),
    DeviceKind("tpu-v5e", 16 * GiB, 197e12, 197e12 / 4, 4),
    DeviceKind("tpu-v5p", 95 * GiB, 459e12, 459e12 / 4, 4),
    DeviceKind("tpu-v6e", 32 * GiB, 918e12, 918e12 / 4, 4),
)}

# (pattern in the lower-cased jax `device_kind`, row), first match wins. JAX names TPU v5e
# "TPU v5 lite", v5p "TPU v5" and v6e "TPU v6 lite"; "NVIDIA L4" must not match an L40 or L40S.
_DEVICE_PATTERNS = tuple((re.compile(p), kind) for p, kind in (
    (r"h200", "h200"), (r"h100", "h100"), (r"a100", "a100-80g"), (r"\bl4\b", "l4"),
    (r"\bv6 lite\b|\bv6e\b", "tpu-v6e"), (r"\bv5p\b|^tpu v5$", "tpu-v5p"), (r"\bv5 lite\b|\bv5e\b", "tpu-v5e"),
    (r"\bv4\b", "tpu-v4"),
))

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """'80GiB', '40GB', '17179869184' → bytes."""
    s = str(text).strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise PlanError(f"cannot read {text!r} as a memory size", subject="--device-memory", hint="e.g. 80GiB or 40GB") from None
    if unit not in _UNITS or value <= 0:
        raise PlanError(f"cannot read {text!r} as a memory size", subject="--device-memory", hint="e.g. 80GiB or 40GB")
    return int(value * _UNITS[unit])


def simulated(kind: str, devices: int, *, memory: int | None = None, processes: int | None = None) -> Topology:
    """A cluster of `devices` devices of `kind`, one process per host unless `processes` says otherwise."""
    if kind not in DEVICE_KINDS:
        import difflib

        near = difflib.get_close_matches(kind, DEVICE_KINDS, n=1)
        raise PlanError(f"unknown device kind {kind!r}", subject="--device-kind",
                        hint=(f"did you mean {near[0]!r}? " if near else "") + "known: " + ", ".join(DEVICE_KINDS))
    if devices < 1:
        raise PlanError(f"a topology needs at least one device, not {devices}", subject="--devices")
    k = DEVICE_KINDS[kind]
    procs = processes or max(1, math.ceil(devices / k.per_host))
    if devices % procs:
        raise PlanError(f"{devices} devices do not split evenly over {procs} processes", subject="--processes")
    return Topology(device_kind=kind, device_count=devices, process_count=procs, memory_per_device=memory or k.memory,
                    peak_flops_bf16=k.bf16, peak_flops_f32=k.f32, simulated=True)


def live(memory: int | None = None) -> Topology:
    """The devices this process sees (imports jax)."""
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    kind = "cpu" if platform == "cpu" else _kind_of(devices[0].device_kind, platform)
    if memory is None:
        local = jax.local_devices()[0]  # another process's devices report no memory statistics here
        stats = local.memory_stats() if hasattr(local, "memory_stats") else None
        if stats and stats.get("bytes_limit"):
            memory = int(stats["bytes_limit"])
        elif platform == "cpu":  # fake CPU devices share the host's memory
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // len(devices)
    k = DEVICE_KINDS.get(kind, DEVICE_KINDS["cpu"])
    return Topology(device_kind=kind, device_count=len(devices), process_count=jax.process_count(),
                    memory_per_device=memory or k.memory, peak_flops_bf16=k.bf16, peak_flops_f32=k.f32, simulated=False)


def match_device_kind(device_kind: str) -> str | None:
    """The DEVICE_KINDS row of a jax `device_kind` string ("NVIDIA L4" → "l4"); None when none fits
    (CPUs, unknown accelerators)."""
    s = " ".join(device_kind.lower().split())
    return next((kind for pattern, kind in _DEVICE_PATTERNS if pattern.search(s)), None)


def _kind_of(device_kind: str, platform: str) -> str:
    """The DEVICE_KINDS row, or "unknown-<platform>" for an accelerator the table lacks: never "cpu", so
    the plan's per-kind choices (kernels.py) do not take a CPU's path on it; its peaks are the CPU row's."""
    return match_device_kind(device_kind) or f"unknown-{platform}"
