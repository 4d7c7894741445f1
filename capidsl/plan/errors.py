"""The plan stage's error type."""

from __future__ import annotations

from capidsl.errors import CapidslError


class PlanError(CapidslError):
    """A recipe that validates but cannot be planned (does not divide, does not fit the run, ...).

    `location` is the recipe's file:line:col when known; `subject` the recipe key or parameter."""

    def __init__(self, message: str, *, subject: str | None = None, location=None, hint: str | None = None):
        super().__init__(message)
        self.message, self.subject, self.location, self.hint = message, subject, location, hint

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        what = f"{self.subject}: " if self.subject else ""
        text = f"{where}{what}{self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text
