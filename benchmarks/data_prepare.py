"""Preparing a token store: `capidsl data prepare` against Hugging Face `datasets`, in tokens per second.

On the same generated English-like JSONL files (SIZE_MB, default 200 MB in FILES files), with the
same BPE tokenizer file (a 4,096-token byte-level BPE trained here on a 20 MB sample with the
`tokenizers` library), fresh caches every time, all cores, alternating, ROUNDS rounds:
- capidsl: `capidsl data prepare RECIPE --set data.source=jsonl ...` as a subprocess (its own
  spawned worker processes, one per core, each tokenising ~16 MiB units with encode_batch);
- datasets: a subprocess running what a user writes without capidsl —
  `load_dataset("json", data_files=..., cache_dir=tmp)` then
  `.map(tokenise, batched=True, num_proc=os.cpu_count(), remove_columns=["text"])`, where
  `tokenise` encodes the batch with `tokenizers.Tokenizer.from_file(...)` (loaded once per
  process) and returns `input_ids` (the `PreTrainedTokenizerFast` route needs transformers);
- capidsl with the byte tokenizer on the same files (for reference; no `datasets` counterpart).
Each time is the subprocess's wall time, from launch to exit (imports, reading, tokenising,
writing the cache), on fresh cache directories; CPU s is the user + system time of the subprocess
and all its workers (less sensitive to other load on a shared machine than wall time). Tokens are the documents' tokens without
separators, counted from the store's manifest (tokens − documents) and from the datasets result;
both must agree. TOKENIZERS_PARALLELISM=false in every process (tokenizers' own thread pool off:
the processes are the parallelism, one per core, as capidsl's workers set themselves).
The last line is the headline: capidsl tokens/s ÷ datasets tokens/s (goal ≥ 1).

The corpus generator and the BPE trainer here are shared by data_scale.py and data_wait.py.
--quick is a smoke test only: capidsl prepares a corpus of at most two units (32 MiB) in its own
process, on one core, while datasets still uses every core.
Run: .venv/bin/python benchmarks/data_prepare.py [--size-mb 200] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv" / "bin" / "python")
CLI = str(REPO / ".venv" / "bin" / "capidsl")
RECIPE = str(REPO / "recipes" / "base.yaml")
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "JAX_PLATFORMS": "cpu"}

# ---- an English-like corpus, deterministic, streamed to disk -------------------------------------

_FUNCTION_WORDS = ("the of and to a in is that it for was on are as with his they at be this from have or by one "
                  "had not but what all were when we there can an your which their said if do will each about how "
                  "up out them then she many some so these would other into has more her two like him see time "
                  "could no make than first been its who now people my made over did down only way find use may "
                  "water long little very after words called just where most know get through back much before "
                  "go good new write our used me man too any day same right look think also around another came "
                  "come work three word must because does part even place well such here take why things help put "
                  "years different away again off went old number great tell men say small every found still "
                  "between name should home big give air line set own under read last never us left end along "
                  "while might next sound below saw something thought both few those always looked show large "
                  "often together asked house world going want school important until form food keep children "
                  "feet land side without boy once animals life enough took sometimes four head above kind began "
                  "almost live page got earth need far hand high year mother light parts country father let night "
                  "following picture being study second eyes soon times story boys since white days ever paper "
                  "hard near sentence better best across during today others however sure means knew its try told "
                  "young miles sun ways thing whole hear example heard several change answer room sea against top "
                  "turned learn point city play toward five using himself usually")
_SYLLABLES = ("ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo ga ge go la le li lo lu ma me mi mo mu na "
             "ne ni no nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo za ter tion "
             "ment ing er est al ous ive ly ent ist ure ness able con pro pre dis com per sta str tra gra pla "
             "qua thr ch sh th wh ar or ur an en in on un")
FUNCTION_WORDS, SYLLABLES = _FUNCTION_WORDS.split(), _SYLLABLES.split()


def _lexicon(seed: int = 1, content_words: int = 30_000):
    """(words, Zipf probabilities): common English words, then invented content words."""
    rng = np.random.default_rng([seed, 17])
    seen, words = set(FUNCTION_WORDS), list(FUNCTION_WORDS)
    while len(words) < len(FUNCTION_WORDS) + content_words:
        counts = rng.integers(1, 5, size=content_words)
        picks = rng.integers(0, len(SYLLABLES), size=int(counts.sum()))
        at = 0
        for c in counts.tolist():
            w = "".join(SYLLABLES[i] for i in picks[at:at + c].tolist())
            at += c
            if w not in seen and len(words) < len(FUNCTION_WORDS) + content_words:
                seen.add(w)
                words.append(w)
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    return words, p / p.sum()


def write_corpus(path: Path, size_bytes: int, seed: int = 0, field: str = "text") -> tuple[int, int]:
    """A JSONL file of about `size_bytes` (one {"text": ...} document a line): sentences of 4–30
    Zipf-drawn words, 1–60 sentences a document, deterministic in `seed`. (bytes, documents)."""
    words, p = _lexicon()
    n = len(words)
    # variants: plain, Capitalised (a sentence's first word), "word," and "word." (its last)
    table = np.array(words + [w.capitalize() for w in words] + [w + "," for w in words] + [w + "." for w in words],
                     dtype=object)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    rng = np.random.default_rng([seed, 23])
    written = docs = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        while written < size_bytes:
            out = []
            for _ in range(256):  # documents per chunk
                sentences = int(rng.integers(1, 61))
                lengths = rng.integers(4, 31, size=sentences)
                idx = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum())), side="right"), n - 1)
                ends = np.cumsum(lengths)
                starts = ends - lengths
                idx[starts] += n
                comma = rng.random(len(idx)) < 0.06
                idx[comma & (idx < n)] += 2 * n
                idx[ends - 1] = idx[ends - 1] % n + 3 * n
                line = json.dumps({field: " ".join(table[idx])}) + "\n"
                out.append(line)
                written += len(line)
                docs += 1
                if written >= size_bytes:
                    break
            fh.write("".join(out))
    return written, docs


def write_corpus_files(folder: Path, size_bytes: int, files: int = 1, seed: int = 0) -> list[Path]:
    paths = []
    for i in range(files):
        paths.append(folder / f"part-{i:03d}.jsonl")
        write_corpus(paths[-1], size_bytes // files, seed=seed * 1000 + i)
    return paths


def train_bpe(sample: Path, out: Path, vocab_size: int = 4096, sample_bytes: int = 20 << 20) -> Path:
    """A byte-level BPE (models.BPE + ByteLevel pre-tokenizer + BpeTrainer, as tests/data/test_store.py)
    trained on the first `sample_bytes` of a JSONL file's texts; id 0 is <sep>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    def texts():
        read = 0
        with open(sample, encoding="utf-8") as fh:
            for line in fh:
                read += len(line)
                yield json.loads(line)["text"]
                if read >= sample_bytes:
                    return

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(texts(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<sep>", "<unk>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
    tok.save(str(out))
    return out


def child_cpu_s() -> float:
    """User + system CPU seconds of every child process waited for so far (their own children included)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---- the two systems -----------------------------------------------------------------------------


def recipe_sets(data_path: Path, tokenizer: str, cache: Path, vocab: int) -> list[str]:
    sets = [f"model.vocab_size={vocab}", "data.source=jsonl", f"data.path={data_path}", f"data.tokenizer={tokenizer}",
            f"data.cache={cache}"]
    return [a for s in sets for a in ("--set", s)]


def capidsl_prepare(data_path: Path, tokenizer: str, cache: Path, vocab: int, workers: int | None = None) -> dict:
    """`capidsl data prepare` in a fresh process; wall seconds and the store's counts."""
    cmd = [CLI, "data", "prepare", RECIPE, *recipe_sets(data_path, tokenizer, cache, vocab)]
    if workers:
        cmd += ["--workers", str(workers)]
    t0, c0 = time.perf_counter(), child_cpu_s()
    proc = subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, child_cpu_s() - c0
    if proc.returncode:
        raise SystemExit(f"capidsl data prepare failed:\n{proc.stdout}\n{proc.stderr}")
    (store,) = [p for p in cache.iterdir() if p.is_dir() and (p / "manifest.json").is_file()]
    m = json.loads((store / "manifest.json").read_text())
    tokens = sum(s["tokens"] for s in m["splits"].values())
    documents = sum(s["documents"] for s in m["splits"].values())
    inner = [ln for ln in proc.stderr.splitlines() if ln.startswith("prepared ")]
    return {"seconds": seconds, "cpu_s": cpu, "tokens": tokens - documents, "documents": documents, "store": store,
            "store_bytes": dir_bytes(store), "inner": inner[-1] if inner else ""}


HF_SCRIPT = r'''
import json, os, sys, time
t0 = time.perf_counter()
from datasets import load_dataset

TOK = sys.argv[1]
_tok = None

def tokenise(batch):
    global _tok
    if _tok is None:  # once per process
        from tokenizers import Tokenizer
        _tok = Tokenizer.from_file(TOK)
    return {"input_ids": [e.ids for e in _tok.encode_batch(batch["text"])]}

if __name__ == "__main__":
    files, cache = json.loads(sys.argv[2]), sys.argv[3]
    ds = load_dataset("json", data_files=files, split="train", cache_dir=cache)
    t1 = time.perf_counter()
    out = ds.map(tokenise, batched=True, num_proc=os.cpu_count(), remove_columns=["text"])
    t2 = time.perf_counter()
    lengths = out.data.column("input_ids").combine_chunks().value_lengths()
    import pyarrow.compute as pc
    print(json.dumps({"tokens": int(pc.sum(lengths).as_py()), "documents": len(out), "load_s": t1 - t0,
                      "map_s": t2 - t1}))
'''


def hf_prepare(files: list[Path], tokenizer: str, cache: Path, script: Path) -> dict:
    t0, c0 = time.perf_counter(), child_cpu_s()
    proc = subprocess.run([PY, str(script), tokenizer, json.dumps([str(f) for f in files]), str(cache)], check=False, env=ENV,
                          capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - t0, child_cpu_s() - c0
    if proc.returncode:
        raise SystemExit(f"datasets run failed:\n{proc.stdout}\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "cpu_s": cpu, **out, "store_bytes": dir_bytes(cache)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--quick", action="store_true",
                    help="20 MB, 2 files, 1 round, a 1,024-token BPE: a smoke test, not a comparison (capidsl "
                         "tokenises a corpus under two 16 MiB units in its own process, on one core)")
    ap.add_argument("--tmp", default=None, help="where the corpus and caches go (default: the system's temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.size_mb, args.files, args.rounds, args.vocab = 20, 2, 1, 1024

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        files = write_corpus_files(tmp / "corpus", int(args.size_mb * 1e6), args.files)
        size = sum(f.stat().st_size for f in files)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        bpe = str(train_bpe(files[0], tmp / "bpe.json", args.vocab, sample_bytes=min(20 << 20, size // 2)))
        bpe_s = time.perf_counter() - t
        script = tmp / "hf_tokenise.py"
        script.write_text(HF_SCRIPT)
        rows: dict[str, list[dict]] = {"capidsl": [], "datasets": [], "capidsl byte": []}
        for r in range(args.rounds):
            for name in ("capidsl", "datasets", "capidsl byte"):
                cache = tmp / f"cache-{name.replace(' ', '-')}-{r}"
                if name == "capidsl":
                    res = capidsl_prepare(tmp / "corpus", bpe, cache, args.vocab)
                elif name == "datasets":
                    res = hf_prepare(files, bpe, cache, script)
                else:
                    res = capidsl_prepare(tmp / "corpus", "byte", cache, 256)
                rows[name].append(res)
                shutil.rmtree(cache, ignore_errors=True)
                print(f"  round {r + 1} {name:<13} {res['seconds']:7.1f} s  {res['tokens'] / res['seconds']:>12,.0f} tok/s",
                      file=sys.stderr, flush=True)

    cap, hf = rows["capidsl"], rows["datasets"]
    if cap[0]["tokens"] != hf[0]["tokens"]:
        print(f"WARNING: token counts differ: capidsl {cap[0]['tokens']:,}, datasets {hf[0]['tokens']:,}")
    print(f"corpus: {size / 1e6:.0f} MB of generated English-like JSONL in {len(files)} files, "
          f"{cap[0]['documents']:,} documents (generated in {gen_s:.0f} s); BPE {args.vocab} trained in {bpe_s:.0f} s")
    print(f"{os.cpu_count()} cores, TOKENIZERS_PARALLELISM=false, fresh cache each run, {args.rounds} round(s) alternating")
    print(f"{'system':<14}{'tokens':>14}{'median s':>10}{'min s':>8}{'CPU s':>8}{'tokens/s':>12}{'MB/s':>8}{'cache MB':>10}   all runs (s)")
    rate, best = {}, {}
    for name, rs in rows.items():
        med = statistics.median(r["seconds"] for r in rs)
        low = min(r["seconds"] for r in rs)
        cpu = statistics.median(r["cpu_s"] for r in rs)
        rate[name], best[name] = rs[0]["tokens"] / med, rs[0]["tokens"] / low
        print(f"{name:<14}{rs[0]['tokens']:>14,}{med:>10.1f}{low:>8.1f}{cpu:>8.1f}{rate[name]:>12,.0f}{size / 1e6 / med:>8.1f}"
              f"{rs[0]['store_bytes'] / 1e6:>10.0f}   " + ", ".join(f"{r['seconds']:.1f}" for r in rs))
    print(f"datasets phases (median): load_dataset {statistics.median(r['load_s'] for r in hf):.1f} s, "
          f"map {statistics.median(r['map_s'] for r in hf):.1f} s")
    if cap[0]["inner"]:
        print(f"capidsl's own report (last run): {cap[-1]['inner']}")
    print(f"fastest runs capidsl / datasets: {best['capidsl'] / best['datasets']:.2f}")
    print(f"preparation throughput capidsl / datasets (medians): {rate['capidsl'] / rate['datasets']:.2f}")


if __name__ == "__main__":
    main()
