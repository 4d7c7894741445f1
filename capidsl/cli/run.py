"""`capidsl run RECIPE_OR_PLAN`: compile (or load) the plan and train it, resuming the run directory."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from capidsl.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RECIPE_OR_PLAN", help="a recipe (.yaml) or a compiled plan (.json), local or gs://")
    p.add_argument("--run-dir", metavar="DIR", help="where checkpoints and metrics go, a local path or gs://bucket/prefix "
                   "(default: the recipe's run_dir)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set training.batch_size=64 (repeatable)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="end after N optimizer steps in total (checkpointed, so a later --steps M continues)")
    multi = p.add_argument_group("multi-host (not needed under SLURM, Open MPI, Cloud TPU or Kubernetes: JAX reads "
                                 "their environment)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, the same for every process")
    multi.add_argument("--num-processes", type=int, metavar="N", help="how many processes (hosts) the run has")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process's number, 0 to N-1")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


class _OneLine(logging.Filter):
    """orbax logs a failed background save with its traceback; the run reports it as a RunError
    with the step and the intact checkpoints, so the log keeps only the one-line message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def run(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be a positive number of optimizer steps")
    from capidsl.exec import xla_flags

    if args.target.endswith(".json") and not args.target.startswith("gs://"):  # its flags, before JAX starts
        xla_flags.set_before_start(xla_flags.plan_flags_of(args.target))
    from capidsl.exec import distributed

    # Join the other processes before anything asks JAX for devices: the plan is compiled for all of them.
    config = distributed.resolve(args.coordinator, args.num_processes, args.process_id)
    distributed.initialize(config)
    from capidsl.cli.progress import PrepareBar
    from capidsl.runner import describe, load_plan, prepare_stores, run as run_plan

    plan = load_plan(args.target, args.overrides, progress=PrepareBar())
    absent = xla_flags.missing(os.environ.get(xla_flags.ENV, ""), plan.xla_flags)
    if absent and config is None and not os.environ.get(xla_flags.RESTARTED):
        xla_flags.restart_with(plan.xla_flags, sys.argv[1:])  # one process: start again with them
    if absent:
        warnings.warn(f"the plan's XLA flags {' '.join(absent)} are not in effect (XLA reads them when JAX starts): "
                      f"set XLA_FLAGS=\"{xla_flags.merged(os.environ.get(xla_flags.ENV, ''), plan.xla_flags)}\" "
                      "for every process (`capidsl launch` scripts do)", RuntimeWarning, stacklevel=1)
    if args.target.endswith(".json"):  # a recipe's stores were prepared while compiling it
        prepare_stores(plan, progress=PrepareBar())

    warnings.showwarning = _show_warning  # RunWarnings as one line each, not Python's file:line form
    logging.getLogger("absl").addFilter(_OneLine())
    summary = run_plan(plan, args.run_dir, max_steps=args.steps)
    if distributed.is_primary():
        print(describe(summary))
    return 0
