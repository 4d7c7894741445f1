"""The built-in model families by name, and the entry-point group that adds others: the one list.

Both the recipe stage (which checks a recipe's `model.family` by name and must never import JAX)
and the model registry (which imports a family's module when it is first asked for) read it here;
importing this module imports nothing.
"""

# name -> "module:attribute" of its ModelFamily class; built-in names win over entry points.
BUILTIN: dict[str, str] = {
    "gpt": "capidsl.models.gpt:GPTFamily",
    "mlp": "capidsl.models.mlp:MLPFamily",
    "capibara": "capidsl.models.capibara:CapibaraFamily",
}

BUILTIN_FAMILIES: tuple[str, ...] = tuple(BUILTIN)

# A third-party package registers a family under this group in its pyproject.toml.
ENTRY_POINT_GROUP = "capidsl.models"
