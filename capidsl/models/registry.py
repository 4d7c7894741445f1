"""Model families by name: the built-in ones, then the `capidsl.models` entry-point group.

A third-party package registers a family in its pyproject.toml:

    [project.entry-points."capidsl.models"]
    toy = "toy_pkg.family:ToyFamily"      # a ModelFamily instance, or a class taking no arguments

and a recipe then names it (`model: {family: toy, ...}`). Recipes name families; they never name
Python import paths (a recipe is data, not code). Built-in names win over entry points.
"""

from __future__ import annotations

import importlib

# A built-in family's module is imported on first use, so listing names imports no JAX.
from capidsl.families import BUILTIN, ENTRY_POINT_GROUP
from capidsl.models.errors import ModelError
from capidsl.models.family import REQUIRED_METHODS, ModelFamily

_loaded: dict[str, ModelFamily] = {}


def _entry_points() -> dict:
    import importlib.metadata  # 60 ms: only when a name is not built in, or all names are listed

    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def family_names() -> list[str]:
    """Every family a recipe may name: built-in first, then the installed entry points, sorted."""
    return list(BUILTIN) + sorted(set(_entry_points()) - set(BUILTIN))


def _instance(obj, name: str, origin: str):
    abstract = sorted(getattr(obj, "__abstractmethods__", ())) if isinstance(obj, type) else []
    family = obj() if isinstance(obj, type) and not abstract else obj
    missing = abstract or [m for m in REQUIRED_METHODS if not callable(getattr(family, m, None))]
    if missing:
        raise ModelError(
            f"{origin} does not provide a model family (missing {', '.join(missing)})",
            subject=f"model family {name!r}",
            hint="an entry point in group capidsl.models must load a capidsl.models.ModelFamily instance or class",
        )
    return family


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`; a ModelError listing the known names if there is none."""
    if name in _loaded:
        return _loaded[name]
    if name in BUILTIN:
        module, attr = BUILTIN[name].split(":")
        family = _instance(getattr(importlib.import_module(module), attr), name, BUILTIN[name])
    else:
        eps = _entry_points()
        if name not in eps:
            raise ModelError(
                f"unknown model family {name!r}",
                subject="model.family",
                hint=f"known families: {', '.join(family_names())} (others come from packages "
                f"registering the entry-point group {ENTRY_POINT_GROUP!r})",
            )
        try:
            loaded = eps[name].load()
        except Exception as e:  # the third-party package is broken: say which one
            raise ModelError(
                f"entry point {eps[name].value!r} failed to load: {type(e).__name__}: {e}",
                subject=f"model family {name!r}",
                hint="reinstall the package that registers it",
            ) from e
        family = _instance(loaded, name, f"entry point {eps[name].value!r}")
    if not getattr(family, "name", None) or family.name == "?":
        try:
            family.name = name
        except AttributeError:
            pass
    _loaded[name] = family
    return family
