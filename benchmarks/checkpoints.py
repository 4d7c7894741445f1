"""Checkpoints of a ~500 MB train state: how long the loop is blocked by an async save, against the full save.

The state is a real capidsl TrainState (a 40M-parameter byte-level GPT: f32 parameters and adamw's
two moments ≈ 480 MB), saved by capidsl's own `Checkpoints` (orbax CheckpointManager, async, plus
the sha256 manifest) into a temporary folder on this machine's disk. For each of REPEATS saves:
- blocked: the time `save()` takes to return (what the training loop waits);
- full: until the save is committed and its manifest written (`wait()`);
- restore: reading the step back into a sharded state (`restore_state`).
The last line is blocked / full (lower is better: the share of the save the loop still waits for).
Run: .venv/bin/python benchmarks/checkpoints.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPEATS = 3
MODEL = ["model.d_model=512", "model.n_layers=12", "model.n_heads=8", "model.seq_len=128",
         "eval.every=null", "stop.when=null", "stop.restore_best=false"]


def main() -> None:
    import jax

    from capidsl.exec.checkpoint import Checkpoints
    from capidsl.exec.mesh import build_mesh
    from capidsl.exec.state import abstract_state, init_state
    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    plan = compile_plan(Recipe.from_yaml(REPO / "recipes" / "base.yaml", overrides=MODEL))
    mesh = build_mesh(plan)
    _, state = init_state(plan, mesh)
    _, abstract = abstract_state(plan, mesh)
    size = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    blocked, full, restore = [], [], []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:  # the repository's disk, where run directories live
        ckpts = Checkpoints(Path(tmp) / "run", plan.checkpoint)
        for i in range(REPEATS):
            step = i + 1
            t0 = time.perf_counter()
            ckpts.save(step, state, {"step": step})
            t1 = time.perf_counter()
            ckpts.wait()
            t2 = time.perf_counter()
            restored = ckpts.restore_state(step, abstract)
            jax.block_until_ready(restored)
            t3 = time.perf_counter()
            blocked.append(t1 - t0)
            full.append(t2 - t0)
            restore.append(t3 - t2)
            del restored
        ckpts.close()
    print(f"state {size / 1e6:.0f} MB ({plan.model.param_count / 1e6:.1f}M parameters, adamw), "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), async save, {REPEATS} saves")
    print(f"{'':<24}{'median s':>10}   all")
    for name, values in (("loop blocked by save()", blocked), ("full save (committed)", full), ("restore", restore)):
        print(f"{name:<24}{statistics.median(values):>10.3f}   " + ", ".join(f"{v:.3f}" for v in values))
    print(f"full save throughput {size / 1e6 / statistics.median(full):.0f} MB/s, "
          f"restore {size / 1e6 / statistics.median(restore):.0f} MB/s")
    print(f"blocked / full save: {statistics.median(blocked) / statistics.median(full):.3f}")


if __name__ == "__main__":
    main()
