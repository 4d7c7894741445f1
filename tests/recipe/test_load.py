"""`extends` (deep merge, lists replaced, cycles, missing files, chains) and `--set` overrides."""

from __future__ import annotations

import pytest

from capidsl.errors import UsageError
from capidsl.recipe import Location, Recipe, RecipeError
from capidsl.recipe.load import deep_merge, load_file

MODEL = "model: {family: gpt, vocab_size: 256, seq_len: 64, d_model: 64, n_layers: 2, n_heads: 2}\n"


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def errors(callable_, *args, **kwargs) -> list[str]:
    with pytest.raises(RecipeError) as info:
        callable_(*args, **kwargs)
    return info.value.render().splitlines()


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": [1, 2, 3]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [9]}, "c": 2}) == {"a": {"x": 1, "y": [9]}, "b": 1, "c": 2}
    assert deep_merge(base, {"a": None}) == {"a": None, "b": 1}
    assert base == {"a": {"x": 1, "y": [1, 2, 3]}, "b": 1}  # not modified


def test_extends_is_relative_to_the_file_and_keeps_positions(tmp_path):
    write(tmp_path, "parents/base.yaml", MODEL + "training:\n  batch_size: 32\n  seed: 1\n")
    write(tmp_path, "runs/child.yaml", "extends: ../parents/base.yaml\ntraining:\n  seed: 7\n")
    doc = load_file(tmp_path / "runs/child.yaml")
    assert doc.data["training"] == {"batch_size": 32, "seed": 7}
    assert "extends" not in doc.data
    assert doc.positions[("training", "seed")].value.file.endswith("child.yaml")
    parent = doc.positions[("training", "batch_size")].value
    assert parent.file.endswith("base.yaml") and parent.line == 3 and parent.chain[0].endswith("child.yaml")


def test_lists_are_replaced_not_merged(tmp_path):
    write(tmp_path, "base.yaml", "model: {family: mlp, input_dim: 4, num_classes: 3, hidden: [64, 64, 64]}\n")
    write(tmp_path, "child.yaml", "extends: base.yaml\nmodel: {hidden: [8]}\n")
    recipe = Recipe.from_yaml(tmp_path / "child.yaml")
    assert recipe.model.options["hidden"] == (8,)
    assert recipe.location("model.hidden[0]") == Location(str(tmp_path / "child.yaml"), 2, 18)


def test_missing_parent_is_located_at_the_extends_line(tmp_path):
    write(tmp_path, "child.yaml", MODEL + "extends: nowhere.yaml\n")
    assert errors(Recipe.from_yaml, tmp_path / "child.yaml") == [
        f"{tmp_path}/child.yaml:2:10: extends: no such file: {tmp_path}/nowhere.yaml"]


def test_cycles_are_named(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n" + MODEL)
    write(tmp_path, "b.yaml", "extends: c.yaml\n")
    write(tmp_path, "c.yaml", "extends: a.yaml\n")
    (line,) = errors(Recipe.from_yaml, tmp_path / "a.yaml")
    assert "extends cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml" in line
    assert line.startswith(f"{tmp_path}/c.yaml:1:10: extends:")


def test_self_extension_is_a_cycle(tmp_path):
    write(tmp_path, "a.yaml", "extends: ./a.yaml\n")
    (line,) = errors(Recipe.from_yaml, tmp_path / "a.yaml")
    assert "extends cycle: a.yaml -> a.yaml" in line


def test_problems_in_a_parent_show_the_chain(tmp_path):
    write(tmp_path, "base.yaml", MODEL + "optimizer: {name: adamq}\n")
    write(tmp_path, "mid.yaml", "extends: base.yaml\n")
    write(tmp_path, "top.yaml", "extends: mid.yaml\n")
    (line,) = errors(Recipe.from_yaml, tmp_path / "top.yaml")
    assert line.startswith(f"{tmp_path}/base.yaml:2:19: optimizer.name: 'adamq' is not one of")
    assert line.endswith(f"(extends chain: {tmp_path}/top.yaml -> {tmp_path}/mid.yaml -> {tmp_path}/base.yaml)")


def test_yaml_errors_in_a_parent_show_the_chain(tmp_path):
    write(tmp_path, "base.yaml", "a: [1\n")
    write(tmp_path, "top.yaml", "extends: base.yaml\n")
    (line,) = errors(Recipe.from_yaml, tmp_path / "top.yaml")
    assert line.startswith(f"{tmp_path}/base.yaml:2:1: invalid YAML") and "extends chain" in line


def test_extends_must_be_a_path(tmp_path):
    write(tmp_path, "a.yaml", "extends: [a, b]\n" + MODEL)
    assert errors(Recipe.from_yaml, tmp_path / "a.yaml") == [
        f"{tmp_path}/a.yaml:1:10: extends: must be the path of a recipe file (relative to this one)"]


def test_from_text_resolves_extends_against_base_dir(tmp_path):
    write(tmp_path, "base.yaml", MODEL)
    recipe = Recipe.from_text("extends: base.yaml\nname: t\n", base_dir=tmp_path)
    assert recipe.name == "t" and recipe.model.d_model == 64


# --set


def test_overrides_parse_values_as_yaml(tmp_path):
    path = write(tmp_path, "r.yaml", MODEL + "training: {batch_size: 32}\n")
    recipe = Recipe.from_yaml(path, overrides=["training.batch_size=64", "training.learning_rate=2e-5",
                                               "mesh.rules={embed: fsdp}", "name=run 1", "stop.when=not finite(loss)"])
    assert recipe.training.batch_size == 64 and recipe.training.learning_rate == 2e-5
    assert recipe.mesh.rules == {"embed": "fsdp"} and recipe.name == "run 1"
    assert str(recipe.stop.when) == "not finite(loss)"
    assert recipe.to_dict()["training"] == {"batch_size": 64, "learning_rate": 2e-5}
    assert recipe.location("training.batch_size") == Location("<--set training.batch_size=64>", 1, 21)


def test_override_problems_use_the_same_schema_and_say_did_you_mean(tmp_path):
    path = write(tmp_path, "r.yaml", MODEL)
    assert errors(Recipe.from_yaml, path, overrides=["training.bach_size=64", "training.seed=abc"]) == [
        "<--set training.bach_size=64>:1:1: training.bach_size: unknown key 'bach_size'; did you mean 'batch_size'?",
        "<--set training.seed=abc>:1:15: training.seed: expected an integer, got the string 'abc'",
    ]


def test_override_language_errors_point_into_the_argument(tmp_path):
    path = write(tmp_path, "r.yaml", MODEL)
    assert errors(Recipe.from_yaml, path, overrides=["eval.every=every 5 stepz"]) == [
        "<--set eval.every=every 5 stepz>:1:24: eval.every: unexpected `z` in a cadence; expected the end of the expression"]


def test_override_yaml_errors_are_located(tmp_path):
    path = write(tmp_path, "r.yaml", MODEL)
    (line,) = errors(Recipe.from_yaml, path, overrides=["mesh.rules={a: [b"])
    assert line.startswith("<--set mesh.rules={a: [b>:1:") and "invalid YAML" in line


def test_override_into_a_non_mapping(tmp_path):
    path = write(tmp_path, "r.yaml", MODEL + "name: n\n")
    assert errors(Recipe.from_yaml, path, overrides=["name.x=1"]) == [
        "<--set name.x=1>:1:1: name: is not a mapping, so it has no keys to set"]


@pytest.mark.parametrize("arg", ["training.batch_size", "=3", "training..seed=1", "training.batch-size=3", " =1"])
def test_malformed_overrides_are_usage_errors(tmp_path, arg):
    path = write(tmp_path, "r.yaml", MODEL)
    with pytest.raises(UsageError):
        Recipe.from_yaml(path, overrides=[arg])


def test_extends_cannot_be_overridden(tmp_path):
    path = write(tmp_path, "r.yaml", MODEL)
    assert errors(Recipe.from_yaml, path, overrides=["extends=x.yaml"]) == [
        "<--set extends=x.yaml>:1:1: extends: extends cannot be overridden; write it in the recipe"]
