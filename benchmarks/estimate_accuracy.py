"""Analytic memory vs XLA's compiled figures, for every shipped recipe over four meshes of 8 fake CPU devices.

For each (recipe, mesh) it plans the recipe, compiles the real train step ahead of time (nothing is
allocated) and prints per device:
  args   the analytic parameters + optimizer state + batch + other state against XLA's argument bytes
         (arithmetic: should be 1.00);
  temp   the analytic temporaries, term by term (saved activations, backward working set, f32 grads,
         optimizer copy or, when accumulating, the larger of it and the accumulation buffer, FSDP
         gather; capidsl/plan/memory.py), their sum against XLA's
         temp_size_in_bytes, and the ratio (a model: reported, not fitted);
  f32eq  for bfloat16-compute recipes, the ratio of the same estimate made with float32 compute: XLA's
         CPU backend has no bfloat16 arithmetic and keeps the residuals in float32, so this is the
         figure to compare on CPU (an accelerator keeps them in bfloat16, as the estimate says).
Every recipe compiles at its own widths and depth. Recipes whose `micro_batch: auto` cannot fit a
nominal 16 GiB CPU device (gpt2-small, llama-7b, llama-70b-fsdp) run with batch_size 8 and
micro_batch 1; seed's accumulation of 8 needs 64 rows; gpt2-small's vocabulary (50257) does not divide
over tensor axes, so on meshes with tensor > 1 it is kept whole (mesh.rules.vocab = null).
The last lines are the median temp ratio per mesh. A markdown copy of the table goes to --markdown PATH.
Run: .venv/bin/python benchmarks/estimate_accuracy.py [--only base,seed] [--meshes data=8] [--markdown t.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
MESHES = {
    "data=8": ("mesh.data=8", "mesh.fsdp=1", "mesh.tensor=1"),
    "fsdp=8": ("mesh.data=1", "mesh.fsdp=8", "mesh.tensor=1"),
    "2×2×2": ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"),
    "tensor=8": ("mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8"),
}
SMALL_BATCH = ("training.batch_size=8", "training.micro_batch=1")
CASES = {  # name: (recipe, overrides, overrides on meshes with tensor > 1)
    "base": ("base.yaml", (), ()),
    "base remat=full": ("base.yaml", ("training.remat=full",), ()),
    "base scanned": ("base.yaml", ("training.layer_loop=scanned",), ()),
    "seed": ("seed.yaml", ("training.batch_size=64",), ()),
    "pruning": ("pruning.yaml", (), ()),
    "pruning scanned": ("pruning.yaml", ("training.layer_loop=scanned",), ()),
    "capibara": ("capibara.yaml", (), ()),
    "batching": ("batching.yaml", ("data.token_budget=32768",), ()),
    "batching scanned": ("batching.yaml", ("data.token_budget=32768", "training.layer_loop=scanned"), ()),
    "gpt2-small": ("gpt2-small.yaml", SMALL_BATCH, ("mesh.rules.vocab=null",)),
    "gpt2-small scanned": ("gpt2-small.yaml", (*SMALL_BATCH, "training.layer_loop=scanned"), ("mesh.rules.vocab=null",)),
    "llama-7b": ("llama-7b.yaml", SMALL_BATCH, ()),
    "llama-70b-fsdp": ("llama-70b-fsdp.yaml", SMALL_BATCH, ()),
}
TERMS = ("saved activations", "backward working set", "gradients f32", "optimizer copy", "optimizer copy or accumulation",
         "fsdp gather")
SHORT = ("saved", "work", "grads", "opt copy", "max(copy, accum)", "gather")


def plan_for(path: Path, overrides: tuple[str, ...]):
    from capidsl.plan.compile import compile_plan
    from capidsl.plan.topology import simulated
    from capidsl.recipe import Recipe

    return compile_plan(Recipe.from_yaml(path, overrides=overrides), simulated("cpu", 8))


def row(name: str, mesh_name: str) -> list[str]:
    from capidsl.exec.aot import compiled_memory

    recipe, overrides, tensor_overrides = CASES[name]
    mesh = MESHES[mesh_name]
    extra = tensor_overrides if "mesh.tensor=1" not in mesh else ()
    path = REPO / "recipes" / recipe
    plan = plan_for(path, (*overrides, *mesh, *extra))
    c = compiled_memory(plan)
    m = plan.memory
    terms = dict(m.breakdown)
    args = m.params + m.opt_state + m.batch + m.state
    ratio = m.temp / c["temp_bytes"]
    f32eq = ""
    if plan.precision.compute_dtype != "float32":
        from capidsl.recipe import RecipeError

        try:
            eq = plan_for(path, (*overrides, *mesh, *extra, "training.mixed_precision=false")).memory
        except RecipeError:  # the recipe writes a precision: section instead
            eq = plan_for(path, (*overrides, *mesh, *extra, "precision.compute=float32")).memory
        f32eq = f"{eq.temp / c['temp_bytes']:.2f}"
    b = plan.batch
    return [name, mesh_name, f"{b.micro_batch}×{b.accumulation}", f"{args / MIB:.1f}", f"{c['argument_bytes'] / MIB:.1f}",
            f"{args / c['argument_bytes']:.2f}", *(f"{terms.get(t, 0) / MIB:.1f}" for t in TERMS),
            f"{m.temp / MIB:.1f}", f"{c['temp_bytes'] / MIB:.1f}", f"{ratio:.2f}", f32eq]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated case names (default: all)")
    ap.add_argument("--meshes", help="comma-separated mesh names (default: all)")
    ap.add_argument("--markdown", help="also write the table as markdown to this file")
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(CASES)
    meshes = a.meshes.split(",") if a.meshes else list(MESHES)
    header = ["case", "mesh", "micro×acc", "args MiB", "XLA args", "ratio", *SHORT, "temp MiB", "XLA temp", "ratio", "f32eq"]
    print("  ".join(header), flush=True)
    rows, ratios = [], {m: [] for m in meshes}
    for name in names:
        for mesh_name in meshes:
            try:
                r = row(name, mesh_name)
            except Exception as err:  # a case that cannot plan or compile: say so and go on
                r = [name, mesh_name, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"]
            else:
                ratios[mesh_name].append(float(r[-2]))
            rows.append(r)
            print("  ".join(r), flush=True)
    for mesh_name, rs in ratios.items():
        if rs:
            print(f"median temp estimate / XLA temp on {mesh_name}: {statistics.median(rs):.2f} "
                  f"(range {min(rs):.2f}–{max(rs):.2f}, {len(rs)} recipes)")
    if a.markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
        lines += ["| " + " | ".join(r + [""] * (len(header) - len(r))) + " |" for r in rows]
        Path(a.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
