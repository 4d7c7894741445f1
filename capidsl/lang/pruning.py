"""Pruning schedules: how the share of zeroed weights grows, e.g.
`from 0% to 80% between 1k and 5k steps, every 100 steps`.

The sparsity follows Zhu & Gupta 2017 ("To prune, or not to prune", eq. 1) by default:
s(t) = s_f + (s_i − s_f)·(1 − (t − t₀)/(t₁ − t₀))³, fast at first and gently at the end; `linear`
asks for a straight line instead. The mask is recomputed at the *events*: t₀, t₀ + Δ, t₀ + 2Δ, …
before t₁, and t₁ itself (so the final sparsity is always reached at t₁, exactly). Sparsity values
are kept as written (percent) and evaluated with exact rationals, so the number of weights a
group of N loses at an event, round(s·N), is the same on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from capidsl.lang.durations import Cadence, Duration, Span
from capidsl.lang.errors import LangError
from capidsl.lang.node import Node
from capidsl.lang.numbers import Number, exact, format_number, normal

CURVES = ("cubic", "linear")
_n = format_number


def pruned_count(sparsity: Fraction, n: int) -> int:
    """How many of `n` weights a target sparsity prunes: round(sparsity·n), halves up (exact)."""
    return int((Fraction(sparsity) * n + Fraction(1, 2)).__floor__())


@dataclass(frozen=True)
class ResolvedPruning(Node):
    """A pruning schedule on concrete steps (what the plan stores and the executor compiles).

    `initial` and `final` are percentages as written; events are `start_step + k·every` below
    `end_step`, and `end_step`; an event at step 0 (before any update) is dropped.
    """

    text: str
    initial: Number
    final: Number
    start_step: int
    end_step: int
    every: int
    curve: str

    def events(self) -> tuple[int, ...]:
        """The optimizer steps (counted after the update) at which the mask is recomputed."""
        steps = list(range(self.start_step, self.end_step, self.every)) + [self.end_step]
        return tuple(s for s in steps if s >= 1)

    def sparsity_at(self, step: int) -> Fraction:
        """The target share of pruned weights (0…1) at `step`: 0 before the start, final after the end."""
        if step < self.start_step:
            return Fraction(0)
        si, sf = exact(self.initial) / 100, exact(self.final) / 100
        if step >= self.end_step:
            return sf
        progress = Fraction(step - self.start_step, self.end_step - self.start_step)
        if self.curve == "linear":
            return si + (sf - si) * progress
        return sf + (si - sf) * (1 - progress) ** 3

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PruningSchedule(Node):
    """`from INITIAL% to FINAL% between START and END, every CADENCE[, linear]`.

    `start` may be 0 (the beginning of training); both points are durations (steps, epochs,
    tokens, or a share of the run). `value_spans` locate initial, final, start, end and the cadence.
    """

    initial: Number
    final: Number
    start: Duration
    end: Duration
    every: Cadence
    curve: str = "cubic"
    span: Span | None = field(default=None, compare=False, repr=False)
    source: str | None = field(default=None, compare=False, repr=False)
    value_spans: tuple[Span, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "initial", normal(self.initial))
        object.__setattr__(self, "final", normal(self.final))
        self._check()

    # -- printing and positions -----------------------------------------------------------------

    def __str__(self) -> str:
        if self.start.unit == self.end.unit and self.start.unit != "percent":
            points = f"{_n(self.start.value)} and {self.end}"
        else:
            points = f"{self.start} and {self.end}"
        curve = "" if self.curve == "cubic" else f", {self.curve}"
        return f"from {_n(self.initial)}% to {_n(self.final)}% between {points}, {self.every}{curve}"

    def _error(self, message: str, part: int, hint: str | None = None) -> LangError:
        """A LangError at one part: 0 initial, 1 final, 2 start, 3 end, 4 cadence."""
        if self.source is not None and self.value_spans:
            return LangError(message, self.source, self.value_spans[part][0] + 1, hint=hint)
        return LangError(message, str(self), 1, hint=hint)

    # -- checks that need no run ------------------------------------------------------------------

    def _check(self) -> None:
        if self.curve not in CURVES:
            raise self._error(f"the sparsity curve is cubic or linear, not {self.curve!r}", 4)
        if not 0 <= self.initial < 100:
            raise self._error(f"a sparsity is at least 0% and below 100%, not {_n(self.initial)}%", 0)
        if not 0 < self.final < 100:
            raise self._error(f"the final sparsity is above 0% and below 100%, not {_n(self.final)}%", 1,
                              hint="100% would remove every weight")
        if self.final < self.initial:
            raise self._error(f"pruning only grows: {_n(self.final)}% is below the initial {_n(self.initial)}%", 1)
        for part, point in ((2, self.start), (3, self.end)):
            if point.is_wall_clock:
                raise self._error(f"pruning is counted in steps, epochs, tokens or % of the run, not wall-clock "
                                  f"time ({point})", part)
            if point.value < 0 or (part == 3 and point.value == 0):
                raise self._error(f"{'the end' if part == 3 else 'a start'} of pruning must be "
                                  f"{'after step 0' if part == 3 else 'at or after step 0'} ({point})", part)
            if point.unit in ("steps", "tokens") and not isinstance(point.value, int):
                raise self._error(f"{point} is not a whole number of {point.unit}", part)
            if point.unit == "percent" and point.value > 100:
                raise self._error(f"a share of the run is at most 100%, not {point}", part)
        if self.start.unit == self.end.unit and not exact(self.start.value) < exact(self.end.value):
            raise self._error(f"pruning must end after it starts ({self.start} to {self.end})", 3)
        if self.every.every.is_wall_clock:
            raise self._error(f"pruning happens every so many steps, epochs or tokens, not {self.every.every}", 4)

    # -- resolution against a run -------------------------------------------------------------------

    def resolve(self, total_steps: int, steps_per_epoch: int | None = None,
                tokens_per_step: int | None = None) -> ResolvedPruning:
        """Concrete steps for a run of `total_steps`; a LangError when a point is not a whole step
        or pruning would end after training does."""

        def steps_of(d: Duration, part: int) -> int:
            if d.value == 0:
                return 0
            try:
                return d._to_steps(steps_per_epoch, tokens_per_step, None, total_steps)
            except LangError as err:
                raise self._error(err.message, part, hint=err.hint) from None

        start, end = steps_of(self.start, 2), steps_of(self.end, 3)
        try:
            every = self.every.to_steps(steps_per_epoch, tokens_per_step)
        except LangError as err:
            raise self._error(err.message, 4, hint=err.hint) from None
        if end <= start:
            raise self._error(f"pruning must end after it starts: {self.start} is step {start}, "
                              f"{self.end} is step {end}", 3)
        if end > total_steps:
            raise self._error(f"pruning would end at step {end}, but training has only {total_steps} steps", 3,
                              hint="end pruning earlier, or lengthen training")
        return ResolvedPruning(str(self), self.initial, self.final, start, end, every, self.curve)
