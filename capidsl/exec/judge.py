"""The stop rule and the best evaluation, followed record by record: O(1) per record, O(1) to save.

Two `StopMonitor`s (capidsl/lang/monitor.py): one sees every record and decides whether to stop; the
other sees evaluations only and answers "which evaluation was best" exactly as the rule judges it
(`stalls` clauses count min_delta and a baseline), or by plain min/max when the plan has no rule.
A checkpoint stores both monitors' state, not the history, so its size and each record's cost stay
the same however long the run, and a resumed run decides at the same step as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from capidsl.lang.ast import Record
from capidsl.lang.history import Best, Decision
from capidsl.lang.monitor import StopMonitor
from capidsl.plan.plan import Plan


def best_metric(plan: Plan) -> tuple[str | None, str]:
    """The metric "best" means for restore_best and for keeping the best checkpoint, and its mode."""
    if plan.stop.restore_best:
        return plan.stop.restore_metric or "val_loss", plan.stop.restore_mode
    return None, "min"


class Judge:
    """Whether to stop, and the best evaluation so far, for one run."""

    def __init__(self, plan: Plan, *, stop: StopMonitor | None = None, evals: StopMonitor | None = None):
        self.rule = plan.stop.rule
        self.metric, self.mode = best_metric(plan)
        self._stop = stop or StopMonitor(self.rule)
        self._evals = evals or StopMonitor(self.rule)

    @property
    def records(self) -> int:
        return self._stop.records

    def observe(self, record: Record) -> Decision:
        """Take one log or eval record; stop now?"""
        self._stop.add(record)
        if record.kind == "eval":
            self._evals.add(record)
        return self.decide()

    def decide(self) -> Decision:
        return self._stop.decide() if self.rule is not None else Decision(False, "")

    def best(self, metric: str | None = None, mode: str | None = None) -> Best | None:
        """The best evaluation of `metric` (default: the plan's best metric) so far."""
        metric = metric or self.metric
        return self._evals.best(metric, mode or self.mode) if metric else None

    def summary_best(self) -> Best | None:
        """The best evaluation summary.json reports: the plan's best metric, else val_loss when a
        stop rule ran on evaluations."""
        if self.metric:
            return self.best()
        if self.rule is not None and self._evals.records:
            return self.best("val_loss", "min")
        return None

    def to_json(self) -> dict[str, Any]:
        return {"stop": self._stop.to_json(), "evals": self._evals.to_json()}

    @classmethod
    def from_json(cls, plan: Plan, data: dict[str, Any]) -> tuple["Judge", list[str]]:
        """The judge a checkpoint saved, under this plan's (possibly changed) rule; notes on what changed."""
        stop, notes = StopMonitor.from_json(plan.stop.rule, data["stop"])
        evals, eval_notes = StopMonitor.from_json(plan.stop.rule, data["evals"])
        return cls(plan, stop=stop, evals=evals), list(dict.fromkeys(notes + eval_notes))

    @classmethod
    def replay(cls, plan: Plan, history: list[Record]) -> "Judge":
        """A judge that has seen `history` (checkpoints written before the monitor's state was saved)."""
        judge = cls(plan)
        for record in history:
            judge.observe(record)
        return judge
