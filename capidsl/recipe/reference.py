"""The recipe reference as Markdown, generated from the JSON Schema so that it cannot drift.

`capidsl schema --markdown` prints it; docs/recipe-reference.md is that output, and a test fails
when the file is stale. One section per top-level key, one table row per property (nested objects
get their own sub-section), with the type, the default and the schema's own description.
"""

from __future__ import annotations

import json
from typing import Any

HEADER = """# Recipe reference

Generated from `schemas/recipe.schema.json` by `capidsl schema --markdown`; do not edit by hand
(a test fails when this file and the schema disagree). Keys written in the recipe language are
described in [language.md](language.md); the seed's keys and what they mean are in
[architecture.md](architecture.md).
"""


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    t = prop.get("type")
    words = t if isinstance(t, list) else [t] if t else []
    if "array" in words and isinstance(prop.get("items"), dict) and prop["items"].get("type"):
        words = [f"array of {prop['items']['type']}" if w == "array" else w for w in words]
    shown = " or ".join(str(w) for w in words) or "any"
    bounds = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{sign} {prop[key]}")
    return shown + (f" ({', '.join(bounds)})" if bounds else "")


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return "—"
    return f"`{json.dumps(prop['default'], ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section(path: str, node: dict[str, Any], level: int, out: list[str]) -> None:
    out.append(f"{'#' * level} `{path}`\n")
    if node.get("description"):
        out.append(node["description"] + "\n")
    if "default" in node:
        out.append(f"Default: {_default(node)}\n")
    props = node.get("properties", {})
    required = set(node.get("required", ()))
    nested = []
    if props:
        out.append("| key | type | default | description |")
        out.append("|-----|------|---------|-------------|")
        for name, prop in props.items():
            if not isinstance(prop, dict):
                continue
            key = f"`{name}`" + (" (required)" if name in required else "")
            out.append(f"| {key} | {_cell(_type(prop))} | {_cell(_default(prop))} | {_cell(prop.get('description', ''))} |")
            if prop.get("properties"):
                nested.append((name, prop))
        out.append("")
    for name, prop in nested:
        _section(f"{path}.{name}", prop, level + 1, out)


def markdown(schema: dict[str, Any]) -> str:
    """The whole reference: top-level scalars first, then one section per object-valued key."""
    out = [HEADER]
    top = schema.get("properties", {})
    scalars = {k: v for k, v in top.items() if not v.get("properties")}
    out.append("## Top-level keys\n")
    out.append("| key | type | default | description |")
    out.append("|-----|------|---------|-------------|")
    required = set(schema.get("required", ()))
    for name, prop in top.items():
        if name in scalars:
            key = f"`{name}`" + (" (required)" if name in required else "")
            out.append(f"| {key} | {_cell(_type(prop))} | {_cell(_default(prop))} | {_cell(prop.get('description', ''))} |")
        else:
            out.append(f"| `{name}`{' (required)' if name in required else ''} | object | {_cell(_default(prop))} | "
                       f"{_cell(prop.get('description', ''))} See [`{name}`](#{name}). |")
    out.append("")
    for name, prop in top.items():
        if name not in scalars:
            _section(name, prop, 2, out)
    return "\n".join(out).rstrip() + "\n"
