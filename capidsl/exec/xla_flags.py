"""The plan's XLA flags (plan.xla_flags, chosen by device kind) in effect for the run.

XLA reads XLA_FLAGS once, when JAX starts its backend; set later, a flag does nothing. So: a
compiled plan.json's flags go into the environment before anything starts the backend; a recipe is
compiled on the live machine (the backend is up by then), so a single-process run whose flags are
missing starts itself again with them (once: `RESTARTED` guards it), and a multi-process run, whose
processes cannot restart alone, warns with the line to set (`capidsl launch` writes it into its scripts).
A flag the environment already sets (by name) is left as the user set it.
"""

from __future__ import annotations

import os
import sys

ENV = "XLA_FLAGS"
RESTARTED = "CAPIDSL_XLA_FLAGS_RESTARTED"


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def missing(current: str, flags: tuple[str, ...] | list[str]) -> list[str]:
    """The flags whose names `current` (an XLA_FLAGS value) does not set."""
    have = {_name(f) for f in current.split()}
    return [f for f in flags if _name(f) not in have]


def merged(current: str, flags: tuple[str, ...] | list[str]) -> str:
    """`current` with the missing flags appended."""
    return " ".join(current.split() + missing(current, flags))


def set_before_start(flags: tuple[str, ...] | list[str]) -> None:
    """Put the flags in this process's XLA_FLAGS (call before JAX starts its backend)."""
    if missing(os.environ.get(ENV, ""), flags):
        os.environ[ENV] = merged(os.environ.get(ENV, ""), flags)


def restart_with(flags: tuple[str, ...] | list[str], argv: list[str]) -> None:
    """Replace this process by `python -m capidsl argv...` with the flags in XLA_FLAGS (does not return)."""
    env = dict(os.environ, **{ENV: merged(os.environ.get(ENV, ""), flags), RESTARTED: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "capidsl", *argv], env)


def plan_flags_of(path: str) -> tuple[str, ...]:
    """The xla_flags of a local plan.json, read without JAX; () when it has none or cannot be read
    here (the run reports a bad plan itself)."""
    import json

    try:
        with open(path) as f:
            return tuple(json.load(f).get("xla_flags", ()))
    except (OSError, ValueError, AttributeError):
        return ()
