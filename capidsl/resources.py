"""Locate the grammar, schema and recipe files shipped with capidsl.

They live at the repository root (one source of truth) and are copied into the wheel as
`capidsl/_resources/<kind>/`; an editable install reads them from the source tree instead.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_KINDS = ("grammar", "schemas", "recipes")


def resource_dir(kind: str) -> Path:
    """The folder holding resources of `kind` ("grammar", "schemas" or "recipes")."""
    if kind not in _KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; expected one of {_KINDS}")
    packaged = _PACKAGE / "_resources" / kind
    if packaged.is_dir():
        return packaged
    source = _PACKAGE.parent / kind
    if source.is_dir():
        return source
    raise FileNotFoundError(f"capidsl resource folder {kind!r} is missing from {packaged} and {source}")


def resource_path(kind: str, name: str) -> Path:
    """The path of one resource file, e.g. resource_path("schemas", "recipe.schema.json")."""
    return resource_dir(kind) / name
