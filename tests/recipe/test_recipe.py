"""The frozen Recipe: the seed blocks' meaning, desugaring, language strings located, the API."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from capidsl import lang
from capidsl.recipe import Location, Recipe, RecipeError
from capidsl.recipe.desugar import FULL, MIXED

REPO = Path(__file__).resolve().parents[2]
MODEL = "model: {family: gpt, vocab_size: 256, seq_len: 64, d_model: 64, n_layers: 2, n_heads: 2}\n"


def errors(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        Recipe.from_text(text, name="r.yaml")
    return info.value.render().splitlines()


def test_seed_recipe_keeps_its_values_and_meaning():
    recipe = Recipe.from_yaml(REPO / "recipes" / "seed.yaml")
    t, o = recipe.training, recipe.optimizer
    assert (t.batch_size, t.learning_rate, t.num_epochs, t.early_stopping_patience, t.checkpoint_frequency,
            t.seed, t.mixed_precision, t.gradient_accumulation_steps) == (32, 2e-5, 100, 5, 10, 42, True, 8)
    assert (o.name, o.beta1, o.beta2, o.epsilon, o.weight_decay) == ("adamw", 0.9, 0.999, 1e-8, 0.01)
    assert type(t.learning_rate) is float and type(o.epsilon) is float
    # the canonical fields, filled from the seed keys
    assert t.duration == lang.parse_duration("100 epochs")
    assert recipe.stop.when == lang.parse_stop_rule("val_loss stalls for 5 evals")
    assert recipe.checkpoint.every == lang.parse_cadence("every 10 epochs")
    assert recipe.precision == MIXED
    assert recipe.schedule == lang.parse_schedule("constant(2e-5, rest)")


SEED_ONLY = """training:
  batch_size: 32
  learning_rate: 2e-5
  num_epochs: 100
  early_stopping_patience: 5
  checkpoint_frequency: 10
  seed: 42
  mixed_precision: true
  gradient_accumulation_steps: 8

optimizer:
  name: "adamw"
  beta1: 0.9
  beta2: 0.999
  epsilon: 1e-8
  weight_decay: 0.01
"""
DEFAULT_MODEL_NOTE = ("model: not in the recipe; the default gpt (vocab_size 256, seq_len 128, d_model 128, n_layers 4, "
                      "n_heads 4) was taken")


def test_the_seed_blocks_alone_train_the_default_model_on_the_stdlib_corpus():
    recipe = Recipe.from_text(SEED_ONLY, name="seed-only.yaml")
    base = Recipe.from_yaml(REPO / "recipes" / "base.yaml")
    assert recipe.model == base.model and recipe.data == base.data  # the base recipe's GPT, on the stdlib corpus
    assert recipe.notes == (DEFAULT_MODEL_NOTE, "data: not in the recipe; the default stdlib corpus (byte tokenizer) was taken")
    assert recipe.location("model.d_model") == Location("seed-only.yaml", 1, 1)  # nowhere written: the file
    # the shipped seed recipe is these blocks and a name, nothing else
    seed = Recipe.from_yaml(REPO / "recipes" / "seed.yaml")
    assert set(seed.to_dict()) == {"name", "training", "optimizer"} and seed.notes == recipe.notes
    assert dataclasses.replace(seed, name=None) == recipe


def test_the_default_model_is_the_base_recipes_and_a_written_one_is_taken_as_written():
    import json

    from capidsl.recipe.yaml12 import read_yaml
    from capidsl.resources import resource_path

    schema = json.loads(resource_path("schemas", "recipe.schema.json").read_text())
    base = read_yaml((REPO / "recipes" / "base.yaml").read_text(), "base.yaml").data
    assert schema["properties"]["model"]["default"] == base["model"]
    written = Recipe.from_text(MODEL + SEED_ONLY)
    assert written.model.d_model == 64 and not any(n.startswith("model:") for n in written.notes)
    assert errors("model: {d_model: 64}\n")[0] == (
        "r.yaml:1:1: model.n_heads: required key is missing (model family 'gpt' needs it)")


def test_set_tunes_the_default_model_and_a_family_starts_afresh():
    tuned = Recipe.from_text(SEED_ONLY, overrides=["model.d_model=64", "model.n_layers=1"])
    assert (tuned.model.family, tuned.model.d_model, tuned.model.n_layers, tuned.model.seq_len) == ("gpt", 64, 1, 128)
    assert tuned.notes[0] == DEFAULT_MODEL_NOTE + ", then changed by --set"
    assert tuned.location("model.d_model") == Location("<--set model.d_model=64>", 1, 15)
    mlp = Recipe.from_text(SEED_ONLY, overrides=["model.family=mlp", "model.input_dim=4", "model.num_classes=3"])
    assert (mlp.model.family, mlp.model.num_classes, dict(mlp.model.options)) == ("mlp", 3, {"input_dim": 4, "num_classes": 3})
    whole = Recipe.from_text(SEED_ONLY, overrides=["model={family: mlp, input_dim: 4, num_classes: 2}"])
    assert whole.model.family == "mlp" and not any(n.startswith("model:") for n in whole.notes)


def test_base_recipe_loads():
    recipe = Recipe.from_yaml(REPO / "recipes" / "base.yaml")
    assert recipe.model.family == "gpt" and recipe.model.d_model == 128 and recipe.data.source == "stdlib"
    assert recipe.training.duration == lang.parse_duration("700 steps")
    assert recipe.stop.when == lang.parse_stop_rule("val_loss stalls for 3 evals or not finite(loss)")
    assert recipe.eval.every == lang.parse_cadence("every 100 steps")
    assert recipe.checkpoint.every == lang.parse_cadence("every 350 steps")
    assert recipe.precision == FULL
    assert Path(REPO / "recipes" / "base.yaml").read_text().startswith("# yaml-language-server: $schema=")


def test_patience_is_joined_with_stop_when_by_or():
    recipe = Recipe.from_text(MODEL + "training: {early_stopping_patience: 3}\nstop: {when: 'not finite(loss)'}\n")
    assert recipe.stop.when == lang.parse_stop_rule("not finite(loss) or val_loss stalls for 3 evals")


def test_mixed_precision_false_is_float32():
    assert Recipe.from_text(MODEL + "training: {mixed_precision: false}\n").precision == FULL
    recipe = Recipe.from_text(MODEL + "precision: {compute: bfloat16}\n")
    assert (recipe.precision.params, recipe.precision.compute, recipe.precision.output) == ("float32", "bfloat16", "float32")


def test_conflicting_sugar_and_canonical_keys_are_all_reported():
    assert errors(MODEL + "training: {num_epochs: 3, duration: 9 steps, checkpoint_frequency: 1, mixed_precision: true}\n"
                  "checkpoint: {every: every 10 steps}\nprecision: {}\n") == [
        "r.yaml:2:12: training.num_epochs: conflicts with training.duration (both set how long to train); keep one",
        "r.yaml:2:46: training.checkpoint_frequency: conflicts with checkpoint.every (both set the checkpoint cadence); keep one",
        "r.yaml:2:71: training.mixed_precision: conflicts with precision (both set the dtypes); keep one",
    ]


def test_null_canonical_key_does_not_conflict():
    recipe = Recipe.from_text(MODEL + "training: {num_epochs: 3, duration: null}\n")
    assert recipe.training.duration == lang.parse_duration("3 epochs")


def test_language_fields_hold_asts():
    recipe = Recipe.from_text(MODEL + "training: {duration: 2.5M tokens}\n"
                              "schedule: linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)\n"
                              "logging: {every: every 5 steps}\n")
    assert isinstance(recipe.training.duration, lang.Duration)
    assert isinstance(recipe.schedule, lang.Schedule)
    assert recipe.logging.every == lang.parse_cadence("every 5 steps")
    assert recipe.eval.every == lang.parse_cadence("every epoch")  # the default


# Language errors land on the character inside the YAML scalar.

@pytest.mark.parametrize("line, column", [
    ("stop: {when: val_loss stals for 5 evals}", 23),             # plain, flow
    ("stop: {when: 'val_loss stals for 5 evals'}", 24),           # single-quoted
    ("stop: {when: \"val_loss stals for 5 evals\"}", 24),         # double-quoted
    ("stop: {when: 'it''s stalls for 5 evals'}", 17),             # '' is one character of the value
    ("stop: {when: \"\\x76al_loss stals for 5 evals\"}", 27),     # an escape is four source characters
])
def test_language_error_columns_in_one_line_scalars(line, column):
    (msg,) = errors(MODEL + line + "\n")
    assert msg.startswith(f"r.yaml:2:{column}: stop.when: "), msg


def test_language_error_columns_in_multiline_scalars():
    (msg,) = errors(MODEL + "stop:\n  when: val_loss stalls for 5 evals\n    or  nt finite(loss)\n")
    assert msg.startswith("r.yaml:4:12: stop.when: unexpected `finite`"), msg
    (msg,) = errors(MODEL + "stop:\n  when: 'val_loss stalls for 5 evals\n\n    or  nt finite(loss)'\n")
    assert msg.startswith("r.yaml:5:12: stop.when: unexpected `finite`"), msg


def test_language_error_in_a_block_scalar_is_best_effort():
    (msg,) = errors(MODEL + "stop:\n  when: >\n    val_loss stalls for 5 evals\n    or nt finite(loss)\n")
    assert msg.startswith("r.yaml:5:11: stop.when: unexpected `finite`"), msg


def test_language_and_schema_problems_are_reported_together():
    assert errors(MODEL + "training: {batch_size: 0, duration: 5 stepz}\n") == [
        "r.yaml:2:24: training.batch_size: must be at least 1, got 0",
        "r.yaml:2:43: training.duration: unexpected `z` in a duration; expected the end of the expression",
    ]


# The API.

def test_recipe_is_frozen_and_comparable(tmp_path):
    a = Recipe.from_text(MODEL)
    b = Recipe.from_text("# a comment\n" + MODEL, name="other")
    assert a == b and hash(a.training) == hash(b.training)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.training = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.training.batch_size = 1
    with pytest.raises(TypeError):
        a.model.options["d_model"] = 3


def test_location_and_to_dict(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MODEL + "training:\n  batch_size: 16\n")
    recipe = Recipe.from_yaml(path)
    assert recipe.source == str(path)
    assert recipe.location("training.batch_size") == Location(str(path), 3, 15)
    assert recipe.location("model.d_model") == Location(str(path), 1, 61)
    assert recipe.location("training.seed") == Location(str(path), 2, 1)  # not written: its section
    assert recipe.location("eval.every") is None or recipe.location("eval.every").line == 1
    assert recipe.to_dict() == {"model": {"family": "gpt", "vocab_size": 256, "seq_len": 64, "d_model": 64,
                                          "n_layers": 2, "n_heads": 2}, "training": {"batch_size": 16}}
    full = recipe.to_dict(defaults=True)
    assert full["training"]["batch_size"] == 16 and full["training"]["seed"] == 0 and full["eval"]["every"] == "every epoch"


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(tmp_path / "nope.yaml")
    assert "no such file" in info.value.render()


def test_recipe_error_is_a_capidsl_error_with_exit_code_1():
    from capidsl.errors import CapidslError

    with pytest.raises(CapidslError) as info:
        Recipe.from_text("[")
    assert info.value.exit_code == 1 and info.value.problems


def test_location_of_a_character_inside_a_language_string(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(MODEL + "schedule: 'linear(0 -> 1e-3, 100 steps) then cosine(1e-3 -> 1e-4, rest)'\n"
                    "training: {num_epochs: 3}\n")
    recipe = Recipe.from_yaml(path)
    column = str(recipe.schedule).index("cosine") + 1  # e.g. a LangError raised by schedule.resolve()
    assert recipe.location("schedule", column) == Location(str(path), 2, 11 + column)
    assert recipe.location("schedule") == Location(str(path), 2, 11)
    # a desugared field was not written: its section is where it came from
    assert recipe.location("training.duration", 1) == Location(str(path), 3, 1)


def test_the_public_api_is_lazy_and_the_recipe_side_imports_no_jax():
    import subprocess
    import sys

    code = ("import sys, capidsl; r = capidsl.Recipe.from_yaml('recipes/seed.yaml');"
            "print(type(r).__name__, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.split() == ["Recipe", "False"]
    import capidsl

    assert capidsl.Recipe is Recipe and callable(capidsl.compile_plan) and callable(capidsl.train.main)
