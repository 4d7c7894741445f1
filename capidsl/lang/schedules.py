"""Learning-rate schedules: pieces in sequence, checked when built, resolved against a run.

`Schedule` is what the text says (lengths in steps, epochs, tokens or `rest`); `resolve()` turns
it into a `ResolvedSchedule` of concrete step boundaries, which the plan stores and
`capidsl.exec.schedule.to_optax` compiles. Joins written `then` must be continuous (the next
piece starts at the value the previous one ended at); `then jump to` allows a deliberate jump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from capidsl.lang.durations import Duration, Span
from capidsl.lang.errors import LangError
from capidsl.lang.node import Node
from capidsl.lang.numbers import Number, format_number, normal

_n = format_number


@dataclass(frozen=True)
class Rest(Node):
    """Until the end of training."""

    span: Span | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return "rest"


Length = Duration | Rest


@dataclass(frozen=True)
class _Ramp(Node):
    """A piece going from `start` to `end` over `length`."""

    start: Number
    end: Number
    length: Length
    span: Span | None = field(default=None, compare=False, repr=False)
    value_spans: tuple[Span, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "start", normal(self.start))
        object.__setattr__(self, "end", normal(self.end))

    @property
    def values(self) -> tuple[Number, ...]:
        return (self.start, self.end)

    @property
    def start_value(self) -> Number:
        return self.start

    @property
    def end_value(self) -> Number | None:
        return self.end

    def __str__(self) -> str:
        return f"{self.name}({_n(self.start)} -> {_n(self.end)}, {self.length})"


@dataclass(frozen=True)
class Linear(_Ramp):
    """Straight line from start to end."""

    name = "linear"


@dataclass(frozen=True)
class Cosine(_Ramp):
    """Half a cosine from start to end: end + (start - end) * (1 + cos(pi * t / T)) / 2."""

    name = "cosine"


@dataclass(frozen=True)
class Exponential(_Ramp):
    """Geometric interpolation: start * (end / start) ** (t / T); both ends must be positive."""

    name = "exponential"


@dataclass(frozen=True)
class Constant(Node):
    """One value held for `length`."""

    value: Number
    length: Length
    span: Span | None = field(default=None, compare=False, repr=False)
    value_spans: tuple[Span, ...] | None = field(default=None, compare=False, repr=False)
    name = "constant"

    def __post_init__(self):
        object.__setattr__(self, "value", normal(self.value))

    @property
    def values(self) -> tuple[Number, ...]:
        return (self.value,)

    @property
    def start_value(self) -> Number:
        return self.value

    @property
    def end_value(self) -> Number:
        return self.value

    def __str__(self) -> str:
        return f"constant({_n(self.value)}, {self.length})"


@dataclass(frozen=True)
class InverseSqrt(Node):
    """peak * sqrt(s / step), s the step the piece starts at: fairseq's inverse_sqrt after a warmup."""

    peak: Number
    length: Length
    span: Span | None = field(default=None, compare=False, repr=False)
    value_spans: tuple[Span, ...] | None = field(default=None, compare=False, repr=False)
    name = "inverse_sqrt"

    def __post_init__(self):
        object.__setattr__(self, "peak", normal(self.peak))

    @property
    def values(self) -> tuple[Number, ...]:
        return (self.peak,)

    @property
    def start_value(self) -> Number:
        return self.peak

    @property
    def end_value(self) -> None:
        return None  # depends on where the piece starts: known after resolve()

    def __str__(self) -> str:
        return f"inverse_sqrt({_n(self.peak)}, {self.length})"


@dataclass(frozen=True)
class WarmupStableDecay(Node):
    """Warm up linearly start -> peak over `warmup`, hold peak, decay linearly to `end` over the
    final `decay`; it always runs to the end of training (the `rest` is implied)."""

    start: Number
    peak: Number
    end: Number
    warmup: Duration
    decay: Duration
    span: Span | None = field(default=None, compare=False, repr=False)
    value_spans: tuple[Span, ...] | None = field(default=None, compare=False, repr=False)
    name = "wsd"

    def __post_init__(self):
        for name in ("start", "peak", "end"):
            object.__setattr__(self, name, normal(getattr(self, name)))

    @property
    def values(self) -> tuple[Number, ...]:
        return (self.start, self.peak, self.end)

    @property
    def length(self) -> Rest:
        return Rest()

    @property
    def start_value(self) -> Number:
        return self.start

    @property
    def end_value(self) -> Number:
        return self.end

    def __str__(self) -> str:
        if self.start == 0 and self.end == 0:
            values = _n(self.peak)
        else:
            values = f"{_n(self.start)} -> {_n(self.peak)} -> {_n(self.end)}"
        return f"wsd({values}, warmup {self.warmup}, decay {self.decay})"


Piece = Linear | Cosine | Exponential | Constant | InverseSqrt | WarmupStableDecay


@dataclass(frozen=True)
class ResolvedPiece(Node):
    """One piece on concrete steps: `kind` over [start_step, start_step + steps)."""

    kind: str  # linear | cosine | exponential | constant | inverse_sqrt
    start_step: int
    steps: int
    init_value: float
    end_value: float

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


@dataclass(frozen=True)
class ResolvedSchedule(Node):
    """A schedule laid on a run of `total_steps`: pieces cover [0, total_steps) without gaps.

    Only plain fields, so it serialises both through `to_json` and field by field.
    """

    text: str  # the canonical text it was resolved from
    total_steps: int
    pieces: tuple[ResolvedPiece, ...]

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The steps where one piece hands over to the next (optax.join_schedules' boundaries)."""
        return tuple(p.start_step for p in self.pieces[1:])

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Schedule(Node):
    """Pieces joined in sequence; `jumps[i]` is True when piece i+1 is entered by `then jump to`."""

    pieces: tuple[Piece, ...]
    jumps: tuple[bool, ...] = ()
    span: Span | None = field(default=None, compare=False, repr=False)
    source: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "pieces", tuple(self.pieces))
        if not self.jumps and len(self.pieces) > 1:
            object.__setattr__(self, "jumps", (False,) * (len(self.pieces) - 1))
        object.__setattr__(self, "jumps", tuple(bool(j) for j in self.jumps))
        if not self.pieces:
            raise LangError("a schedule needs at least one piece", self.source or "")
        if len(self.jumps) != len(self.pieces) - 1:
            raise ValueError("a schedule has one join fewer than it has pieces")
        self._check()

    # -- printing and positions -------------------------------------------------------------

    def __str__(self) -> str:
        out = str(self.pieces[0])
        for jump, piece in zip(self.jumps, self.pieces[1:]):
            out += (" then jump to " if jump else " then ") + str(piece)
        return out

    def _where(self, piece_index: int, value_index: int | None = None) -> tuple[str, int | None]:
        """(text, 1-based column) of a piece, or of one of its values, for an error."""
        piece = self.pieces[piece_index]
        if self.source is not None:
            spans = getattr(piece, "value_spans", None)
            if value_index is not None and spans:
                return self.source, spans[value_index][0] + 1
            return self.source, (piece.span[0] + 1 if piece.span else None)
        offset = 0
        for i, p in enumerate(self.pieces):
            if i == piece_index:
                break
            offset += len(str(p)) + len(" then jump to " if self.jumps[i] else " then ")
        return str(self), offset + 1

    def _error(self, message: str, piece_index: int, value_index: int | None = None, hint: str | None = None):
        text, column = self._where(piece_index, value_index)
        return LangError(message, text, column, hint=hint)

    # -- checks that need no run --------------------------------------------------------------

    def _check(self) -> None:
        last = len(self.pieces) - 1
        for i, piece in enumerate(self.pieces):
            for k, v in enumerate(piece.values):
                if not math.isfinite(v):
                    raise self._error(f"{piece.name} has a value that is not finite", i, k)
                if v < 0:
                    raise self._error(f"a learning rate cannot be negative ({_n(v)})", i, k)
                if isinstance(piece, Exponential) and v == 0:
                    raise self._error(
                        "exponential cannot start or end at 0 (it multiplies by a constant factor)",
                        i, k, hint="use linear or cosine to reach 0",
                    )
            if isinstance(piece, InverseSqrt) and i == 0:
                raise self._error(
                    "inverse_sqrt decays as peak * sqrt(s / step) from the step s where it starts, "
                    "so it needs a warmup before it", i,
                    hint="e.g. linear(0 -> 1e-3, 1000 steps) then inverse_sqrt(1e-3, rest)",
                )
            durations = (piece.warmup, piece.decay) if isinstance(piece, WarmupStableDecay) else (piece.length,)
            for d in durations:
                if isinstance(d, Duration):
                    self._check_length(d, i)
            if isinstance(piece.length, Rest) and i != last:
                what = "wsd runs to the end of training" if isinstance(piece, WarmupStableDecay) else "`rest` means until the end of training"
                raise self._error(
                    f"{what}, so it must be the last piece", i,
                    hint="give this piece a length such as `1000 steps`, or move it last",
                )
            if i > 0 and not self.jumps[i - 1]:
                before = self.pieces[i - 1].end_value
                if before is not None and not _same(before, piece.start_value):
                    raise self._error(
                        f"{piece.name} starts at {_n(piece.start_value)} but the piece before ends at {_n(before)}",
                        i, 0,
                        hint=f"start it at {_n(before)}, or write `then jump to` for a deliberate jump",
                    )

    def _check_length(self, d: Duration, i: int) -> None:
        if d.is_wall_clock:
            raise self._error(f"a schedule length must be in steps, epochs or tokens, not wall-clock time ({d})", i)
        if d.value <= 0:
            raise self._error(f"a schedule length must be positive ({d})", i)
        if d.unit == "percent" and d.value > 100:
            raise self._error(f"a share of the run is at most 100%, not {d}", i)
        if d.unit in ("steps", "tokens") and not isinstance(d.value, int):
            raise self._error(f"{d} is not a whole number of {d.unit}", i)

    # -- resolution against a run -------------------------------------------------------------

    def resolve(self, total_steps: int, steps_per_epoch: int | None = None,
                tokens_per_step: int | None = None) -> ResolvedSchedule:
        """Concrete step boundaries for a run of `total_steps`; a LangError if the pieces don't fit."""
        if total_steps <= 0:
            raise LangError(f"a run of {total_steps} steps has no room for a schedule", self.source or str(self))
        text = self.source if self.source is not None else str(self)

        def steps_of(d: Duration) -> int:
            return d._to_steps(steps_per_epoch, tokens_per_step, self.source, total_steps)

        out: list[ResolvedPiece] = []
        at = 0
        for i, piece in enumerate(self.pieces):
            if isinstance(piece, WarmupStableDecay):
                warm, decay = steps_of(piece.warmup), steps_of(piece.decay)
                left = total_steps - at
                if warm + decay > left:
                    raise self._error(
                        f"wsd needs {warm} warmup + {decay} decay steps but only {left} of the "
                        f"{total_steps} training steps are left", i,
                    )
                for kind, n, a, b in (("linear", warm, piece.start, piece.peak),
                                      ("constant", left - warm - decay, piece.peak, piece.peak),
                                      ("linear", decay, piece.peak, piece.end)):
                    if n:
                        out.append(ResolvedPiece(kind, at, n, float(a), float(b)))
                        at += n
                continue
            if isinstance(piece.length, Rest):
                n = total_steps - at
                if n <= 0:
                    raise self._error(
                        f"no steps are left for `rest`: the pieces before it take {at} of the "
                        f"{total_steps} training steps", i,
                    )
            else:
                n = steps_of(piece.length)
                if at + n > total_steps:
                    raise self._error(
                        f"{piece.name} would end at step {at + n}, but training has only {total_steps} steps",
                        i, hint="shorten it, or lengthen training",
                    )
            if isinstance(piece, InverseSqrt):
                end = float(piece.peak) * math.sqrt(at / (at + n))
                resolved = ResolvedPiece("inverse_sqrt", at, n, float(piece.peak), end)
            else:
                resolved = ResolvedPiece(piece.name, at, n, float(piece.start_value), float(piece.end_value))
            if out and not self.jumps[i - 1] and not _same(out[-1].end_value, resolved.init_value):
                raise self._error(
                    f"{piece.name} starts at {_n(piece.start_value)} but the piece before ends at "
                    f"{out[-1].end_value:.6g} on this run", i, 0,
                    hint="write `then jump to` for a deliberate jump",
                )
            out.append(resolved)
            at += n
        if at < total_steps:
            raise LangError(
                f"the schedule covers {at} of the {total_steps} training steps",
                text, len(text) + 1 if self.source is not None else None,
                hint=f"give the last piece the length `rest`, or add `then constant({_n(normal(out[-1].end_value))}, rest)`",
            )
        return ResolvedSchedule(str(self), total_steps, tuple(out))


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
