"""What an expression means, in words: the text behind `capidsl explain` (no plotting here)."""

from __future__ import annotations

from dataclasses import dataclass

from capidsl.lang.ast import (
    AllOf, AnyOf, BestOf, Cadence, Compare, Const, Constant, Cosine, Duration, Exponential, Finite,
    InverseSqrt, Latest, Linear, Not, Progress, PruningSchedule, Rest, Schedule, Stalls, StopRule,
    WarmupStableDecay,
)
from capidsl.lang.errors import LangError
from capidsl.lang.numbers import format_number as _n


@dataclass(frozen=True)
class Explanation:
    """The kind of expression, its AST, and its meaning as lines of text."""

    kind: str
    node: object
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def explain(text: str, kind: str | None = None, metrics=None, directions=None) -> Explanation:
    """Parse `text` (as `kind`, or whichever kind it is) and say what it means."""
    from capidsl.lang import parse

    if kind is None:
        first = text.strip().split(" ", 1)[0]
        kinds = {"every": ("cadence",), "from": ("pruning",)}.get(first, ("duration", "schedule", "stop_rule"))
        errors = []
        for k in kinds:
            try:
                return explain(text, k, metrics, directions)
            except LangError as err:
                errors.append(err)
        # report the attempt that got furthest into the text
        raise max(errors, key=lambda e: e.column or 0)
    options = {"metrics": metrics, "directions": directions} if kind == "stop_rule" else {}
    node = parse.parse(text, kind, **options)
    return Explanation(kind, node, tuple(describe(node)))


def describe(node) -> list[str]:
    """Lines saying what a parsed expression means."""
    if isinstance(node, Duration):
        return [f"{node}: {duration_words(node)}."]
    if isinstance(node, Cadence):
        return [f"{node}: once every {duration_words(node.every)}."]
    if isinstance(node, Schedule):
        return schedule_words(node)
    if isinstance(node, StopRule):
        return ["Stop training as soon as " + condition_words(node.expr, 0)[0]] + condition_words(node.expr, 0)[1:]
    if isinstance(node, PruningSchedule):
        return pruning_words(node)
    raise TypeError(f"cannot explain a {type(node).__name__}")


def duration_words(d: Duration) -> str:
    v = _n(d.value)
    if d.unit == "steps":
        return f"{v} optimizer step{'s' if d.value != 1 else ''}"
    if d.unit == "epochs":
        return (f"{v} pass{'es' if d.value != 1 else ''} over the training data "
                "(turned into steps once the plan knows the dataset size and the batch)")
    if d.unit == "tokens":
        return f"{v} training tokens (steps = tokens / tokens per step, which must divide exactly)"
    if d.unit == "percent":
        return f"{d} of the whole run (exact in steps once the run length is known)"
    return f"{str(d)} of wall-clock time ({_n(d.value)} seconds)"


def _length_words(length) -> str:
    return "for the rest of training" if isinstance(length, Rest) else f"over {length}"


def piece_words(piece) -> str:
    if isinstance(piece, Linear):
        role = " (warmup)" if piece.end > piece.start else ""
        return f"straight line from {_n(piece.start)} to {_n(piece.end)} {_length_words(piece.length)}{role}"
    if isinstance(piece, Cosine):
        way = "down" if piece.end < piece.start else "up"
        return f"half cosine from {_n(piece.start)} {way} to {_n(piece.end)} {_length_words(piece.length)}"
    if isinstance(piece, Exponential):
        return (f"geometric curve from {_n(piece.start)} to {_n(piece.end)} {_length_words(piece.length)} "
                "(the same factor every step)")
    if isinstance(piece, Constant):
        return f"hold {_n(piece.value)} {_length_words(piece.length)}"
    if isinstance(piece, InverseSqrt):
        return (f"inverse square root from {_n(piece.peak)}: peak × sqrt(s / step), s the step it starts at, "
                f"{_length_words(piece.length)}")
    if isinstance(piece, WarmupStableDecay):
        return (f"warmup-stable-decay for the rest of training: a straight line from {_n(piece.start)} to "
                f"{_n(piece.peak)} over {piece.warmup}, hold {_n(piece.peak)}, then a straight line to "
                f"{_n(piece.end)} over the final {piece.decay}")
    raise TypeError(type(piece).__name__)


def pruning_words(p: PruningSchedule) -> list[str]:
    curve = ("along Zhu & Gupta's cubic s(t) = final + (initial − final)(1 − progress)³, fast at first"
             if p.curve == "cubic" else "along a straight line")
    return [
        "Prune weights by magnitude (the smallest become exactly zero and stay zero):",
        f"  none before {p.start}; {_n(p.initial)}% at {p.start}, growing to {_n(p.final)}% at {p.end} {curve};",
        f"  the mask is recomputed {p.every} from the start, and at the end; {_n(p.final)}% is kept after it.",
    ]


def schedule_words(s: Schedule) -> list[str]:
    lines = ["Learning rate by optimizer step:"]
    for i, piece in enumerate(s.pieces):
        join = ""
        if i:
            join = "then jump to a " if s.jumps[i - 1] else "then a "
        lines.append(f"  {i + 1}. {join}{piece_words(piece)}")
    if len(s.pieces) > 1 and not any(s.jumps):
        lines.append("Each piece starts where the previous one ends (checked).")
    return lines


_OPS = {"<": "below", "<=": "at most", ">": "above", ">=": "at least"}


def _operand_words(x) -> str:
    if isinstance(x, Const):
        return _n(x.value)
    if isinstance(x, Latest):
        return f"the latest {x.metric}"
    if isinstance(x, BestOf):
        which = "lowest" if x.mode == "min" else "highest"
        scale = "" if x.scale == 1 else f"{_n(x.scale)} × "
        return f"{scale}the {which} {x.metric} so far"
    raise TypeError(type(x).__name__)


def condition_words(c, depth: int) -> list[str]:
    """The first line continues a sentence; nested junctions add indented bullet lines."""
    pad = "  " * (depth + 1)
    if isinstance(c, (AnyOf, AllOf)):
        head = "any of these holds:" if isinstance(c, AnyOf) else "all of these hold:"
        lines = [head]
        for t in c.terms:
            sub = condition_words(t, depth + 1)
            lines.append(f"{pad}- {sub[0]}")
            lines.extend(sub[1:])
        return lines
    if isinstance(c, Not):
        if isinstance(c.term, Finite):
            return [f"{c.term.metric} becomes NaN or infinite"]
        sub = condition_words(c.term, depth)
        return [f"it is not the case that {sub[0]}"] + sub[1:]
    if isinstance(c, Finite):
        return [f"{c.metric} is finite"]
    if isinstance(c, Compare):
        return [f"{_operand_words(c.left)} is {_OPS[c.op]} {_operand_words(c.right)}"]
    if isinstance(c, Progress):
        if c.quantity == "time":
            return [f"the wall-clock time is {_OPS[c.op]} {Duration(c.value, 'seconds')}"]
        return [f"the number of {c.quantity} done is {_OPS[c.op]} {_n(c.value)}"]
    if isinstance(c, Stalls):
        better = "decreased" if c.mode == "min" else "increased"
        unit = {"evals": "evaluations", "steps": "optimizer steps", "epochs": "epochs"}[c.unit]
        by = f" by more than {_n(c.min_delta)}" if c.min_delta else ""
        text = f"{c.metric} has not {better}{by} for {_n(c.patience)} {unit}"
        if c.baseline is not None:
            text += f" (it must first beat the baseline {_n(c.baseline)})"
        return [text + " — early stopping"]
    raise TypeError(type(c).__name__)
