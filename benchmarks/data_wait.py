"""The share of step time spent waiting for data: the base recipe on a BPE token store.

recipes/base.yaml with a 4,096-token byte-level BPE instead of bytes (`model.vocab_size=4096`,
`data.source=jsonl`, `data.tokenizer=bpe.json`) on a generated English-like JSONL corpus
(benchmarks/data_prepare.py's generator; default 50 MB, or an existing corpus and tokenizer with
--corpus/--tokenizer), prepared first with `capidsl data prepare`. Two figures:
1. the executor's own record: `capidsl run --steps STEPS` (logged every 10 steps; evaluation,
   checkpoints and the stop rule off, as benchmarks/input_pipeline.py) writes `data_wait_s` — the
   time `next(loader)` took, per step — and `step_time_s` to metrics.jsonl; their ratio over the
   log windows after the first (compilation) is the share (goal < 1%);
2. the loader alone: `capidsl.data.train_loader(plan.data, global_batch=...)` (the executor's own
   loader over the memory-mapped store) drained for STEPS batches in this process with nothing else
   running, against the batches per second the model takes.
The last line is the headline: the data-wait share in percent.
Run: .venv/bin/python benchmarks/data_wait.py [--size-mb 50] [--steps 100] [--corpus F --tokenizer T] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_prepare import (
    CLI,
    ENV,
    RECIPE,
    capidsl_prepare,
    recipe_sets,
    train_bpe,
    write_corpus,
)
from input_pipeline import pipeline_batches_per_s

QUIET = ["eval.every=null", "checkpoint.every=null", "stop.when=null", "stop.restore_best=false",
         "logging.progress=none", "logging.tensorboard=false", "logging.every=every 10 steps"]


def loader_batches_per_s(sets: list[str], batches: int, repeats: int = 3) -> tuple[float, object]:
    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    overrides = [s for s in sets if s != "--set"] + QUIET
    plan = compile_plan(Recipe.from_yaml(RECIPE, overrides=overrides))
    return pipeline_batches_per_s(plan, batches, repeats), plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--corpus", help="an existing JSONL corpus (else one is generated)")
    ap.add_argument("--tokenizer", help="its BPE tokenizer file (else one is trained on the corpus)")
    ap.add_argument("--cache", help="the token-store cache to use (default: a fresh temporary one)")
    ap.add_argument("--quick", action="store_true", help="2 MB, 20 steps, a 512-token BPE")
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.steps, args.vocab = 2, 20, 512

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else tmp / "corpus.jsonl"
        if not args.corpus:
            write_corpus(corpus, int(args.size_mb * 1e6), seed=3)
        bpe = args.tokenizer or str(train_bpe(corpus, tmp / "bpe.json", args.vocab,
                                              sample_bytes=min(20 << 20, corpus.stat().st_size // 2)))
        size = corpus.stat().st_size
        cache = Path(args.cache) if args.cache else tmp / "cache"
        prep = capidsl_prepare(corpus, bpe, cache, args.vocab) if not args.cache else None
        sets = recipe_sets(corpus, bpe, cache, args.vocab)
        run_dir = tmp / "run"
        cmd = [CLI, "run", RECIPE, "--steps", str(args.steps), "--run-dir", str(run_dir), *sets]
        for q in QUIET:
            cmd += ["--set", q]
        proc = subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"capidsl run failed:\n{proc.stdout}\n{proc.stderr}")
        rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if "data_wait_s" in r][1:]  # the first window holds the compilation
        wait = sum(r["data_wait_s"] for r in rows)
        step = sum(r["step_time_s"] for r in rows)
        model_rate = len(rows) / step
        pipe_rate, plan = loader_batches_per_s(sets, args.steps)

    b = plan.batch
    print(f"base.yaml with a {args.vocab}-token BPE: batch {b.global_batch}×{b.seq_len}, jsonl source "
          f"({size / 1e6:,.0f} MB"
          f", {plan.data.train_examples:,} training windows), {plan.data.workers} worker process(es), "
          f"prefetch {plan.data.prefetch}, {args.steps} steps")
    if prep:
        print(f"prepared in {prep['seconds']:.1f} s ({prep['tokens'] + prep['documents']:,} tokens, "
              f"{(prep['tokens'] + prep['documents']) / prep['seconds']:,.0f} tokens/s), store {prep['store_bytes'] / 1e6:,.0f} MB")
    print(f"{'':<32}{'s/batch':>10}{'batches/s':>12}")
    print(f"{'training loop (per step)':<32}{step / len(rows):>10.4f}{model_rate:>12.2f}")
    print(f"{'  of which waiting for data':<32}{wait / len(rows):>10.5f}")
    print(f"{'loader alone (train_loader)':<32}{1 / pipe_rate:>10.5f}{pipe_rate:>12.1f}")
    print("data wait per step, by log window (ms): " + ", ".join(f"{1000 * r['data_wait_s']:.2f}" for r in rows))
    print(f"loader capacity / model demand: {pipe_rate / model_rate:.1f}x")
    print(f"data-wait share of step time: {100 * wait / step:.3f}%")


if __name__ == "__main__":
    main()
