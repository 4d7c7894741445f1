"""Does `capidsl run` start as fast, and in as little memory, on a 1 GB corpus as on a 10 MB one?

Two generated English-like JSONL corpora (benchmarks/data_prepare.py's generator, streamed to disk,
deterministic): BIG (default 1 GB) and SMALL (default 10 MB); a 4,096-token byte-level BPE trained
on a 20 MB sample of BIG; both prepared with `capidsl data prepare` (its wall time, tokens/s and
the store's size on disk are reported). Then `capidsl run recipes/base.yaml --steps 3` with
`--set model.vocab_size=4096 --set data.source=jsonl --set data.path=... --set data.tokenizer=...`
(plus `data.cache` and `logging.every=every 1 steps`, so that step 1 writes a metrics line), a fresh
run directory each time, alternating BIG / SMALL, REPEATS times each. Per run:
- to first step: seconds from just before the process is launched (`/usr/bin/time capidsl run ...`)
  until metrics.jsonl first holds the line of step 1, polled every 10 ms — Python start-up, imports,
  planning (counts from the store's manifest), opening the store, the loader, initialising the
  state, compiling and running step 1;
- peak RSS: the run's maximum resident set size as `/usr/bin/time -f %M` reports it (the kernel's
  figure for the process; `capidsl run` starts no child processes here), and the peak of the
  process tree's summed RSS polled with psutil every 10 ms (a cross-check);
- the process's whole wall time (3 steps, the final checkpoint, exit).
Medians; the last two lines are the ratios BIG / SMALL (goal ≤ 1.2 for both). The corpora and
stores are deleted at the end (unless --keep DIR).
Run: .venv/bin/python benchmarks/data_scale.py [--big-mb 1000] [--small-mb 10] [--repeats 3] [--steps 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

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


def first_step_run(corpus: Path, bpe: str, cache: Path, vocab: int, run_dir: Path, steps: int = 3) -> dict:
    rss_file = run_dir.with_suffix(".rss")
    cmd = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), CLI, "run", RECIPE, "--steps", str(steps),
           "--run-dir", str(run_dir), *recipe_sets(corpus, bpe, cache, vocab), "--set", "logging.every=every 1 steps"]
    metrics = run_dir / "metrics.jsonl"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, tree_peak = None, 0
    top = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:
            pass
        if first is None and metrics.exists():
            text = metrics.read_text()
            if any(json.loads(ln).get("step") == 1 for ln in text.splitlines() if ln.strip().endswith("}")):
                first = time.perf_counter() - t0
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"capidsl run failed:\n{out}")
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    rss_kib = int(rss_file.read_text().split()[-1])
    return {"first_step_s": first, "wall_s": wall, "peak_rss": rss_kib * 1024, "tree_peak": tree_peak,
            "reported_rss": max(r.get("host_peak_rss_bytes", 0) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-mb", type=float, default=1000)
    ap.add_argument("--small-mb", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="16 MB vs 2 MB, one run each of 1 step, a 512-token BPE")
    ap.add_argument("--tmp", default=None, help="where the corpora and stores go (default: the system's temp dir)")
    ap.add_argument("--keep", metavar="DIR", help="put the corpora, tokenizer and stores in DIR and keep them "
                    "(for data_wait.py --corpus DIR/big/corpus.jsonl --tokenizer DIR/bpe.json --cache DIR/cache-big)")
    args = ap.parse_args()
    if args.quick:
        args.big_mb, args.small_mb, args.repeats, args.vocab, args.steps = 16, 2, 1, 512, 1

    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(dir=args.tmp)) as tmp:
        tmp = Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        corpora = {"big": tmp / "big" / "corpus.jsonl", "small": tmp / "small" / "corpus.jsonl"}
        t = time.perf_counter()
        write_corpus(corpora["big"], int(args.big_mb * 1e6), seed=1)
        write_corpus(corpora["small"], int(args.small_mb * 1e6), seed=2)
        gen_s = time.perf_counter() - t
        bpe = str(train_bpe(corpora["big"], tmp / "bpe.json", args.vocab, sample_bytes=min(20 << 20, int(args.big_mb * 5e5))))
        prep = {}
        for name, path in corpora.items():
            prep[name] = capidsl_prepare(path, bpe, tmp / f"cache-{name}", args.vocab)
            print(f"  prepared {name}: {prep[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
        runs: dict[str, list[dict]] = {"big": [], "small": []}
        for i in range(args.repeats):
            for name in ("big", "small"):
                r = first_step_run(corpora[name], bpe, tmp / f"cache-{name}", args.vocab, tmp / f"run-{name}-{i}", args.steps)
                runs[name].append(r)
                print(f"  run {i + 1} {name}: first step {r['first_step_s']:.2f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB",
                      file=sys.stderr, flush=True)

        sizes = {n: p.stat().st_size for n, p in corpora.items()}
        print(f"corpora: generated in {gen_s:.0f} s; BPE {args.vocab}; `capidsl data prepare`, all cores, "
              "TOKENIZERS_PARALLELISM=false")
        print(f"{'corpus':<8}{'JSONL MB':>10}{'documents':>11}{'tokens':>14}{'prepare s':>11}{'tokens/s':>12}"
              f"{'store MB':>10}")
        for n in ("big", "small"):
            p = prep[n]
            print(f"{n:<8}{sizes[n] / 1e6:>10,.0f}{p['documents']:>11,}{p['tokens'] + p['documents']:>14,}"
                  f"{p['seconds']:>11.1f}{(p['tokens'] + p['documents']) / p['seconds']:>12,.0f}{p['store_bytes'] / 1e6:>10,.0f}")
        print(f"capidsl run --steps {args.steps}, fresh run dir, {args.repeats} run(s) each alternating; medians (all runs)")
        print(f"{'corpus':<8}{'to step 1 s':>12}{'peak RSS MiB':>14}{'tree RSS MiB':>14}{'wall s':>8}   to step 1, all")
        med = {}
        for n in ("big", "small"):
            rs = runs[n]
            med[n] = {k: statistics.median(r[k] for r in rs) for k in ("first_step_s", "peak_rss", "tree_peak", "wall_s")}
            m = med[n]
            print(f"{n:<8}{m['first_step_s']:>12.2f}{m['peak_rss'] / 2**20:>14,.0f}{m['tree_peak'] / 2**20:>14,.0f}"
                  f"{m['wall_s']:>8.1f}   " + ", ".join(f"{r['first_step_s']:.2f}" for r in rs))
        print(f"time to first step big / small: {med['big']['first_step_s'] / med['small']['first_step_s']:.3f} (goal <= 1.2)")
        print(f"peak RSS big / small: {med['big']['peak_rss'] / med['small']['peak_rss']:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
