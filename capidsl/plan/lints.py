"""Lints: settings that are legal but almost certainly not what the author meant.

Each lint names the recipe key it is about and says what will happen. Errors (plans that cannot
run) are raised by the stage that finds them; these are the warnings.
"""

from __future__ import annotations

from capidsl.lang.stop import Stalls, walk
from capidsl.plan.plan import CadencePlan, Lint, StopPlan


def lint(cadence: CadencePlan, stop: StopPlan, keep_best_metric: str | None, where=lambda key: None) -> list[Lint]:
    out: list[Lint] = []
    total, every = cadence.total_steps, cadence.eval_every
    evals = total // every if every else 0

    def warn(code: str, key: str, message: str):
        loc = where(key)
        out.append(Lint("warning", code, message, str(loc) if loc else None))

    if cadence.checkpoint_every and cadence.checkpoint_every > total:
        warn("checkpoint-never", "checkpoint.every",
             f"checkpoints every {cadence.checkpoint_every} steps never trigger in a {total}-step run "
             "(only the final checkpoint is written)")
    if cadence.log_every > total:
        warn("log-never", "logging.every", f"logging every {cadence.log_every} steps never triggers in a {total}-step run")
    rule = stop.rule
    if rule is not None:
        reads_eval = [m for m in rule.metrics() if m.startswith("val_")]
        if reads_eval and evals == 0:
            warn("eval-never", "eval.every",
                 f"the stop rule reads {', '.join(reads_eval)} but no evaluation happens in {total} steps")
        for node in walk(rule.expr):
            if not isinstance(node, Stalls):
                continue
            if node.unit == "evals" and node.metric.startswith("val_") and node.patience >= evals:
                warn("patience-too-long", "stop.when",
                     f"`{node}` needs more than {node.patience} evaluations but the run has only {evals} "
                     f"(every {every} of {total} steps): it can never fire")
            if node.unit == "steps" and every and node.metric.startswith("val_") and node.patience < every:
                warn("eval-too-rare", "eval.every",
                     f"`{node}` waits {node.patience} steps but {node.metric} is measured only every {every} steps")
    if keep_best_metric and keep_best_metric.startswith("val_") and evals == 0:
        warn("keep-best-never", "checkpoint.keep_best",
             f"checkpoint.keep_best ranks by {keep_best_metric}, which is never evaluated in {total} steps")
    return out
