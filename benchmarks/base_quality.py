"""What `make run` reached: the base recipe's validation loss against the unigram baseline.

The unigram baseline is the cross-entropy (nats per byte) of the validation split under the
training split's byte frequencies (add-one smoothed): the loss of a model that knows which bytes
are common but nothing of their order. A language model that learned anything beats it clearly.
Reads RUN_DIR/summary.json (the run `make run` leaves in runs/base) and RUN_DIR/plan.json for
the data; the last line is val_loss / unigram baseline (lower is better).
Run: .venv/bin/python benchmarks/base_quality.py [RUN_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from capidsl import rundir

REPO = Path(__file__).resolve().parents[1]


def unigram_cross_entropy(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    counts = np.bincount(np.asarray(train, np.int64), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val, np.int64)].mean())


def main() -> None:
    from capidsl.data.sources import lm_streams, source_key
    from capidsl.plan.plan import Plan

    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "runs" / "base"
    summary = rundir.read_summary(run_dir)
    plan = Plan.loads(rundir.read_plan_text(run_dir))
    train, val = lm_streams(source_key(plan.data))
    baseline = unigram_cross_entropy(train, val, plan.data.vocab_size)
    evals = summary["final"]["eval"]
    best = summary.get("best") or {}
    print(f"{run_dir}: {summary['steps']} steps, {summary['stop_reason']}, train time {summary['train_time_s']:.0f} s, "
          f"wall time {summary['wall_time_s']:.0f} s")
    print(f"validation split: {len(val):,} bytes; training split {len(train):,} bytes")
    print(f"unigram baseline (val under train byte frequencies): {baseline:.4f} nats/byte")
    print(f"final val_loss {evals.get('val_loss', float('nan')):.4f} at step {evals.get('step')}; "
          f"best {best.get('value', float('nan')):.4f} at step {best.get('step')}")
    print(f"best val_loss / unigram baseline: {best.get('value', float('nan')) / baseline:.3f}")


if __name__ == "__main__":
    main()
