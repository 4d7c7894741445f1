"""The recipe language: durations, cadences, learning-rate schedules, stop rules and pruning schedules.

Parsing (lark) is imported only when a parse function is first called, so that code holding
AST objects (the plan, the executor) never pays for the grammar.
"""

from capidsl.lang.ast import (
    Best, Cadence, Decision, Duration, PruningSchedule, Record, ResolvedPruning, ResolvedSchedule, Schedule,
    StopRule, from_json,
)
from capidsl.lang.errors import LangError

__all__ = [
    "parse_duration", "parse_cadence", "parse_schedule", "parse_stop_rule", "parse_pruning", "LangError",
    "Duration", "Cadence", "Schedule", "ResolvedSchedule", "StopRule", "Record", "Decision", "Best",
    "PruningSchedule", "ResolvedPruning", "from_json",
]


def __getattr__(name):  # capidsl.lang.parse loads lark on first use only
    if name == "parse":
        import importlib

        return importlib.import_module("capidsl.lang.parse")
    raise AttributeError(f"module 'capidsl.lang' has no attribute {name!r}")


def parse_duration(text: str) -> Duration:
    """`500 steps`, `3 epochs`, `2.5M tokens`, `90m` -> Duration."""
    from capidsl.lang.parse import parse_duration as parse

    return parse(text)


def parse_cadence(text: str) -> Cadence:
    """`every 1000 steps`, `every epoch` -> Cadence."""
    from capidsl.lang.parse import parse_cadence as parse

    return parse(text)


def parse_schedule(text: str) -> Schedule:
    """`linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)` -> Schedule."""
    from capidsl.lang.parse import parse_schedule as parse

    return parse(text)


def parse_stop_rule(text: str, metrics=None, directions=None) -> StopRule:
    """`val_loss stalls for 5 evals or not finite(loss)` -> StopRule; `metrics` names the run's
    metrics (typos get a suggestion), `directions` maps extra metrics to "min"/"max"."""
    from capidsl.lang.parse import parse_stop_rule as parse

    return parse(text, metrics, directions)


def parse_pruning(text: str) -> PruningSchedule:
    """`from 0% to 80% between 1k and 5k steps, every 100 steps` -> PruningSchedule."""
    from capidsl.lang.parse import parse_pruning as parse

    return parse(text)
