"""capidsl: a declarative training DSL for JAX.

The public Python API, imported on first use so that `import capidsl` (and `capidsl validate`)
never pays for JAX: `Recipe` (validated, frozen), `Plan` (compiled, frozen), `compile_plan`
(Recipe → Plan), `run` (Plan → Summary: train, with gs:// run directories and the export at the end) and `train` (the seed's `train.main`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Recipe": ("capidsl.recipe", "Recipe"),
    "RecipeError": ("capidsl.recipe", "RecipeError"),
    "Plan": ("capidsl.plan.plan", "Plan"),
    "compile_plan": ("capidsl.plan.compile", "compile_plan"),
    "run": ("capidsl.runner", "run"),
}

__all__ = [*_EXPORTS, "train"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name == "train":
        return importlib.import_module("capidsl.train")
    raise AttributeError(f"module 'capidsl' has no attribute {name!r}")
