"""What the stop rule costs per record as a run grows: the loop's Judge against replaying the history.

The loop records one log line every `logging.every` steps and one eval line every `eval.every`;
each record is judged by the stop rule, and each checkpoint stores what the judging needs. This
feeds N records (nine log lines to one eval, as the shipped recipes log and evaluate) to:
- `Judge.observe` — what the loop does now (two StopMonitors, O(1) per record);
- `rule.evaluate(history)` — what it did before (a replay of the whole history at every record);
and times the last 500 records at N = 1,000 and N = 100,000, alternating the sizes, 5 rounds after
one round of warm-up.
It also prints the size of what a checkpoint keeps: the judge's JSON against the history's.
Headline: per-record cost at 100k over 1k for the Judge (goal ≤ 1.5).

Run: .venv/bin/python benchmarks/stop_rule_cost.py
"""

from __future__ import annotations

import json
import statistics
import time

from capidsl.exec.judge import Judge
from capidsl.lang import parse_stop_rule
from capidsl.lang.ast import Record
from capidsl.plan.plan import StopPlan

RULE = "val_loss stalls for 5 evals by 0.001 or not finite(loss) or val_loss > 1.5 * best(val_loss)"
SIZES = (1_000, 100_000)
TIMED = 500
ROUNDS = 5


class _Plan:  # the only field of a Plan the Judge reads
    def __init__(self, rule):
        self.stop = StopPlan(rule=rule, restore_best=True, restore_metric="val_loss", restore_mode="min")


def records(n: int) -> list[Record]:
    """A plateau with noise: the same mix of improvements and stalls at any length."""
    out = []
    for i in range(n):
        step, noise = (i + 1) * 10, ((i * 7919) % 101) / 1000
        if i % 10 == 9:
            out.append(Record(step, step * 0.1, "eval", {"val_loss": 1.0 + noise, "val_perplexity": 2.7 + noise}))
        else:
            out.append(Record(step, step * 0.1, "log", {"loss": 1.0 + noise, "lr": 1e-3, "grad_norm": 1.0}))
    return out


def judge_cost(plan, history: list[Record]) -> tuple[float, int]:
    """Seconds per record over the last TIMED records, and the checkpoint JSON size at the end."""
    judge = Judge(plan)
    for r in history[:-TIMED]:
        judge.observe(r)
    t0 = time.perf_counter()
    for r in history[-TIMED:]:
        judge.observe(r)
        judge.best()
    per = (time.perf_counter() - t0) / TIMED
    return per, len(json.dumps(judge.to_json()))


def replay_cost(rule, history: list[Record], timed: int = 5) -> tuple[float, int]:
    """The same for the old way (a full replay per record; fewer records timed, it is slow)."""
    t0 = time.perf_counter()
    for k in range(len(history) - timed, len(history)):
        rule.evaluate(history[: k + 1])
    per = (time.perf_counter() - t0) / timed
    size = len(json.dumps([{"step": r.step, "time_s": r.time_s, "kind": r.kind, "metrics": dict(r.metrics)}
                           for r in history]))
    return per, size


def main() -> None:
    rule = parse_stop_rule(RULE).resolve(100, 1)
    plan = _Plan(rule)
    histories = {n: records(n) for n in SIZES}
    judge = {n: [] for n in SIZES}
    replay = {n: [] for n in SIZES}
    sizes = {}
    for n in SIZES:  # warm-up: first calls pay for imports, allocations and caches
        judge_cost(plan, histories[n])
    for _ in range(ROUNDS):
        for n in SIZES:
            per, size = judge_cost(plan, histories[n])
            judge[n].append(per)
            rp, rsize = replay_cost(rule, histories[n])
            replay[n].append(rp)
            sizes[n] = (size, rsize)
    print(f"rule: {RULE}")
    print(f"{'records':>9}  {'Judge µs/record':>16}  {'replay ms/record':>17}  {'judge JSON B':>13}  {'history JSON B':>15}")
    for n in SIZES:
        print(f"{n:>9,}  {statistics.median(judge[n]) * 1e6:>16.2f}  {statistics.median(replay[n]) * 1e3:>17.2f}  "
              f"{sizes[n][0]:>13,}  {sizes[n][1]:>15,}")
    ratio = statistics.median(judge[SIZES[1]]) / statistics.median(judge[SIZES[0]])
    print(f"Judge per-record cost at {SIZES[1]:,} over {SIZES[0]:,} records: {ratio:.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
