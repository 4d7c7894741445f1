"""`capidsl run RECIPE_OR_PLAN`: compile (or load) the plan and train it, resuming the run directory."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from capidsl.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RECIPE_OR_PLAN", help="a recipe (.yaml) or a compiled plan (.json)")
    p.add_argument("--run-dir", metavar="DIR", help="where checkpoints and metrics go (default: the recipe's run_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set training.batch_size=64 (repeatable)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="end after N optimizer steps in total (checkpointed, so a later --steps M continues)")


def load_plan(target: str, overrides: list[str]):
    """A Plan from a plan.json as is, or compiled from a recipe with its --set overrides."""
    path = Path(target)
    if path.suffix == ".json":
        if overrides:
            raise UsageError("--set applies to recipes; a plan.json is run exactly as compiled")
        from capidsl.plan.plan import Plan

        try:
            return Plan.loads(path.read_text())
        except OSError as err:
            raise UsageError(f"cannot read {target}: {err.strerror}") from err
    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    return compile_plan(Recipe.from_yaml(target, overrides=overrides))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be a positive number of optimizer steps")
    plan = load_plan(args.target, args.overrides)
    from capidsl.exec.loop import describe, run as run_plan

    warnings.showwarning = _show_warning  # RunWarnings as one line each, not Python's file:line form
    summary = run_plan(plan, args.run_dir, max_steps=args.steps)
    print(describe(summary))
    return 0
