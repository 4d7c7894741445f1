"""The `capidsl` command: parse arguments, hand over to one command module, render its errors.

Each command lives in `capidsl/cli/<name>.py` with `add_arguments(parser)` and `run(args) -> int`.
Command modules import nothing heavy at module level, so `capidsl --help` and `capidsl validate`
stay fast and never import JAX.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from capidsl.errors import CapidslError

# name -> one-line help; the module capidsl.cli.<name> implements it.
COMMANDS: dict[str, str] = {
    "validate": "check recipes against the schema and the recipe language",
    "schema": "print the recipe JSON Schema",
    "explain": "say in words what a recipe-language expression means",
    "data": "prepare token stores: tokenise a recipe's sources once (run and plan do it when needed)",
    "plan": "compile a recipe into an execution plan (dry run, any topology)",
    "run": "train: compile the plan and execute it (resumes an existing run directory)",
    "sample": "generate text from a trained run",
    "export": "export a trained run's model (ONNX or a Hugging Face directory, verified against JAX)",
    "sync": "upload a run directory to gs:// (completes uploads that failed during the run)",
    "launch": "print launcher files (SLURM, Kubernetes) for a multi-host run of a plan",
    "report": "plot a run's curves to a PNG and print its summary",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with one line, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="capidsl", description="A declarative training DSL for JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"capidsl.cli.{name.replace('-', '_')}")
        except ModuleNotFoundError as err:
            if err.name == f"capidsl.cli.{name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CapidslError as err:
        print(err.render(), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the disk or the network said no, below every stage's own checks
        where = f"{err.filename}: " if err.filename else ""
        print(f"{where}{err.strerror or err} (errno {err.errno})" if err.errno else f"{where}{err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
