"""Import of Hugging Face weights against simply reading the files: wall time and peak host RSS.

A Llama-shaped checkpoint of random bfloat16 weights is written (capidsl's own streaming
`write_safetensors`, several ~500 MB shards + model.safetensors.index.json + config.json). Then,
each in its own subprocess (so peak RSS, VmHWM, is per process), alternated and
repeated after one warm-up round of each:
- `read`: every shard read fully, in 16 MiB chunks into one reused buffer (the baseline);
- `load`: every tensor read into its own numpy array, all held at once (what a naive loader does);
- `import`: capidsl's plan compiled from the directory, then only the weights placed, the way
  init_state does it (`capidsl.exec.weights.pretrained_params`; the optimizer state is not made).
The files are in the page cache throughout (dropping it needs root): this measures the work on top
of the bytes, not the disk.

    .venv/bin/python benchmarks/hf_weights.py [--size 1b|tiny] [--repeats 3] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # gpt options of the checkpoint; "1b" is a Llama-2-1B-like shape with vocab 32768, untied
    "1b": dict(vocab_size=32768, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=5632),
    "100m": dict(vocab_size=32768, d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048),
    "tiny": dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=176),
}
SHARD_BYTES = 500 << 20
CHUNK = 16 << 20


def options_of(size: str) -> dict:
    return dict(SIZES[size], max_positions=2048, norm_eps=1e-5, rope_theta=10000.0, rope_scaling="none",
                tied_embeddings=False, bias=False)


def write_checkpoint(directory: Path, options: dict) -> tuple[int, int, int]:
    """(parameters, tensors, bytes on disk) of a random bfloat16 Llama checkpoint written to `directory`."""
    import ml_dtypes
    import numpy as np

    from capidsl.models.hf.config import to_config
    from capidsl.models.hf.layout import tensors
    from capidsl.models.hf.safetensors import INDEX, write_safetensors

    bf16 = np.dtype(ml_dtypes.bfloat16)
    layout = tensors("LlamaForCausalLM", options)
    shards, current, size = [], [], 0
    for t in layout:
        nbytes = math.prod(t.shape) * bf16.itemsize
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    shards.append(current)
    rng = np.random.default_rng(0)

    def produce(shape):
        return lambda: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(bf16)

    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / name, [(t.name, bf16, t.shape, produce(t.shape)) for t in shard],
                          metadata={"format": "pt"})
        weight_map.update({t.name: name for t in shard})
    params = sum(math.prod(t.shape) for t in layout)
    (directory / INDEX).write_text(json.dumps({"metadata": {"total_size": params * 2}, "weight_map": weight_map}))
    config = dict(to_config(options, "LlamaForCausalLM"), torch_dtype="bfloat16")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    on_disk = sum(p.stat().st_size for p in directory.iterdir())
    return params, len(layout), on_disk


# ---- the children: each prints one JSON line ------------------------------------------------------

def _memory() -> dict:
    """Current anonymous and file-backed resident memory of this process (MB), from /proc."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the same peak, as getrusage sees it
    return out


def child_read(directory: Path) -> dict:
    files = sorted(directory.glob("*.safetensors"))
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return {"work_s": time.perf_counter() - t0, "bytes": total}


def child_load(directory: Path) -> dict:
    import numpy as np

    from capidsl.models.hf.safetensors import DTYPES, Checkpoint

    t0 = time.perf_counter()
    ckpt = Checkpoint(directory)
    held = {}
    for name, t in ckpt.tensors.items():
        a = np.empty(t.shape, dtype=DTYPES[t.dtype])
        with open(t.file, "rb", buffering=0) as f:
            f.seek(t.begin)
            f.readinto(a.reshape(-1).view(np.uint8).data)
        held[name] = a
    return {"work_s": time.perf_counter() - t0, "bytes": sum(a.nbytes for a in held.values())}


def child_import(directory: Path, params_dtype: str) -> dict:
    placed = _placed(directory, params_dtype)
    return {k: v for k, v in placed.items() if k not in ("plan", "tree")}


def _placed(directory: Path, params_dtype: str) -> dict:
    t0 = time.perf_counter()
    import jax

    from capidsl.exec.mesh import build_mesh
    from capidsl.exec.state import _abstract, shardings_for
    from capidsl.exec.weights import pretrained_params
    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    t1 = time.perf_counter()
    fixtures = ROOT / "tests" / "fixtures" / "hf"
    plan = compile_plan(Recipe.from_text(f"""
name: hf-weights-bench
model: {{init: {{from: "{directory}"}}, seq_len: 128}}
data: {{source: text, path: "{fixtures / 'README.md'}", tokenizer: "{fixtures / 'gpt2-tiny' / 'tokenizer.json'}"}}
training: {{batch_size: 8, duration: "2 steps"}}
precision: {{params: {params_dtype}, compute: {params_dtype}}}
eval: {{every: null}}
"""))
    mesh = build_mesh(plan)
    _, abstract, _ = _abstract(plan)  # shapes only (eval_shape): no parameters nor moments are made
    shardings = shardings_for(plan, mesh, abstract)
    t2 = time.perf_counter()
    params = pretrained_params(plan, mesh, abstract.params, shardings.params)
    jax.block_until_ready(params)
    t3 = time.perf_counter()
    leaves = jax.tree_util.tree_leaves(params)
    return {**_memory(), "plan": plan, "tree": params, "work_s": t3 - t2, "imports_s": t1 - t0, "plan_s": t2 - t1, "devices": len(jax.devices()),
            "bytes": sum(a.nbytes for a in leaves), "params": sum(a.size for a in leaves)}


def child_write(directory: Path) -> dict:
    """The export's baseline: as many bytes as the export writes (float32: twice the bfloat16
    checkpoint) written to one file in 16 MiB chunks from one reused buffer, closed, then removed."""
    import numpy as np

    on_disk = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    buf = np.random.default_rng(0).integers(0, 255, CHUNK, dtype=np.uint8)
    target = directory.parent / f"{directory.name}.write-baseline"
    t0 = time.perf_counter()
    with open(target, "wb") as f:
        for _ in range(-(-2 * on_disk // CHUNK)):
            f.write(buf)
    work = time.perf_counter() - t0
    target.unlink()
    return {"work_s": work}


def child_export(directory: Path, params_dtype: str) -> dict:
    """`capidsl export --format hf`'s work on weights already placed: write (streamed, float32) and
    verify (read back through the importer, logits compared); the placing itself is not timed."""
    from capidsl.export.hf import export_hf

    placed = _placed(directory, params_dtype)
    target = directory.parent / f"{directory.name}.export"
    t0 = time.perf_counter()
    done = export_hf(placed["plan"], placed["tree"], 0, target)
    work = time.perf_counter() - t0
    shutil.rmtree(target, ignore_errors=True)
    return {**_memory(), "work_s": work, "write_s": done.write_s, "verify_s": done.verify_s, "bytes": done.bytes,
            "max_abs_diff": done.max_abs_diff}


def child(mode: str, directory: Path, params_dtype: str) -> None:
    if mode == "import":
        result = child_import(directory, params_dtype)
    elif mode == "export":
        result = child_export(directory, params_dtype)
    else:
        result = {"read": child_read, "load": child_load, "write": child_write}[mode](directory)
    result = {**_memory(), **result}  # import's own figures were taken while its parameters were alive
    print(json.dumps(result))


# ---- the parent ---------------------------------------------------------------------------------

def run_child(mode: str, directory: Path, params_dtype: str) -> dict:
    """One subprocess: its wall time (process start to exit) and its own report (peak RSS: its VmHWM)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, str(directory), "--params", params_dtype],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report["wall_s"] = wall
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--repeats", type=int, default=3, help="alternated rounds after the warm-up round")
    ap.add_argument("--params", choices=["bfloat16", "float32"], default="bfloat16", help="the plan's parameter dtype")
    ap.add_argument("--part", choices=["import", "export", "both"], default="both")
    ap.add_argument("--tmp", default=None, help="where the checkpoint is written (deleted at the end)")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.params)
        return

    directory = Path(tempfile.mkdtemp(prefix="hf-weights-", dir=args.tmp))
    try:
        t0 = time.perf_counter()
        n_params, n_tensors, on_disk = write_checkpoint(directory, options_of(args.size))
        write_s = time.perf_counter() - t0
        shards = len(list(directory.glob("*.safetensors")))
        print(f"checkpoint: Llama {args.size} {SIZES[args.size]}, untied")
        print(f"  {n_params:,} parameters, {n_tensors} tensors, bfloat16, {shards} shards, "
              f"{on_disk / 1e6:,.1f} MB on disk (written in {write_s:.1f} s); page cache warm throughout")
        modes = {"import": ["read", "load", "import"], "export": ["write", "export"]}.get(
            args.part, ["read", "load", "import", "write", "export"])
        runs = {m: [] for m in modes}
        for m in modes:  # warm-up round, not counted
            run_child(m, directory, args.params)
        for r in range(args.repeats):
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for m in order:
                runs[m].append(run_child(m, directory, args.params))
        if "import" in runs:
            report(runs, on_disk, args)
        if "export" in runs:
            report_export(runs, on_disk)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def report(runs: dict, on_disk: int, args) -> None:
    med = lambda m, k: statistics.median(r[k] for r in runs[m])  # noqa: E731
    peak = lambda m: max(r["VmHWM"] for r in runs[m])  # noqa: E731
    imp = runs["import"][0]
    print(f"import: params {args.params}, {imp['params']:,} parameters = {imp['bytes'] / 1e6:,.1f} MB, "
          f"{imp['devices']} cpu device(s); {args.repeats} alternated rounds after one warm-up round of each")
    print()
    print("| subprocess | wall s (median) | work s (median) | work s (all) | peak RSS MiB | peak RSS / on disk |")
    print("|---|---|---|---|---|---|")
    names = {"read": "read the files (16 MiB chunks, one buffer): **baseline**",
             "load": "load every tensor into numpy, all held",
             "import": "capidsl import (plan + pretrained_params)"}
    for m in ("read", "load", "import"):
        each = ", ".join(f"{r['work_s']:.2f}" for r in runs[m])
        print(f"| {names[m]} | {med(m, 'wall_s'):.2f} | {med(m, 'work_s'):.2f} | {each} | "
              f"{peak(m):,.0f} | {peak(m) * 2**20 / on_disk:.2f} |")
    print()
    print(f"import's parts (median s): python+jax imports {med('import', 'imports_s'):.2f}, "
          f"plan compile + mesh + shapes {med('import', 'plan_s'):.2f}, pretrained_params {med('import', 'work_s'):.2f}")
    print(f"import's memory with the parameters alive (last run, MiB): anonymous {runs['import'][-1]['RssAnon']:,.0f}, "
          f"file-backed (mapped checkpoint pages) {runs['import'][-1]['RssFile']:,.0f}")
    params_mb = imp["bytes"] / 2**20
    print(f"peak RSS of import − params ({params_mb:,.0f} MiB) = {peak('import') - params_mb:,.0f} MiB "
          f"({(peak('import') - params_mb) * 2**20 / on_disk:.2f} of on disk)")
    print(f"weights time ÷ reading the files (work): {med('import', 'work_s') / med('read', 'work_s'):.2f}; "
          f"÷ loading into numpy: {med('import', 'work_s') / med('load', 'work_s'):.2f}")
    print(f"whole import subprocess ÷ read subprocess (wall, process start to exit): "
          f"{med('import', 'wall_s') / med('read', 'wall_s'):.2f}")
    print(f"peak RSS of import ÷ checkpoint on disk: {peak('import') * 2**20 / on_disk:.2f}")


def report_export(runs: dict, on_disk: int) -> None:
    med = lambda m, k: statistics.median(r[k] for r in runs[m])  # noqa: E731
    peak = max(r["VmHWM"] for r in runs["export"])
    last = runs["export"][-1]
    print()
    print(f"export --format hf of the placed weights: {last['bytes'] / 1e6:,.1f} MB written (float32), "
          f"verified to {max(r['max_abs_diff'] for r in runs['export']):.2g} max abs logit diff")
    print()
    print("| subprocess | work s (median) | work s (all) | peak RSS MiB | peak RSS / checkpoint on disk |")
    print("|---|---|---|---|---|")
    each = ", ".join(f"{r['work_s']:.2f}" for r in runs["write"])
    print(f"| write as many bytes (16 MiB chunks, one buffer): **baseline** | {med('write', 'work_s'):.2f} | {each} | "
          f"{max(r['VmHWM'] for r in runs['write']):,.0f} | |")
    each = ", ".join(f"{r['work_s']:.2f}" for r in runs["export"])
    print(f"| capidsl export (write + verify; weights placed before) | {med('export', 'work_s'):.2f} | {each} | "
          f"{peak:,.0f} | {peak * 2**20 / on_disk:.2f} |")
    print()
    print(f"export's parts (median s): write {med('export', 'write_s'):.2f}, verify {med('export', 'verify_s'):.2f}")
    print(f"export ÷ writing the bytes (work): {med('export', 'work_s') / med('write', 'work_s'):.2f}; "
          f"its write alone: {med('export', 'write_s') / med('write', 'work_s'):.2f}")
    print(f"peak RSS of export ÷ checkpoint on disk: {peak * 2**20 / on_disk:.2f}")


if __name__ == "__main__":
    main()
