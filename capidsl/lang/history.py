"""What a stop rule reads and returns: the run's history of records, and its decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from capidsl.lang.node import Node


@dataclass(frozen=True)
class Record(Node):
    """Metrics measured at one optimizer step: `kind` is "eval" (validation) or "log" (training)."""

    step: int
    time_s: float
    kind: str
    metrics: Mapping[str, float]

    def __post_init__(self):
        if self.kind not in ("eval", "log"):
            raise ValueError(f"a record's kind is 'eval' or 'log', not {self.kind!r}")


@dataclass(frozen=True)
class Decision(Node):
    """Whether to stop, and why (the clause that fired, with the numbers that made it fire)."""

    stop: bool
    reason: str = ""


@dataclass(frozen=True)
class Best(Node):
    """The best value of a metric so far and the step it was measured at (for restore_best)."""

    metric: str
    step: int
    value: float
