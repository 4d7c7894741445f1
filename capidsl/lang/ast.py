"""The language's AST: frozen dataclasses with a canonical `str()`, JSON round-trip and evaluation.

No lark here: the plan holds these objects and the executor uses them without the grammar.
The node classes live in small modules by kind; this module is the one place to import them from.
"""

from __future__ import annotations

from typing import Any

from capidsl.lang.durations import UNITS, Cadence, Duration
from capidsl.lang.history import Best, Decision, Record
from capidsl.lang.node import Node, node_from_json
from capidsl.lang.pruning import PruningSchedule, ResolvedPruning
from capidsl.lang.schedules import (
    Constant, Cosine, Exponential, InverseSqrt, Length, Linear, Piece, ResolvedPiece,
    ResolvedSchedule, Rest, Schedule, WarmupStableDecay,
)
from capidsl.lang.stop import (
    BUILTIN_DIRECTIONS, AllOf, AnyOf, BestOf, Compare, Condition, Const, Finite, Latest, Not,
    Progress, Stalls, StopRule, direction_of,
)

__all__ = [
    "UNITS", "Duration", "Cadence", "Record", "Decision", "Best", "Node",
    "Rest", "Length", "Linear", "Cosine", "Exponential", "Constant", "InverseSqrt",
    "WarmupStableDecay", "Piece", "Schedule", "ResolvedPiece", "ResolvedSchedule",
    "BUILTIN_DIRECTIONS", "direction_of", "Const", "Latest", "BestOf", "Compare", "Progress",
    "Stalls", "Finite", "Not", "AnyOf", "AllOf", "Condition", "StopRule", "PruningSchedule",
    "ResolvedPruning", "from_json",
]


def from_json(data: dict[str, Any]) -> Any:
    """Rebuild any AST object (a node or a StopRule) from its `to_json()` form."""
    if isinstance(data, dict) and data.get("type") == "StopRule":
        return StopRule.from_json(data)
    return node_from_json(data)
