"""Analytic memory vs XLA's compiled figures, for shipped and tiny recipes over meshes that compile on CPU.

For each (recipe, mesh) it compiles the real train step on 8 fake CPU devices and prints per device:
the analytic parameter+optimizer+batch bytes against XLA's argument bytes (arithmetic: should be 1.00),
and the analytic activation estimate against XLA's temporary bytes (a model: the ratio is reported,
not fitted). The last line is the median activation ratio.
Run: .venv/bin/python benchmarks/estimate_accuracy.py   (sets the XLA flag itself)
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parents[1]
MESHES = {"data=8": ("mesh.data=8",), "fsdp=8": ("mesh.data=1", "mesh.fsdp=8"),
          "2×2×2": ("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), "tensor=8": ("mesh.data=1", "mesh.tensor=8")}
CASES = {
    "base": ("recipes/base.yaml", ()),
    "base remat=full": ("recipes/base.yaml", ("training.remat=full",)),
    "gpt 6L d256": ("recipes/base.yaml", ("model.d_model=256", "model.n_layers=6", "model.n_heads=8")),
}


def main() -> None:
    from capidsl.exec.aot import compiled_memory
    from capidsl.plan.compile import compile_plan
    from capidsl.plan.topology import simulated
    from capidsl.recipe import Recipe

    ratios = []
    print(f"{'case':18} {'mesh':9} {'state+batch MiB':>16} {'XLA args MiB':>13} {'ratio':>6} "
          f"{'activ. MiB':>11} {'XLA temp MiB':>13} {'ratio':>6}")
    for name, (path, overrides) in CASES.items():
        for mesh_name, mesh in MESHES.items():
            plan = compile_plan(Recipe.from_yaml(REPO / path, overrides=(*overrides, *mesh)), simulated("cpu", 8))
            c = compiled_memory(plan)
            m = plan.memory
            state = m.params + m.opt_state + m.batch
            ratio = m.activations / c["temp_bytes"]
            ratios.append(ratio)
            mib = 2**20
            print(f"{name:18} {mesh_name:9} {state / mib:16.2f} {c['argument_bytes'] / mib:13.2f} "
                  f"{state / c['argument_bytes']:6.2f} {m.activations / mib:11.2f} {c['temp_bytes'] / mib:13.2f} {ratio:6.2f}")
    print(f"median activation estimate / XLA temp: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
