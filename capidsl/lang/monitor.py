"""Following a run record by record: what a stop rule's conditions read, kept up to date in O(1).

`_State` holds the latest, lowest and highest value of each metric and each `stalls` clause's count
and best; `StopRule.evaluate(history)` replays a history into a fresh one, `StopMonitor` keeps one
across a run, and both go through `_State.add`, so they cannot disagree. The state is a small JSON
value (`StopMonitor.to_json`/`from_json`) whose size does not grow with the run: the executor
checkpoints it instead of the history.
"""

from __future__ import annotations

import math
from typing import Any

from capidsl.lang.errors import LangError
from capidsl.lang.history import Best, Decision, Record
from capidsl.lang.node import node_from_json
from capidsl.lang.stop import Stalls, StopRule, direction_of, walk


class _StallTrack:
    """Early-stopping bookkeeping for one `stalls` clause (Keras: best, wait)."""

    __slots__ = ("best_value", "best", "observed", "since", "last_step")

    def __init__(self, baseline):
        self.best_value = baseline  # None: nothing to beat yet
        self.best: Best | None = None
        self.observed = 0  # observations of the metric so far
        self.since = 0  # observations up to and including the last improvement
        self.last_step = None


class _State:
    """What the conditions read, kept up to date one record at a time (O(1) per record).

    `StopRule.evaluate(history)` replays the history into a fresh state; `StopMonitor` keeps one
    across a run. Both go through `add`, so they cannot disagree.
    """

    def __init__(self, rule: "StopRule | None"):
        self.steps_per_epoch = rule.steps_per_epoch if rule is not None else None
        self.tokens_per_step = rule.tokens_per_step if rule is not None else None
        self.records = 0
        self.step = 0
        self.time_s = 0.0
        self.latest: dict[str, tuple[int, float]] = {}
        self.lowest: dict[str, tuple[int, float]] = {}  # finite values only; first step on ties
        self.highest: dict[str, tuple[int, float]] = {}
        self.stalls = {node: _StallTrack(node.baseline)
                       for node in (walk(rule.expr) if rule is not None else ()) if isinstance(node, Stalls)}

    def add(self, record: Record) -> None:
        self.records += 1
        self.step, self.time_s = record.step, float(record.time_s)
        for name, raw in record.metrics.items():
            value = float(raw)
            self.latest[name] = (record.step, value)
            if math.isfinite(value):
                if name not in self.lowest or value < self.lowest[name][1]:
                    self.lowest[name] = (record.step, value)
                if name not in self.highest or value > self.highest[name][1]:
                    self.highest[name] = (record.step, value)
        for node, track in self.stalls.items():
            if node.metric in record.metrics and (node.unit != "evals" or record.kind == "eval"):
                value = float(record.metrics[node.metric])
                track.observed += 1
                track.last_step = record.step
                if node.improves(value, track.best_value):
                    track.best_value = value
                    track.best = Best(node.metric, record.step, value)
                    track.since = track.observed

    def need(self, what: str) -> int:
        value = self.steps_per_epoch if what == "epochs" else self.tokens_per_step
        if not value:
            per = "steps per epoch" if what == "epochs" else "tokens per step"
            raise LangError(f"judging {what} needs the run's {per}: resolve the rule first",
                            hint="StopRule.resolve(steps_per_epoch, tokens_per_step)")
        return value


class StopMonitor:
    """Follows a run record by record; `observe(record)` gives the same Decision as
    `rule.evaluate(history_so_far)` (tested), without replaying the history each time.

    With `rule=None` it only keeps each metric's latest, lowest and highest value (for `best`).
    Its state is a small JSON value (`to_json`, `from_json`) whose size does not grow with the run:
    that, not the history, is what a checkpoint keeps.
    """

    def __init__(self, rule: StopRule | None):
        self.rule = rule
        self._state = _State(rule)

    @property
    def records(self) -> int:
        return self._state.records

    def add(self, record: Record) -> None:
        self._state.add(record)

    def decide(self) -> Decision:
        if not self._state.records or self.rule is None:
            return Decision(False, "")
        stop, why = self.rule.expr.check(self._state)
        return Decision(True, f"stopped at step {self._state.step}: {why}") if stop else Decision(False, "")

    def observe(self, record: Record) -> Decision:
        self.add(record)
        return self.decide()

    def best(self, metric: str, mode: str | None = None) -> Best | None:
        """See `StopRule.best`."""
        for node, track in self._state.stalls.items():
            if node.metric == metric and (mode is None or mode == node.mode):
                return track.best
        mode = mode or direction_of(metric)
        if mode is None:
            raise LangError(f"cannot tell whether a higher or lower {metric} is better",
                            hint=f"pass mode='min' or 'max' (stop.directions: {{{metric}: min}})")
        got = (self._state.lowest if mode == "min" else self._state.highest).get(metric)
        return None if got is None else Best(metric, *got)

    # ---- the state a checkpoint keeps -------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Everything the conditions read, exactly (floats as their repr; nan/inf as strings)."""
        st = self._state
        stalls = [{"clause": node.to_json(), "best_value": _num(t.best_value),
                   "best": None if t.best is None else [t.best.step, _num(t.best.value)],
                   "observed": t.observed, "since": t.since, "last_step": t.last_step}
                  for node, t in st.stalls.items()]
        return {"records": st.records, "step": st.step, "time_s": _num(st.time_s),
                "latest": _pairs(st.latest), "lowest": _pairs(st.lowest), "highest": _pairs(st.highest),
                "stalls": stalls}

    @classmethod
    def from_json(cls, rule: StopRule | None, data: dict[str, Any]) -> tuple["StopMonitor", list[str]]:
        """A monitor for `rule` that continues the saved state, and what could not be carried over.

        The rule may have changed since the state was saved (the stop rule may change on resume):
        metric values carry over whatever the rule. A `stalls` clause's count and best do not depend
        on its patience, so they carry over from any saved clause on the same metric, unit, `by`,
        `from` and mode (exactly what a replay of the history would give); a clause with none starts
        counting at the resume, which the notes say.
        """
        monitor = cls(rule)
        st = monitor._state
        st.records, st.step, st.time_s = int(data["records"]), int(data["step"]), _unnum(data["time_s"])
        st.latest, st.lowest, st.highest = (_unpairs(data[k]) for k in ("latest", "lowest", "highest"))
        saved = {_track_key(node_from_json(t["clause"])): t for t in data.get("stalls", ())}
        notes = []
        for node, track in st.stalls.items():
            t = saved.get(_track_key(node))
            if t is None:
                if st.records:
                    notes.append(f"`{node}` is new: its patience and its best value count from this resume")
                continue
            track.best_value = _unnum(t["best_value"])
            track.best = None if t["best"] is None else Best(node.metric, int(t["best"][0]), _unnum(t["best"][1]))
            track.observed, track.since, track.last_step = int(t["observed"]), int(t["since"]), t["last_step"]
        return monitor, notes


def _track_key(node: Stalls) -> tuple:
    """What a `stalls` clause's bookkeeping depends on (everything but its patience)."""
    return (node.metric, node.unit, node.min_delta, node.baseline, node.mode)


def _num(v: float | None) -> Any:
    if v is None or isinstance(v, int) and not isinstance(v, bool):
        return v
    v = float(v)
    return v if math.isfinite(v) else repr(v)  # 'nan', 'inf', '-inf'


def _unnum(v: Any) -> float | None:
    return None if v is None else float(v)


def _pairs(table: dict[str, tuple[int, float]]) -> dict[str, list]:
    return {k: [step, _num(value)] for k, (step, value) in table.items()}


def _unpairs(data: dict[str, list]) -> dict[str, tuple[int, float]]:
    return {k: (int(step), _unnum(value)) for k, (step, value) in data.items()}
