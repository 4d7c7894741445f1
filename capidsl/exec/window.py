"""What the loop keeps between two log lines, and what it writes at one: the window and its row.

A log line's `loss` is the mean of the per-step losses since the previous log line, summed on the
device without a host sync (so a non-finite step anywhere in the window makes it non-finite). The
window's sums are part of the checkpoint, so a resumed run logs exactly as the uninterrupted one.
Records (log and eval lines) are the stop rule's history; they go into checkpoints as JSON.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from capidsl.exec.metrics import device_peak_bytes, host_peak_rss_bytes, json_number
from capidsl.lang.ast import Record
from capidsl.plan.plan import Plan


def encode_record(r: Record) -> dict[str, Any]:
    return {"step": r.step, "time_s": r.time_s, "kind": r.kind, "metrics": {k: json_number(v) for k, v in r.metrics.items()}}


def decode_record(d: dict[str, Any]) -> Record:
    return Record(step=int(d["step"]), time_s=float(d["time_s"]), kind=d["kind"],
                  metrics={k: float(v) for k, v in d["metrics"].items()})


# Step metrics summed over a log window (tokens of variable-size batches: the padding fraction;
# supervised examples: the targets counted in the loss).
WINDOW_SUMS = ("real_tokens", "padded_tokens", "loss_tokens")


class Window:
    """Per-step losses (and WINDOW_SUMS) summed on the device since the last log line, plus timings."""

    def __init__(self, loss_sum: float = 0.0, count: int = 0, sums: dict[str, float] | None = None):
        self.loss_sum = jnp.asarray(loss_sum, jnp.float32)
        self.count = count
        self.sums = {k: jnp.asarray(v, jnp.float32) for k, v in (sums or {}).items()}
        self.wait_s = 0.0
        self.started = time.perf_counter()

    def add(self, loss: jax.Array, wait_s: float, metrics: dict[str, jax.Array] | None = None) -> None:
        self.loss_sum = self.loss_sum + loss  # dispatched, not waited for
        self.count += 1
        self.wait_s += wait_s
        for k in WINDOW_SUMS:
            if metrics is not None and k in metrics:
                self.sums[k] = self.sums.get(k, jnp.zeros((), jnp.float32)) + metrics[k]

    def mean_loss(self) -> float:
        return float(self.loss_sum) / max(1, self.count)

    def to_json(self) -> dict[str, Any]:
        """The exact float32 sum (repr of a float32 value is exact in JSON) and its count."""
        return {"loss_sum": json_number(float(self.loss_sum)), "count": self.count,
                "sums": {k: json_number(float(v)) for k, v in self.sums.items()}}


def train_row(plan: Plan, step: int, window: Window, metrics: dict[str, jax.Array]) -> dict[str, Any]:
    """One line of metrics.jsonl for a log step (this fetches the step's metrics from the device)."""
    loss = window.mean_loss()  # waits for the step: the timings below cover the computation, not its dispatch
    elapsed = time.perf_counter() - window.started
    row = {
        "step": step, "epoch": step / max(1, plan.cadence.steps_per_epoch), "loss": loss,
        "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
        "tokens_per_s": float(window.sums["real_tokens"]) / max(elapsed, 1e-9) if "real_tokens" in window.sums
        else window.count * plan.batch.tokens_per_step / max(elapsed, 1e-9),  # padded rows: the real tokens
        "step_time_s": elapsed / window.count, "data_wait_s": window.wait_s / window.count,
        "device_peak_bytes": device_peak_bytes(), "host_peak_rss_bytes": host_peak_rss_bytes(),
    }
    if "loss_scale" in metrics:
        row["loss_scale"] = float(metrics["loss_scale"])
    if "sparsity" in metrics:  # pruning: the share of pruned weights that are zero after this step
        row["sparsity"] = float(metrics["sparsity"])
    if "padded_tokens" in window.sums:  # variable-size batches: padding over the window's positions
        padded, real = float(window.sums["padded_tokens"]), float(window.sums["real_tokens"])
        row["padding_fraction"] = padded / max(padded + real, 1.0)
    if "loss_tokens" in window.sums:  # supervised examples: completion targets per step (the loss's divisor)
        row["loss_tokens"] = float(window.sums["loss_tokens"]) / window.count
    return row
