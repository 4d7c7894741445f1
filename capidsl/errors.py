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
