"""Text to AST: the Lark grammar in grammar/language.lark, a Transformer, and error messages.

The only module that imports lark. The LALR parser is built once per process. Syntax errors
become LangError with the column, what was expected in words, and a did-you-mean hint.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Iterable, Mapping

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from capidsl.lang.durations import UNIT_WORDS, Cadence, Duration
from capidsl.lang.errors import LangError
from capidsl.lang.numbers import read_number
from capidsl.lang.pruning import PruningSchedule
from capidsl.lang.schedules import (
    Constant, Cosine, Exponential, InverseSqrt, Linear, Rest, Schedule, WarmupStableDecay,
)
from capidsl.lang.stop import (
    BUILTIN_DIRECTIONS, AllOf, AnyOf, BestOf, Compare, Const, Finite, Latest, Not, Progress, Stalls, StopRule,
    direction_of,
)
from capidsl.resources import resource_path

START_RULES = ("duration", "cadence", "schedule", "stop_rule", "pruning", "span")
_KIND_WORDS = {"duration": "a duration", "cadence": "a cadence", "schedule": "a schedule", "stop_rule": "a stop rule",
               "pruning": "a pruning schedule", "span": "a point of the run"}


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    """The compiled LALR parser for all five start rules (built once per process)."""
    grammar = resource_path("grammar", "language.lark").read_text()
    return Lark(grammar, parser="lalr", start=list(START_RULES), propagate_positions=True,
                maybe_placeholders=False)


def parse_duration(text: str) -> Duration:
    """`500 steps`, `3 epochs`, `2.5M tokens`, `90m` -> Duration."""
    return _parse(text, "duration")


def parse_cadence(text: str) -> Cadence:
    """`every 1000 steps`, `every epoch` -> Cadence."""
    return _parse(text, "cadence")


def parse_schedule(text: str) -> Schedule:
    """`linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)` -> Schedule (checked)."""
    return _parse(text, "schedule")


def parse_stop_rule(text: str, metrics: Iterable[str] | None = None,
                    directions: Mapping[str, str] | None = None) -> StopRule:
    """`val_loss stalls for 5 evals or not finite(loss)` -> StopRule.

    `metrics`: the metric names the run produces; any other name is an error with a suggestion.
    `directions`: metric -> "min"|"max" for metrics the built-in table does not know.
    """
    return _parse(text, "stop_rule", metrics=tuple(metrics) if metrics is not None else None,
                  directions=dict(directions or {}))


def parse_pruning(text: str) -> PruningSchedule:
    """`from 0% to 80% between 1k and 5k steps, every 100 steps` -> PruningSchedule (checked)."""
    return _parse(text, "pruning")


def parse_point(text: str) -> Duration:
    """A point of the run: `90%` (a `percent` Duration: a share of the run), `5000 steps`, `2 epochs`,
    `2B tokens` -> Duration, resolved with `to_steps(..., total_steps=)` (data.mixture_stages' `at`)."""
    return dataclasses.replace(_parse(text, "span"), source=text)


def parse(text: str, kind: str, **options):
    """Parse `text` as one of START_RULES."""
    if kind not in START_RULES:
        raise ValueError(f"kind is one of {START_RULES}, not {kind!r}")
    return _parse(text, kind, **options)


def _parse(text: str, kind: str, metrics: tuple[str, ...] | None = None, directions=None):
    if not isinstance(text, str):
        raise LangError(f"{_KIND_WORDS[kind]} must be written as text, not {type(text).__name__}", str(text), None)
    if not text.strip():
        raise LangError(f"{_the(kind)} is empty", text, 1, expected=_expected_for(kind))
    try:
        tree = parser().parse(text, start=kind)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, kind, metrics) from None
    builder = _Builder(text, directions or {})
    try:
        result = builder.transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, LangError):
            raise err.orig_exc.with_text(text) if not err.orig_exc.text else err.orig_exc from None
        raise
    except LangError as err:
        raise (err if err.text else err.with_text(text)) from None
    if metrics is not None:
        for name, start in builder.metric_refs:
            if name not in metrics:
                close = difflib.get_close_matches(name, metrics, n=1, cutoff=0.6)
                raise LangError(
                    f"unknown metric {name!r}", text, start + 1,
                    expected="one of the run's metrics: " + ", ".join(metrics) if metrics else None,
                    hint=f"did you mean {close[0]}?" if close else None,
                )
    return result


# ---- tree to AST ----------------------------------------------------------------------------


class _Num:
    """A number with where it was written."""

    __slots__ = ("value", "span")

    def __init__(self, value, span):
        self.value, self.span = value, span


def _span(meta):
    return (meta.start_pos, meta.end_pos) if not meta.empty else None


@v_args(meta=True)
class _Builder(Transformer):
    """Builds AST nodes bottom-up; semantic errors carry the column of the offending token."""

    def __init__(self, text: str, directions: Mapping[str, str]):
        super().__init__()
        self.text = text
        self.directions = directions
        self.metric_refs: list[tuple[str, int]] = []

    def _error(self, message, start, **kw):
        return LangError(message, self.text, start + 1, **kw)

    def _metric(self, token: Token) -> str:
        self.metric_refs.append((str(token), token.start_pos))
        return str(token)

    def _direction(self, token: Token, explicit: str | None = None) -> str:
        mode = explicit or direction_of(str(token), self.directions)
        if mode is None:
            known = [*BUILTIN_DIRECTIONS, *self.directions]
            close = difflib.get_close_matches(str(token), known, n=1, cutoff=0.8)
            typo = f"did you mean {close[0]}? If not, " if close else ""
            raise self._error(
                f"cannot tell whether a higher or a lower {token} is better", token.start_pos,
                hint=f"{typo}add `mode min` or `mode max`, or declare it in stop.directions ({token}: max)",
            )
        return mode

    # numbers and durations

    def number(self, meta, children):
        token = children[0]
        return _Num(read_number(str(token)), (token.start_pos, token.end_pos))

    def unit(self, meta, children):
        return children[0]

    patience_unit = extremum = progress_name = unit

    def duration(self, meta, children):
        num, unit = children
        name, factor = UNIT_WORDS[str(unit)]
        value = num.value * factor
        if num.value <= 0:
            raise self._error(f"a duration must be positive, not {num.value}", num.span[0])
        if name in ("steps", "tokens") and not float(num.value).is_integer():
            raise self._error(f"{name} are counted in whole numbers, not {num.value}", num.span[0])
        return Duration(value, name, span=_span(meta))

    def share(self, meta, children):
        (num,) = children
        if not 0 < num.value <= 100:
            raise self._error(f"a share of the run is more than 0% and at most 100%, not {num.value}%", num.span[0])
        return Duration(num.value, "percent", span=_span(meta))

    def cadence(self, meta, children):
        return Cadence(children[0], span=_span(meta), source=self.text)

    def cadence_one(self, meta, children):
        name, factor = UNIT_WORDS[str(children[0])]
        every = Duration(factor, name, span=(children[0].start_pos, children[0].end_pos))
        return Cadence(every, span=_span(meta), source=self.text)

    # schedules

    def length(self, meta, children):
        return children[0]

    def rest(self, meta, children):
        return Rest(span=_span(meta))

    def _ramp(cls):
        def build(self, meta, children):
            a, b, length = children
            return cls(a.value, b.value, length, span=_span(meta), value_spans=(a.span, b.span))
        return build

    linear, cosine, exponential = _ramp(Linear), _ramp(Cosine), _ramp(Exponential)
    del _ramp

    def constant(self, meta, children):
        v, length = children if len(children) == 2 else (children[0], Rest(span=_span(meta)))
        return Constant(v.value, length, span=_span(meta), value_spans=(v.span,))

    def inverse_sqrt(self, meta, children):
        v, length = children
        return InverseSqrt(v.value, length, span=_span(meta), value_spans=(v.span,))

    def wsd_peak(self, meta, children):
        (peak,) = children
        zero = _Num(0, peak.span)
        return (zero, peak, zero)

    def wsd_full(self, meta, children):
        return tuple(children)

    def wsd(self, meta, children):
        values, warmup, decay = children
        return WarmupStableDecay(*(v.value for v in values), warmup, decay, span=_span(meta),
                                 value_spans=tuple(v.span for v in values))

    def join(self, meta, children):
        return len(children) > 1  # "then jump to"

    def schedule(self, meta, children):
        return Schedule(tuple(children[0::2]), tuple(children[1::2]), span=_span(meta), source=self.text)

    # stop rules

    def stop_rule(self, meta, children):
        return StopRule(children[0], source=self.text)

    def any_of(self, meta, children):
        return AnyOf(tuple(children), span=_span(meta))

    def all_of(self, meta, children):
        return AllOf(tuple(children), span=_span(meta))

    def negation(self, meta, children):
        return Not(children[0], span=_span(meta))

    def comparison(self, meta, children):
        left, op, right = children
        if isinstance(left, Const) and isinstance(right, Const):
            raise self._error("a comparison needs a metric on at least one side", meta.start_pos)
        return Compare(left, str(op), right, span=_span(meta))

    def constant_operand(self, meta, children):
        return Const(children[0].value, span=children[0].span)

    def latest_operand(self, meta, children):
        return Latest(self._metric(children[0]), span=_span(meta))

    def best_of(self, meta, children):
        (token,) = children
        return BestOf(self._metric(token), self._direction(token), span=_span(meta))

    def extremum_of(self, meta, children):
        mode, token = children
        return BestOf(self._metric(token), str(mode), span=_span(meta))

    def best_operand(self, meta, children):
        return children[0]

    def scaled_best_operand(self, meta, children):
        scale, best = children
        return BestOf(best.metric, best.mode, scale.value, span=_span(meta))

    def progress(self, meta, children):
        quantity, op, num = children[:3]
        unit = children[3] if len(children) > 3 else None
        value = num.value
        if str(quantity) == "time":
            if unit is None or UNIT_WORDS[str(unit)][0] != "seconds":
                raise self._error("write wall-clock time with a unit: 30s, 90m, 6h", num.span[0])
            value = num.value * UNIT_WORDS[str(unit)][1]
        elif unit is not None and UNIT_WORDS[str(unit)][0] != str(quantity):
            raise self._error(f"{quantity} is compared with a plain number, e.g. {quantity} >= 20k", unit.start_pos)
        if value < 0:
            raise self._error(f"{quantity} cannot be negative", num.span[0])
        return Progress(str(quantity), str(op), value, span=_span(meta))

    def stall_by(self, meta, children):
        return ("min_delta", children[0])

    def stall_from(self, meta, children):
        return ("baseline", children[0])

    def stall_mode(self, meta, children):
        return ("mode", children[0])

    def stalls(self, meta, children):
        token, patience, unit, *options = children
        opts = dict(options)
        if patience.value <= 0 or not float(patience.value).is_integer():
            raise self._error(f"patience is a positive whole number, not {patience.value}", patience.span[0])
        unit_name = {"eval": "evals", "step": "steps", "epoch": "epochs"}.get(str(unit), str(unit))
        kwargs = {}
        if "min_delta" in opts:
            if opts["min_delta"].value < 0:
                raise self._error("`by` (min_delta) cannot be negative", opts["min_delta"].span[0])
            kwargs["min_delta"] = opts["min_delta"].value
        if "baseline" in opts:
            kwargs["baseline"] = opts["baseline"].value
        mode = self._direction(token, str(opts["mode"]) if "mode" in opts else None)
        return Stalls(self._metric(token), int(patience.value), unit_name, mode=mode, span=_span(meta), **kwargs)

    def finite(self, meta, children):
        return Finite(self._metric(children[0]), span=_span(meta))

    # pruning schedules

    def sparsity(self, meta, children):
        return children[0]

    def prune_point(self, meta, children):
        num, unit = children if len(children) == 2 else (children[0], None)
        return num, (None if unit is None else UNIT_WORDS[str(unit)]), _span(meta)

    def prune_share(self, meta, children):
        return children[0], ("percent", 1), _span(meta)

    def prune_curve(self, meta, children):
        return str(children[0])

    def pruning(self, meta, children):
        initial, final, (a, a_unit, a_span), (b, b_unit, b_span), *rest = children
        if b_unit is None:
            raise self._error("the end of pruning needs a unit, e.g. `5k steps`", b.span[1])
        a_unit = a_unit or b_unit
        start, end = (Duration(n.value * factor, name, span=span)
                      for n, (name, factor), span in ((a, a_unit, a_span), (b, b_unit, b_span)))
        every = next((c for c in rest if isinstance(c, Cadence)), None)
        curve = next((c for c in rest if isinstance(c, str)), "cubic")
        spans = (initial.span, final.span, a_span, b_span, every.span if every else (len(self.text), len(self.text)))
        return PruningSchedule(initial.value, final.value, start, end, every or Cadence(Duration(1, "steps")), curve,
                               span=_span(meta), source=self.text, value_spans=spans)


# ---- syntax errors in words -----------------------------------------------------------------

_UNIT_KEYWORDS = set(UNIT_WORDS)
_PATIENCE_WORDS = {"eval", "evals", "step", "steps", "epoch", "epochs"}
_PIECES = ("linear", "cosine", "exponential", "constant", "inverse_sqrt", "rsqrt", "wsd")
_NAMED = {
    "NUMBER": "a number",
    "METRIC": "a metric name",
    "COMPARE": "a comparison (<, <=, >, >=)",
    "$END": "the end of the expression",
}


@functools.lru_cache(maxsize=1)
def _terminal_words() -> dict[str, str]:
    """Terminal name -> the literal text it stands for (for keyword and punctuation terminals)."""
    return {t.name: t.pattern.value for t in parser().terminals if t.pattern.type == "str"}


def _words(expected: Iterable[str]) -> tuple[str, list[str]]:
    """What was expected, in words, and the keywords among it (for did-you-mean)."""
    literal = dict(_terminal_words(), SECOND="s", MINUTE="m", HOUR="h")
    keywords = sorted({literal[name] for name in expected if name in literal})
    parts: list[str] = []
    named = [n for n in ("NUMBER", "METRIC", "COMPARE") if n in expected]
    if "finite" in keywords:  # the start of a condition
        return ("a condition: a metric name or a number, `steps`, `epochs`, `tokens` or `time`, "
                "`finite(...)`, `best(...)`, `not` or `(`"), keywords
    units = [k for k in keywords if k in _UNIT_KEYWORDS]
    if "max" in keywords:  # min(...) / max(...), not minutes
        units = [u for u in units if u != "min"]
    patience = [k for k in keywords if k in ("eval", "evals")]
    if patience:
        units = [u for u in units if u not in ("step", "steps", "epoch", "epochs")]
    pieces = [k for k in keywords if k in _PIECES]
    rest = [k for k in keywords if k not in units and k not in pieces and k not in _PATIENCE_WORDS]
    if patience:
        parts.append("a patience unit (evals, steps or epochs)")
    if pieces:
        parts.append("a schedule piece (" + ", ".join(p for p in _PIECES if p in pieces) + ")")
    parts.extend(_NAMED[n] for n in named)
    share = "% of the run, " if "%" in rest and units else ""
    if share:
        rest.remove("%")
    if units:
        if {"step", "epoch", "token"} & set(units) and "s" in units:
            parts.append(f"a unit (steps, epochs, tokens, {share}or s, m, h for wall-clock time)")
        elif "s" in units:
            parts.append("a time unit (s, m, h)")
        else:
            parts.append("a unit (" + ", ".join(u for u in units if u.endswith("s")) + ")")
    parts.extend(f"`{k}`" for k in rest)
    if "$END" in expected:
        parts.append(_NAMED["$END"])
    if not parts:
        return "something else", keywords
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]
    return text, keywords


def _expected_for(kind: str) -> str:
    return {
        "duration": "a duration such as `500 steps`, `3 epochs`, `2.5M tokens` or `90m`",
        "cadence": "a cadence such as `every 1000 steps`",
        "schedule": "a schedule such as `linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)`",
        "stop_rule": "a stop rule such as `val_loss stalls for 5 evals`",
        "pruning": "a pruning schedule such as `from 0% to 80% between 1k and 5k steps, every 100 steps`",
        "span": "a point of the run such as `90%`, `5000 steps` or `2B tokens`",
    }[kind]


def _syntax_error(err: UnexpectedInput, text: str, kind: str, metrics) -> LangError:
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        pos = err.token.start_pos
    elif isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
    else:  # the text ended too early
        pos = len(text.rstrip())
    word = _word_at(text, pos)
    if pos >= len(text.rstrip()):
        found = "the end of the expression"
    else:
        found = f"`{word or text[pos]}`"
    expected = _accepted(text[:pos], kind) or set(getattr(err, "expected", None) or getattr(err, "allowed", ()))
    words, keywords = _words(expected)
    hint = None
    if word and word[0].isalpha():
        pool = list(keywords)
        if "METRIC" in expected and metrics:
            pool.extend(metrics)
        close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]}?"
    if found == "`%`" and kind in ("duration", "cadence"):
        hint = "a share of the run (10%) is a schedule length only; write steps, epochs or tokens here"
    message = f"unexpected end of {_the(kind)}" if found == "the end of the expression" else f"unexpected {found} in {_KIND_WORDS[kind]}"
    return LangError(message, text, pos + 1, expected=words, hint=hint)


def _accepted(prefix: str, kind: str) -> set[str]:
    """Exactly the terminals the parser accepts after `prefix` (LALR's own sets are merged)."""
    try:
        ip = parser().parse_interactive(prefix, start=kind)
        ip.exhaust_lexer()
        return set(ip.accepts())
    except UnexpectedInput:
        return set()


def _the(kind: str) -> str:
    return "the " + _KIND_WORDS[kind].split(" ", 1)[1]  # "a schedule" -> "the schedule"


def _word_at(text: str, pos: int) -> str:
    end = pos
    while end < len(text) and (text[end].isalnum() or text[end] in "_."):
        end += 1
    return text[pos:end]
