"""Hypothesis strategies for valid ASTs of the language (used by the round-trip tests)."""

from hypothesis import strategies as st

from capidsl.lang.ast import (
    AllOf, AnyOf, BestOf, Cadence, Compare, Const, Constant, Cosine, Duration, Exponential, Finite,
    InverseSqrt, Latest, Linear, Not, Progress, PruningSchedule, Rest, Schedule, Stalls, StopRule,
    WarmupStableDecay,
)
from capidsl.lang.stop import BUILTIN_DIRECTIONS

small_ints = st.integers(1, 2**40)
decimals = st.floats(1e-9, 1e9, allow_nan=False, allow_infinity=False)
rates = st.one_of(st.just(0), st.floats(1e-8, 10.0, allow_nan=False), st.integers(1, 10))
positive_rates = st.one_of(st.floats(1e-8, 10.0, allow_nan=False), st.integers(1, 10))

durations = st.one_of(
    st.builds(Duration, small_ints, st.just("steps")),
    st.builds(Duration, small_ints | st.floats(1e-3, 1e4, allow_nan=False), st.just("epochs")),
    st.builds(Duration, small_ints, st.just("tokens")),
    st.builds(Duration, small_ints | st.floats(1e-3, 1e6, allow_nan=False), st.just("seconds")),
)
run_lengths = st.one_of(
    st.builds(Duration, st.integers(1, 100) | st.floats(1e-3, 100, allow_nan=False), st.just("percent")),
    st.builds(Duration, small_ints, st.just("steps")),
    st.builds(Duration, small_ints | st.floats(1e-3, 1e4, allow_nan=False), st.just("epochs")),
    st.builds(Duration, small_ints, st.just("tokens")),
)
cadences = st.builds(Cadence, durations)
short_lengths = st.one_of(  # for runs that resolve: 8 steps per epoch, 1 token per step
    st.builds(Duration, st.integers(1, 200), st.just("steps")),
    st.builds(Duration, st.sampled_from([0.5, 1, 2, 0.25]), st.just("epochs")),
    st.builds(Duration, st.integers(1, 200), st.just("tokens")),
)


@st.composite
def schedules(draw, max_pieces=5, lengths=run_lengths):
    """A valid schedule: `then` joins continuous, jumps where a join could not be."""
    n = draw(st.integers(1, max_pieces))
    pieces, jumps = [], []
    current = draw(rates)  # the value the next piece must start at (None: must jump)
    for i in range(n):
        last = i == n - 1
        kinds = ["linear", "cosine", "constant", "exponential"] + (["inverse_sqrt"] if i else []) + (["wsd"] if last else [])
        kind = draw(st.sampled_from(kinds))
        length = draw(lengths) if not last or draw(st.booleans()) else Rest()
        jump = current is None or draw(st.integers(0, 5)) == 0
        if kind == "exponential" and current == 0:
            jump = True
        start = draw(positive_rates if kind == "exponential" else rates) if jump else current
        if i:
            jumps.append(jump)
        if kind in ("linear", "cosine"):
            piece = (Linear if kind == "linear" else Cosine)(start, draw(rates), length)
        elif kind == "exponential":
            piece = Exponential(start, draw(positive_rates), length)
        elif kind == "constant":
            piece = Constant(start, length)
        elif kind == "inverse_sqrt":
            piece = InverseSqrt(start, length)
        else:
            piece = WarmupStableDecay(start, draw(rates), draw(rates), draw(lengths), draw(lengths))
        pieces.append(piece)
        current = piece.end_value
    return Schedule(tuple(pieces), tuple(jumps))


metrics = st.sampled_from(["loss", "val_loss", "val_accuracy", "perplexity", "score", "train/ce", "acc_top5"])
numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: x != 0 or True))
modes = st.sampled_from(["min", "max"])


@st.composite
def operands(draw):
    kind = draw(st.sampled_from(["latest", "best", "const"]))
    if kind == "latest":
        return Latest(draw(metrics))
    if kind == "best":
        return BestOf(draw(metrics), draw(modes), draw(st.integers(1, 100) | st.floats(0.01, 100)))
    return Const(draw(numbers))


@st.composite
def comparisons(draw):
    left, right = draw(operands()), draw(operands())
    if isinstance(left, Const) and isinstance(right, Const):
        right = Latest(draw(metrics))
    return Compare(left, draw(st.sampled_from(["<", "<=", ">", ">="])), right)


leaves = st.one_of(
    comparisons(),
    st.builds(Progress, st.sampled_from(["steps", "epochs", "tokens", "time"]), st.sampled_from(["<", ">="]),
              st.integers(0, 10**9) | st.floats(0, 1e6)),
    st.builds(Stalls, metrics, st.integers(1, 1000), st.sampled_from(["evals", "steps", "epochs"]),
              st.just(0) | st.floats(0, 1), st.none() | numbers, modes),
    st.builds(Finite, metrics),
)


def _branch(children):
    return st.one_of(
        st.builds(Not, children),
        st.builds(AnyOf, st.lists(children, min_size=2, max_size=3).map(tuple)),
        st.builds(AllOf, st.lists(children, min_size=2, max_size=3).map(tuple)),
    )


conditions = st.recursive(leaves, _branch, max_leaves=8)
stop_rules = st.builds(StopRule, conditions)

percents = st.integers(0, 99) | st.floats(0, 99.9, allow_nan=False)
step_cadences = st.builds(Cadence, st.one_of(
    st.builds(Duration, small_ints, st.just("steps")),
    st.builds(Duration, small_ints | st.floats(1e-3, 1e4, allow_nan=False), st.just("epochs")),
    st.builds(Duration, small_ints, st.just("tokens")),
))


@st.composite
def pruning_schedules(draw):
    """A valid pruning schedule: 0 <= initial <= final < 100, the end after the start."""
    initial, final = sorted((draw(percents), draw(percents.filter(lambda v: v > 0))))
    if final == 0 or initial == final and draw(st.booleans()):
        final = min(99.5, initial + 0.5)
    unit = draw(st.sampled_from(["steps", "epochs", "tokens", "percent"]))
    whole = unit in ("steps", "tokens")
    values = st.integers(1, 10**7) if whole else st.integers(1, 99) | st.floats(0.01, 99, allow_nan=False)
    start = draw(st.just(0) | values)
    end = draw(values.filter(lambda v: v > start))
    start_unit = unit if draw(st.integers(0, 4)) else draw(st.sampled_from(["steps", "tokens"]))
    if start_unit != unit:
        start = int(start)
    return PruningSchedule(initial, final, Duration(start, start_unit), Duration(end, unit), draw(step_cadences),
                           draw(st.sampled_from(["cubic", "linear"])))


__all__ = ["durations", "cadences", "schedules", "stop_rules", "conditions", "pruning_schedules", "BUILTIN_DIRECTIONS"]
