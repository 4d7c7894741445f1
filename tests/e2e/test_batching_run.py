"""recipes/batching.yaml through `capidsl run` on skewed JSONL documents: the logged padding fraction is far
below padding to seq_len, and XLA compiles the train step only for shapes the plan lists (JAX_LOG_COMPILES)."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

import runs

RECIPE = runs.ROOT / "recipes" / "batching.yaml"


def skewed_jsonl(path, n=600, seed=0):
    """Mostly short documents and a long tail (the same shape as tests/data/test_buckets.py's)."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.8, rng.integers(2, 14, n), rng.integers(30, 200, n))
    with open(path, "w") as f:
        for i, k in enumerate(lengths):
            f.write(json.dumps({"text": "".join(chr(97 + (i + j) % 26) for j in range(int(k)))}) + "\n")


@pytest.mark.slow
def test_bucketed_run_pads_little_and_compiles_only_the_planned_shapes(tmp_path):
    docs = tmp_path / "docs.jsonl"
    skewed_jsonl(docs)
    sets = {"data.source": "jsonl", "data.path": str(docs), "data.validation_fraction": "0.1", "model.seq_len": "64",
            "model.d_model": "32", "data.buckets": "[8, 16, 32, 64]", "data.token_budget": "256",
            "training.duration": "1 epoch", "schedule": "constant(3e-3)", "eval.every": "every 40 steps",
            "eval.batches": "null", "checkpoint.every": "null", "logging.every": "every 10 steps",
            "logging.progress": "plain", "logging.tensorboard": "false"}
    argv = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    environ = runs.env(devices=1) | {"JAX_LOG_COMPILES": "1"}
    done = runs.run([sys.executable, "-m", "capidsl", "run", str(RECIPE), "--run-dir", str(tmp_path / "run"), *argv],
                    environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    planned = {(b["rows"], b["length"]) for b in plan["data"]["buckets"]}
    assert planned == {(32, 8), (16, 16), (8, 32), (4, 64)}
    steps = sum(b["batches_per_epoch"] for b in plan["data"]["buckets"])
    assert plan["cadence"]["total_steps"] == steps

    def compiled(name):
        """[rows, length] of the int32 arguments (inputs, targets) of every compilation of jit(name)."""
        lines = [x for x in done.stderr.splitlines() if f"Compiling jit({name}) with" in x]
        shapes = [set(re.findall(r"int32\[(\d+),(\d+)\]", x)) for x in lines]
        assert all(len(s) == 1 for s in shapes)  # one [rows, length] per compiled program
        return [tuple(map(int, next(iter(s)))) for s in shapes]

    train_shapes = compiled("step")
    assert sorted(train_shapes) == sorted(planned)  # each bucket once, nothing else, over a whole epoch
    assert set(compiled("eval_step")) <= planned

    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "padding_fraction" in r]
    assert len(train) == steps // 10
    real = sum(b["real_tokens"] for b in plan["data"]["buckets"])
    naive = 1 - real / (sum(b["train_examples"] for b in plan["data"]["buckets"]) * 64)
    logged = float(np.mean([r["padding_fraction"] for r in train]))
    assert logged < naive / 3, (logged, naive)
    assert train[-1]["loss"] < train[0]["loss"] and any("val_loss" in r for r in rows)
