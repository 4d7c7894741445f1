"""Model FLOPs per token and per step, and the step time they imply at a stated MFU.

Per token: the family's forward+backward count (6N plus the attention term 12·L·T·d, PaLM's
convention; see capidsl/models). Step time = FLOPs per step / (devices × peak × MFU), with the
peak for the compute dtype.
"""

from __future__ import annotations

from capidsl.plan.plan import FlopsEstimate, Topology

ASSUMED_MFU = 0.4


def estimate(family, cfg: dict, tokens_per_step: int, topology: Topology, compute_dtype: str) -> FlopsEstimate:
    per_token = float(family.flops_per_token(cfg))
    per_step = per_token * tokens_per_step
    peak = topology.peak_flops_bf16 if compute_dtype in ("bfloat16", "float16") else topology.peak_flops_f32
    step_time = per_step / (topology.device_count * peak * ASSUMED_MFU)
    return FlopsEstimate(flops_per_token=per_token, flops_per_step=per_step, assumed_mfu=ASSUMED_MFU,
                         step_time_s=step_time, formula="6N + 12·L·T·d per token (PaLM appendix B)")
