"""Durations (`500 steps`, `3 epochs`, `2.5M tokens`, `90m`) and cadences (`every 1000 steps`).

Epochs and tokens become steps only once the plan knows the data and the batch; `to_steps`
does that exactly, and refuses (naming the two nearest whole step counts) rather than round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from capidsl.lang.errors import LangError
from capidsl.lang.node import Node
from capidsl.lang.numbers import Number, exact, format_number, normal

UNITS = ("steps", "epochs", "tokens", "seconds", "percent")  # percent: of the run, in schedules only

# Every spelling the grammar accepts for a unit, to the unit and the factor into it.
UNIT_WORDS: dict[str, tuple[str, int]] = {
    "step": ("steps", 1), "steps": ("steps", 1),
    "epoch": ("epochs", 1), "epochs": ("epochs", 1),
    "token": ("tokens", 1), "tokens": ("tokens", 1),
    "s": ("seconds", 1), "sec": ("seconds", 1), "second": ("seconds", 1), "seconds": ("seconds", 1),
    "m": ("seconds", 60), "min": ("seconds", 60), "mins": ("seconds", 60), "minute": ("seconds", 60), "minutes": ("seconds", 60),
    "h": ("seconds", 3600), "hour": ("seconds", 3600), "hours": ("seconds", 3600),
}

Span = tuple[int, int]  # [start, end) character offsets in the parsed text


def _singular(unit: str) -> str:
    return unit[:-1]


@dataclass(frozen=True)
class Duration(Node):
    """An amount of training: `value` in `unit` (steps | epochs | tokens | seconds | percent).

    `percent` (written `10%`) is a share of the whole run; the grammar allows it only inside
    schedules, where the run length is known when the schedule is resolved."""

    value: Number
    unit: str
    span: Span | None = field(default=None, compare=False, repr=False)
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unknown duration unit {self.unit!r}; expected one of {UNITS}")
        object.__setattr__(self, "value", normal(self.value))

    @property
    def is_wall_clock(self) -> bool:
        return self.unit == "seconds"

    def __str__(self) -> str:
        if self.unit == "percent":
            return f"{format_number(self.value)}%"
        if self.unit == "seconds":
            for suffix, scale in (("h", 3600), ("m", 60)):
                q = exact(self.value) / scale
                if q.denominator == 1 and q != 0:
                    return f"{format_number(int(q))}{suffix}"
            return f"{format_number(self.value)}s"
        unit = _singular(self.unit) if self.value == 1 else self.unit
        return f"{format_number(self.value)} {unit}"

    def to_steps(self, steps_per_epoch: int | None = None, tokens_per_step: int | None = None,
                 total_steps: int | None = None) -> int:
        """The exact number of optimizer steps, or a LangError naming the nearest whole counts."""
        return self._to_steps(steps_per_epoch, tokens_per_step, self.source, total_steps)

    def _to_steps(self, steps_per_epoch, tokens_per_step, source: str | None, total_steps=None) -> int:
        if source is None:  # built in code or loaded from JSON: point at the canonical text
            text, column = str(self), 1
        else:
            text, column = source, (self.span[0] + 1 if self.span else None)

        def fail(message, hint=None):
            return LangError(message, text, column, hint=hint)

        v = exact(self.value)
        if self.unit == "steps":
            steps = v
            what = None
        elif self.unit == "epochs":
            if not steps_per_epoch:
                raise fail(f"{self} cannot be turned into steps without the number of steps per epoch")
            steps = v * steps_per_epoch
            what = f"at {steps_per_epoch} steps per epoch"
        elif self.unit == "tokens":
            if not tokens_per_step:
                raise fail(f"{self} cannot be turned into steps without the number of tokens per step")
            steps = v / tokens_per_step
            what = f"at {tokens_per_step} tokens per step"
        elif self.unit == "percent":
            if not total_steps:
                raise fail(f"{self} of what? A share of the run needs the run's length in steps")
            steps = v * total_steps / 100
            what = f"of a {total_steps}-step run"
        else:
            raise fail(f"{self} is wall-clock time, which has no fixed number of steps",
                       hint="use steps, epochs or tokens here")
        if steps.denominator != 1:
            lo, hi = steps.numerator // steps.denominator, -(-steps.numerator // steps.denominator)
            shown = f"{float(steps):.6g}"
            raise fail(
                f"{self} is {shown} steps {what}, not a whole number of steps",
                hint=f"write {lo} steps or {hi} steps (no silent rounding)",
            )
        if steps <= 0:
            raise fail(f"{self} is {steps} steps; a duration must be at least one step")
        return int(steps)



@dataclass(frozen=True)
class Cadence(Node):
    """How often something recurs: every `every`."""

    every: Duration
    span: Span | None = field(default=None, compare=False, repr=False)
    source: str | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"every {self.every}"

    def to_steps(self, steps_per_epoch: int | None = None, tokens_per_step: int | None = None) -> int:
        """The period in optimizer steps (exact, or a LangError)."""
        return self.every._to_steps(steps_per_epoch, tokens_per_step, self.source)

