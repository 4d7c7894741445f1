"""How long `capidsl plan` takes for the 70B recipe over 1024 simulated H100s, in a fresh process.

Nothing is allocated: shapes come from abstract evaluation of the stacked (scanned) layers, so the
time should not grow with depth. Prints the median of RUNS cold runs (imports included, as a user
sees it) and, for comparison, the 7B recipe on 256 simulated H100s and the base recipe on 8 CPUs; the last line
is the 70B median against a budget of 10 s ("seconds on a laptop").
Run: .venv/bin/python benchmarks/plan_70b.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 10.0
RUNS = 3
CASES = {
    "llama-70b-fsdp.yaml": ["--devices", "1024", "--device-kind", "h100"],
    "llama-7b.yaml": ["--devices", "256", "--device-kind", "h100"],
    "base.yaml": ["--devices", "8", "--device-kind", "cpu"],
}


def seconds(recipe: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "capidsl", "plan", str(REPO / "recipes" / recipe), *extra, "--json"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return elapsed


def main() -> None:
    medians = {}
    print(f"capidsl plan, fresh process each time, {RUNS} runs")
    print(f"{'recipe':<24}{'median s':>10}   all")
    for recipe, extra in CASES.items():
        times = [seconds(recipe, extra) for _ in range(RUNS)]
        medians[recipe] = statistics.median(times)
        print(f"{recipe:<24}{medians[recipe]:>10.2f}   " + ", ".join(f"{t:.2f}" for t in times))
    m = medians["llama-70b-fsdp.yaml"]
    print(f"70B over 1024 simulated h100: {m:.2f} s, ratio to the {BUDGET_S:.0f} s budget {m / BUDGET_S:.2f}")


if __name__ == "__main__":
    main()
