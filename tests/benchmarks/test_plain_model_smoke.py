"""benchmarks/plain_model.py runs end to end on a tiny shape and prints its table and its three ratio lines
(the columns are checked, never a speed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.source=synthetic", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=16",
        "training.batch_size=4"]


@pytest.mark.slow
def test_the_plain_model_table():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # one device, and XLA's backend unoptimised: the three compiles are most of the time
    env |= {"XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
            "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_model.py"), "--steps", "20", "--repeats", "1"]
    for override in TINY:
        cmd += ["--set", override]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    title = next(line for line in lines if line.startswith("base.yaml: "))
    assert "21,472 parameters (d_model 32, 1 layers, 2/2 heads, learned, layernorm, gelu, tied), batch 4×16" in title
    at = lines.index(f"{'system':<14}{'median s/step':>15}{'tokens/s':>12}   all runs (s/step)")
    rows = [line.split() for line in lines[at + 1:at + 4]]
    assert [" ".join(r[:-3]) for r in rows] == ["capidsl", "plain model", "hand-written"]
    for r in rows:
        assert float(r[-3]) > 0 and re.fullmatch(r"[\d,]+", r[-2]) and float(r[-1]) == float(r[-3])
    ratios = [line for line in lines if line.startswith("throughput ratio ")]
    assert [r.split(":")[0] for r in ratios] == [
        "throughput ratio capidsl / plain model (loop and module)", "throughput ratio capidsl / hand-written (loop only)",
        "throughput ratio hand-written / plain model (module only)"]
    assert all(re.search(r": \d+\.\d{3}   \(rounds: \d+\.\d{3}\)$", r) for r in ratios)
