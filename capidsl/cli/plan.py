"""`capidsl plan RECIPE`: compile the execution plan for the live machine or a simulated cluster and show it."""

from __future__ import annotations

import argparse
import os
import sys

from capidsl.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="a recipe (.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    p.add_argument("--devices", type=int, metavar="N", help="simulate N devices instead of the live machine")
    p.add_argument("--device-kind", default=None, metavar="KIND",
                   help="cpu, a100-40g, a100-80g, h100, h200, l4, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e (with --devices)")
    p.add_argument("--device-memory", metavar="BYTES", help="override the memory per device, e.g. 40GiB")
    p.add_argument("--processes", type=int, metavar="P", help="processes (hosts) in the simulated cluster")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--out", metavar="PLAN.json", help="write the plan to this file (`capidsl run PLAN.json` runs it)")
    p.add_argument("--diff", metavar="OTHER", help="show what changes in the plan between RECIPE and OTHER")
    p.add_argument("--compile", action="store_true",
                   help="also lower and compile the real train step on fake CPU devices and show XLA's memory figures")


def _topology(args):
    from capidsl.plan.topology import live, parse_bytes, simulated

    memory = parse_bytes(args.device_memory) if args.device_memory else None
    if args.devices is None:
        if args.device_kind or args.processes:
            raise UsageError("--device-kind and --processes describe a simulated cluster: give --devices too")
        return live(memory)
    return simulated(args.device_kind or "cpu", args.devices, memory=memory, processes=args.processes)


def run(args: argparse.Namespace) -> int:
    if args.compile and args.devices:
        # XLA reads the fake device count once, when jax is first imported: set it before that happens.
        if "jax" in sys.modules:
            raise UsageError("--compile must be set up before jax is imported")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from rich.console import Console

    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    topology = _topology(args)
    recipe = Recipe.from_yaml(args.recipe, overrides=args.overrides)
    from capidsl.cli.progress import PrepareBar

    plan = compile_plan(recipe, topology, progress=PrepareBar())
    if args.compile:
        import dataclasses

        from capidsl.exec.aot import compiled_memory

        figures = compiled_memory(plan)
        plan = dataclasses.replace(plan, memory=dataclasses.replace(plan.memory, compiled=tuple(sorted(figures.items()))))
    console = Console(width=None if sys.stdout.isatty() else 140)
    if args.diff:
        from capidsl.plan.diff import plan_diff

        other = compile_plan(Recipe.from_yaml(args.diff, overrides=args.overrides), topology)
        changes = plan_diff(plan, other)
        if not changes:
            console.print("the two plans are identical")
        for path, a, b in changes:
            console.print(f"{path}: {a!r} → {b!r}", highlight=False, soft_wrap=True)
        console.print(f"fingerprint: {plan.fingerprint} → {other.fingerprint}")
        return 0
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(plan.dumps() + "\n")
    if args.json:
        print(plan.dumps())
    else:
        from capidsl.plan.render import render

        console.print(render(plan))
        for note in recipe.notes:  # sections the recipe left out, and the defaults that filled them
            console.print(f"info: {note}", highlight=False, soft_wrap=True)
        if args.out:
            console.print(f"wrote {args.out}")
    return 0
