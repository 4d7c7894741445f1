"""Stop rules: boolean combinations of conditions on metrics and progress, evaluated on a history.

Early stopping (`val_loss stalls for 5 evals by 1e-3`) follows Keras' and Lightning's
EarlyStopping: patience counts evaluations (or steps, when written so); an evaluation improves
when it beats the best so far by more than `by` (min_delta); with `from` (a baseline) the best
starts at the baseline, so the metric must beat it to count as improving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from capidsl.lang.durations import Duration, Span
from capidsl.lang.history import Best, Decision, Record
from capidsl.lang.node import Node, node_from_json
from capidsl.lang.numbers import Number, format_number, normal

if TYPE_CHECKING:
    from capidsl.lang.monitor import StopMonitor, _State

_n = format_number

# Whether lower or higher is better, for metrics whose name says so.
BUILTIN_DIRECTIONS: dict[str, str] = {
    "loss": "min", "val_loss": "min", "train_loss": "min",
    "perplexity": "min", "val_perplexity": "min",
    "error": "min", "val_error": "min",
    "accuracy": "max", "val_accuracy": "max", "train_accuracy": "max",
}

COMPARISONS = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
PROGRESS = ("steps", "epochs", "tokens", "time")
PATIENCE_UNITS = ("evals", "steps", "epochs")


def direction_of(metric: str, directions: Mapping[str, str] | None = None) -> str | None:
    """"min" or "max" for a metric: the given mapping first, then the built-in table."""
    if directions and metric in directions:
        return directions[metric]
    return BUILTIN_DIRECTIONS.get(metric)


def _v(x: float) -> str:
    return f"{x:.4g}"


# ---- operands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Const(Node):
    value: Number
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "value", normal(self.value))

    def __str__(self) -> str:
        return _n(self.value)

    def read(self, ctx: "_State"):
        return self.value, None


@dataclass(frozen=True)
class Latest(Node):
    """The most recent value of a metric."""

    metric: str
    span: Span | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return self.metric

    def read(self, ctx: "_State"):
        got = ctx.latest.get(self.metric)
        if got is None:
            return None, f"{self.metric} not measured yet"
        return got[1], f"{self.metric} = {_v(got[1])} at step {got[0]}"


@dataclass(frozen=True)
class BestOf(Node):
    """`scale` times the best value of a metric so far (min or max by `mode`)."""

    metric: str
    mode: str
    scale: Number = 1
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "scale", normal(self.scale))
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode is 'min' or 'max', not {self.mode!r}")

    def __str__(self) -> str:
        core = f"best({self.metric})" if BUILTIN_DIRECTIONS.get(self.metric) == self.mode else f"{self.mode}({self.metric})"
        return core if self.scale == 1 else f"{_n(self.scale)} * {core}"

    def read(self, ctx: "_State"):
        got = (ctx.lowest if self.mode == "min" else ctx.highest).get(self.metric)
        if got is None:
            return None, f"no finite {self.metric} yet"
        step, value = got
        return self.scale * value, f"best {self.metric} {_v(value)} at step {step}"


Operand = Const | Latest | BestOf


# ---- conditions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare(Node):
    """`left op right`, on the latest metric values."""

    left: Operand
    op: str
    right: Operand
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.op not in COMPARISONS:
            raise ValueError(f"unknown comparison {self.op!r}")

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"

    def check(self, ctx: "_State") -> tuple[bool, str]:
        a, why_a = self.left.read(ctx)
        b, why_b = self.right.read(ctx)
        facts = ", ".join(w for w in (why_a, why_b) if w)
        if a is None or b is None:
            return False, f"{self} ({facts})"
        return COMPARISONS[self.op](a, b), f"{self} ({facts})"


@dataclass(frozen=True)
class Progress(Node):
    """How far the run has got: steps, epochs, tokens, or wall-clock `time` (in seconds)."""

    quantity: str
    op: str
    value: Number
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "value", normal(self.value))
        if self.quantity not in PROGRESS or self.op not in COMPARISONS:
            raise ValueError(f"bad progress condition {self.quantity} {self.op}")

    def __str__(self) -> str:
        shown = str(Duration(self.value, "seconds")) if self.quantity == "time" else _n(self.value)
        return f"{self.quantity} {self.op} {shown}"

    def check(self, ctx: "_State") -> tuple[bool, str]:
        if not ctx.records:
            return False, str(self)
        if self.quantity == "time":
            now, fact = ctx.time_s, f"{_v(ctx.time_s)} s elapsed"
        elif self.quantity == "steps":
            now, fact = ctx.step, f"step {ctx.step}"
        elif self.quantity == "epochs":
            now = Fraction(ctx.step, ctx.need("epochs"))
            fact = f"epoch {_v(float(now))} at step {ctx.step}"
        else:
            now = ctx.step * ctx.need("tokens")
            fact = f"{now} tokens at step {ctx.step}"
        value = Fraction(repr(self.value)) if isinstance(self.value, float) else self.value
        return COMPARISONS[self.op](now, value), f"{self} ({fact})"


@dataclass(frozen=True)
class Stalls(Node):
    """No improvement of `metric` by more than `min_delta` for `patience` evals (or steps, epochs)."""

    metric: str
    patience: int
    unit: str = "evals"
    min_delta: Number = 0
    baseline: Number | None = None
    mode: str = "min"
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "min_delta", normal(self.min_delta))
        if self.baseline is not None:
            object.__setattr__(self, "baseline", normal(self.baseline))
        if self.unit not in PATIENCE_UNITS:
            raise ValueError(f"patience is counted in {PATIENCE_UNITS}, not {self.unit!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode is 'min' or 'max', not {self.mode!r}")

    def __str__(self) -> str:
        unit = self.unit[:-1] if self.patience == 1 else self.unit
        out = f"{self.metric} stalls for {_n(self.patience)} {unit}"
        if self.min_delta:
            out += f" by {_n(self.min_delta)}"
        if self.baseline is not None:
            out += f" from {_n(self.baseline)}"
        if BUILTIN_DIRECTIONS.get(self.metric) != self.mode:
            out += f" mode {self.mode}"
        return out

    def improves(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        if best is None:
            return True
        # Keras' form (current ∓ min_delta against best), not best ± min_delta: the two differ by a
        # rounding at the boundary (0.01 + 0.25 vs 0.26 - 0.25), and Keras is the reference.
        if self.mode == "min":
            return value + self.min_delta < best
        return value - self.min_delta > best

    def check(self, ctx: "_State") -> tuple[bool, str]:
        track = ctx.stalls[self]
        best = track.best
        if not track.observed:
            return False, f"{self.metric} not measured yet"
        if self.unit == "evals":
            stalled = track.observed - track.since >= self.patience
        else:  # measured from the last improvement, or from the start of training
            per = 1 if self.unit == "steps" else ctx.need("epochs")
            ref = best.step if best is not None else 0
            stalled = track.last_step - ref >= self.patience * per
        unit = self.unit[:-1] if self.patience == 1 else self.unit
        if best is not None:
            detail = f"best {_v(best.value)} at step {best.step}"
        elif self.baseline is not None:
            detail = f"never beat the baseline {_n(self.baseline)}"
        else:
            detail = "no finite value yet"
        verb = "stalled" if stalled else "has not stalled"
        return stalled, f"{self.metric} {verb} for {_n(self.patience)} {unit} ({detail})"


@dataclass(frozen=True)
class Finite(Node):
    """The latest value of `metric` is finite (neither nan nor ±inf)."""

    metric: str
    span: Span | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"finite({self.metric})"

    def check(self, ctx: "_State") -> tuple[bool, str]:
        got = ctx.latest.get(self.metric)
        if got is None:
            return True, f"{self.metric} not measured yet"
        ok = math.isfinite(got[1])
        return ok, f"{self.metric} is {'finite' if ok else 'not finite'} ({got[1]} at step {got[0]})"


@dataclass(frozen=True)
class Not(Node):
    term: "Condition"
    span: Span | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        inner = str(self.term)
        return f"not ({inner})" if isinstance(self.term, (AnyOf, AllOf)) else f"not {inner}"

    def check(self, ctx: "_State") -> tuple[bool, str]:
        value, why = self.term.check(ctx)
        if isinstance(self.term, Finite):
            return not value, why
        return not value, f"not ({why})"


@dataclass(frozen=True)
class _Junction(Node):
    terms: tuple["Condition", ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        flat: list = []
        for t in self.terms:  # (a or b) or c  is  a or b or c
            flat.extend(t.terms if type(t) is type(self) else (t,))
        if len(flat) < 2:
            raise ValueError(f"{type(self).__name__} needs at least two terms")
        object.__setattr__(self, "terms", tuple(flat))


@dataclass(frozen=True)
class AnyOf(_Junction):
    """`a or b or ...`: stops when any term holds; the reason is the first that does."""

    def __str__(self) -> str:
        return " or ".join(str(t) for t in self.terms)

    def check(self, ctx: "_State") -> tuple[bool, str]:
        whys = []
        for t in self.terms:
            value, why = t.check(ctx)
            if value:
                return True, why
            whys.append(why)
        return False, " and ".join(whys)


@dataclass(frozen=True)
class AllOf(_Junction):
    """`a and b and ...`: holds when every term does; the reason names them all."""

    def __str__(self) -> str:
        return " and ".join(f"({t})" if isinstance(t, AnyOf) else str(t) for t in self.terms)

    def check(self, ctx: "_State") -> tuple[bool, str]:
        whys = []
        for t in self.terms:
            value, why = t.check(ctx)
            if not value:
                return False, why
            whys.append(why)
        return True, " and ".join(whys)


Condition = Compare | Progress | Stalls | Finite | Not | AnyOf | AllOf


def walk(cond) -> list:
    """Every node of a condition tree, parents first."""
    out = [cond]
    for child in (getattr(cond, "terms", None) or ()):
        out.extend(walk(child))
    if isinstance(cond, Not):
        out.extend(walk(cond.term))
    if isinstance(cond, Compare):
        out.extend([cond.left, cond.right])
    return out


class StopRule:
    """A compiled stop rule: a condition tree plus the run's step conversions (after `resolve`).

    Immutable, comparable and hashable like the frozen dataclasses of the AST, but deliberately
    not one: the plan serialises it through `to_json`/`from_json` as one value.
    """

    __slots__ = ("expr", "steps_per_epoch", "tokens_per_step", "source")

    def __init__(self, expr: Condition, steps_per_epoch: int | None = None,
                 tokens_per_step: int | None = None, source: str | None = None):
        for name, value in (("expr", expr), ("steps_per_epoch", steps_per_epoch),
                            ("tokens_per_step", tokens_per_step), ("source", source)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("a StopRule is immutable")

    def _key(self):
        return (self.expr, self.steps_per_epoch, self.tokens_per_step)

    def __eq__(self, other) -> bool:
        return isinstance(other, StopRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"StopRule({str(self)!r})"

    def __str__(self) -> str:
        return str(self.expr)

    def __reduce__(self):
        return (StopRule, (self.expr, self.steps_per_epoch, self.tokens_per_step))

    def resolve(self, steps_per_epoch: int | None = None, tokens_per_step: int | None = None) -> "StopRule":
        """The same rule, able to judge `epochs`/`tokens` conditions on this run."""
        return StopRule(self.expr, steps_per_epoch, tokens_per_step, self.source)

    def metrics(self) -> tuple[str, ...]:
        """Every metric the rule reads, in order of first mention."""
        seen: list[str] = []
        for node in walk(self.expr):
            name = getattr(node, "metric", None)
            if name and name not in seen:
                seen.append(name)
        return tuple(seen)

    def evaluate(self, history: Sequence[Record]) -> Decision:
        """Stop now? Judged at the last record of `history` (the whole run so far, in order)."""
        monitor = self.monitor()
        decision = Decision(False, "")
        for record in history:
            monitor.add(record)
        if history:
            decision = monitor.decide()
        return decision

    def monitor(self) -> "StopMonitor":
        """An incremental evaluator for a live run: O(1) per record instead of O(history)."""
        from capidsl.lang.monitor import StopMonitor  # the monitor reads this module's nodes

        return StopMonitor(self)

    def best(self, history: Sequence[Record], metric: str, mode: str | None = None) -> Best | None:
        """The best `metric` so far, as early stopping judges it when the rule has a `stalls`
        clause on it (min_delta and baseline included); otherwise its plain min or max."""
        monitor = self.monitor()
        for record in history:
            monitor.add(record)
        return monitor.best(metric, mode)

    def to_json(self) -> dict[str, Any]:
        return {"type": "StopRule", "expr": self.expr.to_json(),
                "steps_per_epoch": self.steps_per_epoch, "tokens_per_step": self.tokens_per_step}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StopRule":
        if not isinstance(data, dict) or data.get("type") != "StopRule":
            raise ValueError(f"not the JSON of a StopRule: {data!r:.200}")
        return cls(node_from_json(data["expr"]), data.get("steps_per_epoch"), data.get("tokens_per_step"))
