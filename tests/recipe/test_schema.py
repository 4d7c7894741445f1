"""The JSON Schema itself, its worded messages, and its agreement with the Recipe dataclasses."""

from __future__ import annotations

import dataclasses
import json

import pytest
from jsonschema import Draft202012Validator

from capidsl.recipe import Recipe, RecipeError
from capidsl.recipe import sections as S
from capidsl.recipe.schema import schema
from capidsl.resources import resource_path

MODEL = "model: {family: gpt, vocab_size: 256, seq_len: 64, d_model: 64, n_layers: 2, n_heads: 2}\n"
SECTION_CLASSES = {
    "data": S.DataConfig, "training": S.TrainingConfig, "optimizer": S.OptimizerConfig, "stop": S.StopConfig,
    "eval": S.EvalConfig, "checkpoint": S.CheckpointConfig, "mesh": S.MeshConfig, "precision": S.PrecisionConfig,
    "export": S.ExportConfig, "logging": S.LoggingConfig, "pruning": S.PruningConfig,
}


def errors(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        Recipe.from_text(text, name="r.yaml")
    return info.value.render().splitlines()


def _objects(node, path=""):
    """Every (path, subschema) that declares properties."""
    if isinstance(node, dict):
        if "properties" in node and "type" in node:
            yield path, node
        for key, value in node.items():
            if key == "properties":
                for name, sub in value.items():
                    yield from _objects(sub, f"{path}.{name}".lstrip("."))
            elif isinstance(value, (dict, list)) and key not in ("allOf",):
                yield from _objects(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _objects(item, path)


def test_the_schema_is_valid_draft_2020_12():
    data = json.loads(resource_path("schemas", "recipe.schema.json").read_text())
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(data)


def test_every_object_is_closed_and_every_property_described():
    objects = list(_objects(schema()))
    assert len(objects) >= 13
    for path, node in objects:
        assert node["additionalProperties"] is False, path
        for name, sub in node["properties"].items():
            assert sub is not False and sub.get("description"), f"{path}.{name}"


def test_sections_and_keys_are_the_architecture_ones():
    props = schema()["properties"]
    assert list(props) == ["name", "description", "extends", "run_dir", "model", "data", "training", "optimizer",
                           "schedule", "pruning", "stop", "eval", "checkpoint", "mesh", "precision", "export", "logging"]
    seed_training = {"batch_size", "learning_rate", "num_epochs", "early_stopping_patience", "checkpoint_frequency",
                     "seed", "mixed_precision", "gradient_accumulation_steps"}
    assert seed_training <= set(props["training"]["properties"])
    assert {"name", "beta1", "beta2", "epsilon", "weight_decay"} <= set(props["optimizer"]["properties"])


@pytest.mark.parametrize("section, cls", SECTION_CLASSES.items())
def test_dataclass_fields_are_the_schema_keys(section, cls):
    keys = set(schema()["properties"][section]["properties"])
    assert {"async" if f.name == "async_" else f.name for f in dataclasses.fields(cls)} == keys


def test_recipe_fields_are_the_schema_sections():
    names = {f.name for f in dataclasses.fields(Recipe)} - {"source", "notes", "_document"}
    assert names == set(schema()["properties"]) - {"extends"}


@pytest.mark.parametrize("section, cls", SECTION_CLASSES.items())
def test_defaults_of_the_schema_are_the_defaults_of_the_recipe(section, cls):
    if section == "precision":
        return  # absent unless written: desugared from training.mixed_precision
    recipe = Recipe.from_text(MODEL)
    values = getattr(recipe, section)
    for key, spec in schema()["properties"][section]["properties"].items():
        field = "async_" if key == "async" else key
        got = getattr(values, field)
        if key in ("duration", "when", "every"):
            continue  # parsed: checked in test_recipe
        assert S.thaw(got) == spec.get("default"), f"{section}.{key}"


def test_unknown_key_suggests_the_nearest():
    assert errors(MODEL + "optimizer: {nam: adamw, wieght_decay: 0.1}\n") == [
        "r.yaml:2:13: optimizer.nam: unknown key 'nam'; did you mean 'name'?",
        "r.yaml:2:25: optimizer.wieght_decay: unknown key 'wieght_decay'; did you mean 'weight_decay'?",
    ]


def test_unknown_key_without_a_near_one_lists_the_allowed():
    (line,) = errors(MODEL + "eval: {zzz: 1}\n")
    assert line == "r.yaml:2:8: eval.zzz: unknown key 'zzz'; allowed: every, batches"


def test_enum_lists_the_allowed_values():
    assert errors(MODEL + "data: {source: wikipedia}\n") == [
        "r.yaml:2:16: data.source: 'wikipedia' is not one of: 'stdlib', 'text', 'jsonl', 'csv', 'parquet', 'hf', 'npy', 'synthetic'"]


def test_types_are_named():
    assert errors(MODEL + "training: {seed: 1.5, batch_size: [1]}\n") == [
        "r.yaml:2:18: training.seed: expected an integer, got the number 1.5",
        "r.yaml:2:35: training.batch_size: expected an integer, got a list",
    ]
    assert errors(MODEL + "data: {shuffle: 1}\n") == ["r.yaml:2:17: data.shuffle: expected true or false, got the integer 1"]


def test_booleans_are_not_integers():
    assert errors(MODEL + "training: {batch_size: true}\n") == [
        "r.yaml:2:24: training.batch_size: expected an integer, got the boolean true"]


def test_family_options_are_checked_per_family():
    assert errors("model: {family: mlp, input_dim: 4, num_classes: 2, d_model: 8}\n") == [
        "r.yaml:1:52: model.d_model: 'd_model' is not an option of model family 'mlp'"]
    assert errors("model: {family: gpt}\n") == [
        f"r.yaml:1:1: model.{k}: required key is missing (model family 'gpt' needs it)"
        for k in ("d_model", "n_heads", "n_layers", "seq_len", "vocab_size")]


def test_entry_point_families_take_free_options(monkeypatch):
    import importlib.metadata as md

    class EP:
        name = "toy"

    real = md.entry_points
    monkeypatch.setattr(md, "entry_points", lambda **kw: [EP()] if kw.get("group") == "capidsl.models" else real(**kw))
    recipe = Recipe.from_text("model: {family: toy, options: {width: 3, anything: [1, 2]}}\n")
    assert recipe.model.family == "toy" and recipe.model.options == {"width": 3, "anything": (1, 2)}
    assert errors("model: {family: toy, d_model: 3}\n") == [
        "r.yaml:1:22: model.d_model: 'd_model' is an option of the built-in families; put the options of 'toy' under model.options"]


def test_unknown_family_suggests_a_known_one():
    assert errors("model: {family: mpl}\n") == [
        "r.yaml:1:17: model.family: unknown model family 'mpl' (not built in, no entry point in group capidsl.models); did you mean 'mlp'?"]


def test_stop_directions_and_mesh_rules():
    recipe = Recipe.from_text(MODEL + "stop: {when: 'accuracy stalls for 3 evals', directions: {top5: max}}\n"
                              "mesh: {rules: {embed: fsdp, heads: [fsdp, tensor], vocab: null}}\n")
    assert recipe.stop.directions == {"top5": "max"}
    assert recipe.mesh.rules == {"embed": "fsdp", "heads": ("fsdp", "tensor"), "vocab": None}
    assert errors(MODEL + "stop: {directions: {top5: up}}\n") == [
        "r.yaml:2:27: stop.directions.top5: 'up' is not one of: 'min', 'max'"]
    assert errors(MODEL + "mesh: {rules: {embed: data2}}\n") == [
        "r.yaml:2:23: mesh.rules.embed: expected one of 'data', 'fsdp', 'tensor' or a list of 'data', 'fsdp', 'tensor' or null, got the string 'data2'"]
