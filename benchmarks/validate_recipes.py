"""How long `capidsl validate` takes on 50 recipes, cold (a fresh process, as CI runs it).

Budget (issue 2): well under a second. Prints the median of a few runs and ends with the ratio
median / budget (below 1 is within budget). Run: .venv/bin/python benchmarks/validate_recipes.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 1.0
N_RECIPES = 50
RUNS = 5


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = sorted((REPO / "recipes").glob("*.yaml"))
        for i in range(N_RECIPES):
            src = sources[i % len(sources)]
            shutil.copy(src, folder / f"{i:02d}-{src.name}")
        cmd = [sys.executable, "-m", "capidsl", "validate", str(folder)]
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.exit(f"validate failed:\n{proc.stdout}{proc.stderr}")
    median = statistics.median(times)
    print(f"capidsl validate, {N_RECIPES} recipes, fresh process: median {median:.3f} s over {RUNS} runs "
          f"(min {min(times):.3f} s, budget {BUDGET_S:.1f} s)")
    print(f"ratio {median / BUDGET_S:.2f}")


if __name__ == "__main__":
    main()
