"""Recipes: YAML with positions, `extends`, `--set` overrides, the JSON Schema, desugaring.

    from capidsl.recipe import Recipe, RecipeError, Location
    recipe = Recipe.from_yaml("recipes/base.yaml", overrides=["training.batch_size=64"])
    recipe.training.duration        # a capidsl.lang Duration (from num_epochs when that is given)
    recipe.location("training.batch_size")   # Location(file, line, column) for plan-time errors

Imports no JAX: `capidsl validate` stands on this package and capidsl.lang alone.
"""

from capidsl.recipe.errors import Location, Problem, RecipeError
from capidsl.recipe.recipe import Recipe

__all__ = ["Recipe", "RecipeError", "Location", "Problem"]
