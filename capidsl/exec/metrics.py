"""What a run leaves behind for people and tools: metrics.jsonl, TensorBoard events, plan.json.

`RUN_DIR/metrics.jsonl` holds one JSON object per log step (and one per eval), written as soon as
it is known, so that a killed run keeps its curve. A resumed run first drops the lines past the
step it resumes from: those steps are computed again and would otherwise appear twice. Only
process 0 writes (`jax.process_index() == 0`); the others get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

import jax

from capidsl import rundir

# Keys every training line of metrics.jsonl carries (eval lines carry step, epoch and val_*).
TRAIN_KEYS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "data_wait_s",
              "tflops_per_device", "mfu", "device_peak_bytes", "host_peak_rss_bytes")
# The keys among them that measure the machine (speed, memory) rather than the computation: they
# differ between two runs that compute the same thing.
MEASURED_KEYS = ("tokens_per_s", "step_time_s", "data_wait_s", "tflops_per_device", "mfu", "device_peak_bytes",
                 "host_peak_rss_bytes")


def host_peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def device_peak_bytes() -> int | None:
    """The largest `peak_bytes_in_use` over this process's devices, or None where not reported (CPU)."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def json_number(v: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats are written as the strings "nan", "inf", "-inf"."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return v


class MetricsWriter:
    """Appends to metrics.jsonl and TensorBoard; writes plan.json. A no-op on processes other than 0."""

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool, enabled: bool | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = self.run_dir / rundir.METRICS
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter  # lazy: only runs that log to TensorBoard pay for it

            self._tb = SummaryWriter(logdir=str(self.run_dir / rundir.TENSORBOARD), flush_secs=10)

    def write_plan(self, plan_json: str) -> None:
        if self.enabled:
            rundir.write_atomic(self.run_dir / rundir.PLAN, plan_json + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines for steps after `step` (left by a run that was killed past its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        os.replace(tmp, self.path)

    def log(self, row: dict[str, Any], *, kind: str = "train") -> None:
        """One line of metrics.jsonl, and one TensorBoard scalar per number (tagged train/… or eval/…)."""
        if not self.enabled:
            return
        if self._file is None:
            self._file = open(self.path, "a", buffering=1)  # line-buffered: every line reaches the disk
        self._file.write(json.dumps({k: json_number(v) for k, v in row.items()}, allow_nan=False) + "\n")
        if self._tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", float(v), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
