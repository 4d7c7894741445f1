"""`capidsl validate PATH...`: check recipe files (or folders of them) and report every problem.

Exit 0 when every recipe is valid, 1 when any is not, 2 for usage errors (a path that does not
exist, a folder without recipes, a malformed --set). Imports only capidsl.recipe and
capidsl.lang: never JAX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from capidsl.errors import UsageError

FORMATS = ("human", "json", "github")
SUFFIXES = (".yaml", ".yml")


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="recipe files, or folders searched recursively for *.yaml and *.yml")
    parser.add_argument("--format", choices=FORMATS, default="human",
                        help="human (default), json, or github (GitHub Actions ::error annotations)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key in every recipe, e.g. training.batch_size=64 (value as YAML); repeatable")


def recipe_files(paths: list[str]) -> list[str]:
    """The files named, and every *.yaml/*.yml under the folders named, in a stable order."""
    out: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise UsageError(f"{given}: no *.yaml or *.yml files in this folder")
            out.extend(str(p) for p in found)
        elif path.exists():
            out.append(given)
        else:
            raise UsageError(f"{given}: no such file or folder")
    return list(dict.fromkeys(out))


def check_files(files: list[str], overrides: list[str]) -> list[tuple[str, list]]:
    """(file, problems) per file; an empty list means valid."""
    from capidsl.recipe import Recipe, RecipeError

    results = []
    for file in files:
        try:
            Recipe.from_yaml(file, overrides=overrides)
            results.append((file, []))
        except RecipeError as err:
            results.append((file, err.problems))
    return results


def run(args) -> int:
    results = check_files(recipe_files(args.paths), args.overrides)
    render = {"human": _human, "json": _json, "github": _github}[args.format]
    sys.stdout.write(render(results))
    return 1 if any(problems for _, problems in results) else 0


def _human(results) -> str:
    lines = []
    for file, problems in results:
        if problems:
            lines.extend(p.render() if p.location else f"{file}: {p.render()}" for p in problems)
    bad = sum(1 for _, problems in results if problems)
    count = sum(len(problems) for _, problems in results)
    files = f"{len(results)} recipe{'s' if len(results) != 1 else ''}"
    if bad:
        lines.append(f"{files} checked: {bad} invalid, {count} problem{'s' if count != 1 else ''}")
    else:
        lines.append(f"{files} checked: all valid")
    return "\n".join(lines) + "\n"


def _json(results) -> str:
    doc = {
        "valid": all(not problems for _, problems in results),
        "files": [{"file": file, "valid": not problems, "problems": [p.to_json() for p in problems]}
                  for file, problems in results],
    }
    return json.dumps(doc, indent=2) + "\n"


def _escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def _github(results) -> str:
    lines = []
    for file, problems in results:
        for p in problems:
            loc = p.location
            where = f"file={_escape(loc.file if loc else file, True)}"
            if loc:
                where += f",line={loc.line},col={loc.column}"
            text = p.render() if not loc else p.render()[len(str(loc)) + 2:]
            lines.append(f"::error {where},title=capidsl validate::{_escape(text)}")
    return "\n".join(lines) + ("\n" if lines else "")
