"""benchmarks/accelerator.py --tiny: the one-command GPU proof runs on a CPU and prints its one table (its
columns, rows and ratio line are checked, never a speed)."""

from __future__ import annotations

import re
import sys

import pytest

import runs

HEADER = ("| system | tokens/s | MFU | step s (measured) | step s (plan at 40% MFU) | peak device memory (measured) "
          "| peak device memory (plan) |")


@pytest.mark.slow
def test_the_tiny_accelerator_table():
    done = runs.run([sys.executable, str(runs.ROOT / "benchmarks" / "accelerator.py"), "--tiny", "--steps", "4"],
                    runs.env(devices=1), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tiny: ") and "attention xla" in lines[0]
    assert lines[1].startswith("MFU peak: measured: 1024² bfloat16 matmul")  # a CPU has no data sheet
    assert lines[2] == "cuDNN attention vs XLA: not run (no GPU here)"  # the GPU check, where a GPU runs it
    at = lines.index(HEADER)
    rows = [line.split(" | ") for line in lines[at + 2:at + 4]]
    assert [r[0] for r in rows] == ["| capidsl run", "| plain flax.nnx loop"]
    for r in rows:
        assert re.fullmatch(r"[\d,]+", r[1]) and r[2].endswith("%") and float(r[3]) > 0 and float(r[4]) > 0
        assert r[5] == "n/a (not reported)" and r[6].endswith("GiB |")  # CPUs report no device memory
    assert re.match(r"capidsl / plain tokens/s: \d+\.\d{3}; measured / plan step time: \d+\.\d\d; in \d+ s", lines[at + 4])
