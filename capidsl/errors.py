"""The root of capidsl's error types: every stage raises a subclass, only the CLI renders them."""

from __future__ import annotations


class CapidslError(Exception):
    """An error a person can act on; `render()` is what the CLI prints, `exit_code` what it returns."""

    exit_code = 1

    def render(self) -> str:
        return str(self)


class UsageError(CapidslError):
    """The command line itself is wrong (exit code 2, like argparse)."""

    exit_code = 2


class SubjectError(CapidslError):
    """An error about a named subject (a file, a key, an argument), with an optional hint."""

    def __init__(self, message: str, *, subject: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message, self.subject, self.hint = message, subject, hint

    def render(self) -> str:
        head = f"{self.subject}: {self.message}" if self.subject else self.message
        return f"{head}\n  hint: {self.hint}" if self.hint else head
