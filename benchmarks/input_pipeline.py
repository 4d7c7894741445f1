"""The input pipeline against the model that consumes it, on recipes/base.yaml.

Two figures, measured side by side in one process:
1. the share of the training loop's step time spent waiting for data (`data_wait_s / step_time_s`
   from metrics.jsonl of a real `capidsl run` of STEPS steps, first log window — compilation —
   left out); goal < 1%;
2. the grain pipeline alone: batches per second when nothing else runs (the same loader the run
   uses, drained for the same number of batches), against the batches per second the model takes.

The last line is the headline: the data-wait share in percent.
Run: .venv/bin/python benchmarks/input_pipeline.py [recipe.yaml] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from capidsl import rundir

REPO = Path(__file__).resolve().parents[1]
QUIET = ["eval.every=null", "checkpoint.every=null", "stop.when=null", "stop.restore_best=false",
         "logging.progress=none", "logging.tensorboard=false"]


def pipeline_batches_per_s(plan, batches: int, repeats: int = 3) -> float:
    from capidsl.data import train_loader

    rates = []
    for _ in range(repeats):
        it = train_loader(plan.data, global_batch=plan.batch.global_batch)
        next(it)  # start-up (threads, first read) is not throughput
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        rates.append(batches / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "base.yaml"))
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()

    from capidsl.exec.loop import run
    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    plan = compile_plan(Recipe.from_yaml(args.recipe, overrides=QUIET + ["logging.every=every 10 steps"]))
    with tempfile.TemporaryDirectory() as tmp:
        run(plan, Path(tmp) / "run", max_steps=args.steps)
        rows = rundir.read_metrics(Path(tmp) / "run")
    rows = [r for r in rows if "data_wait_s" in r][1:]  # the first window holds the compilation
    wait = sum(r["data_wait_s"] for r in rows)
    step = sum(r["step_time_s"] for r in rows)
    model_rate = len(rows) / step
    pipe_rate = pipeline_batches_per_s(plan, args.steps)
    b = plan.batch
    print(f"{Path(args.recipe).name}: batch {b.global_batch}×{b.seq_len}, {plan.data.source} source, "
          f"{plan.data.workers} worker thread(s), prefetch {plan.data.prefetch}, {args.steps} steps")
    print(f"{'':<32}{'s/batch':>10}{'batches/s':>12}")
    print(f"{'training loop (per step)':<32}{step / len(rows):>10.4f}{model_rate:>12.2f}")
    print(f"{'  of which waiting for data':<32}{wait / len(rows):>10.5f}")
    print(f"{'grain pipeline alone':<32}{1 / pipe_rate:>10.5f}{pipe_rate:>12.1f}")
    print(f"pipeline capacity / model demand: {pipe_rate / model_rate:.1f}x")
    print(f"data-wait share of step time: {100 * wait / step:.3f}%")


if __name__ == "__main__":
    main()
