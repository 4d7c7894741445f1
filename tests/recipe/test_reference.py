"""docs/recipe-reference.md is generated from the schema: it must be current, and it must cover every key."""

import json
import subprocess
import sys
from pathlib import Path

from capidsl.recipe.reference import markdown

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas/recipe.schema.json").read_text())


def test_the_checked_in_reference_is_the_generated_one():
    current = (ROOT / "docs/recipe-reference.md").read_text()
    assert current == markdown(SCHEMA), "docs/recipe-reference.md is stale: run `capidsl schema --markdown > docs/recipe-reference.md`"


def test_every_key_of_every_section_has_a_row():
    text = markdown(SCHEMA)

    def walk(node, path):
        for name, prop in node.get("properties", {}).items():
            if isinstance(prop, dict):
                yield path + (name,), prop
                yield from walk(prop, path + (name,))

    for path, prop in walk(SCHEMA, ()):
        assert f"| `{path[-1]}`" in text, ".".join(path)
        if prop.get("description"):
            assert prop["description"].replace("|", "\\|") in text


def test_the_command_prints_it():
    out = subprocess.run([sys.executable, "-m", "capidsl", "schema", "--markdown"], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout == markdown(SCHEMA)
