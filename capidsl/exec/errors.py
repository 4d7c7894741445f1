"""RunError: the executor's one error type (the run cannot go on as planned)."""

from __future__ import annotations

from capidsl.errors import SubjectError


class RunError(SubjectError):
    """Something about the live run contradicts the plan, with the subject it concerns and a hint."""
