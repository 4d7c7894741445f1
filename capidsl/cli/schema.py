"""`capidsl schema`: print the recipe JSON Schema (for editors and for reading)."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--path", action="store_true", help="print where the schema file is instead of its text")
    parser.add_argument("--markdown", action="store_true",
                        help="print the recipe reference generated from the schema (docs/recipe-reference.md)")


def run(args) -> int:
    from capidsl.recipe.schema import SCHEMA_FILE
    from capidsl.resources import resource_path

    path = resource_path("schemas", SCHEMA_FILE)
    if args.markdown:
        import json

        from capidsl.recipe.reference import markdown

        sys.stdout.write(markdown(json.loads(path.read_text(encoding="utf-8"))))
        return 0
    sys.stdout.write(f"{path}\n" if args.path else path.read_text(encoding="utf-8"))
    return 0
