"""ModelError: a model family's one error type (an unknown family, options it cannot build)."""

from __future__ import annotations

from capidsl.errors import CapidslError


class ModelError(CapidslError):
    """A model name or option that cannot be honoured, with the subject it concerns and a hint."""

    def __init__(self, message: str, *, subject: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.subject = subject
        self.hint = hint

    def render(self) -> str:
        head = f"{self.subject}: {self.message}" if self.subject else self.message
        return f"{head}\n  hint: {self.hint}" if self.hint else head
