"""Property: whatever a recipe file holds, loading it either succeeds or raises RecipeError whose
every problem has a location — never another exception."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capidsl.errors import UsageError
from capidsl.recipe import Recipe, RecipeError
from capidsl.recipe.yaml12 import read_yaml

REPO = Path(__file__).resolve().parents[2]
BASES = [(REPO / "recipes" / name).read_text() for name in ("base.yaml", "seed.yaml")]
DATA = [read_yaml(text, "base").data for text in BASES]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=32),
    st.text(max_size=20), st.sampled_from(["every 3 steps", "5 epochs", "val_loss < 1", "cosine(1 -> 0, rest)",
                                           "gpt", "mlp", "adamw", "float32", "auto", "-1", "1e-8", "~", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def paths(data, prefix=()):
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out.extend(paths(value, prefix + (key,)))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out.extend(paths(value, prefix + (i,)))
    return out


def check(text: str, overrides=()):
    try:
        Recipe.from_text(text, name="m.yaml", overrides=overrides)
    except RecipeError as err:
        assert err.problems
        for p in err.problems:
            assert p.location is not None, p
            assert p.location.line >= 1 and p.location.column >= 1, p
            assert p.render()


def _parent(data, path):
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated(draw):
    data = copy.deepcopy(draw(st.sampled_from(DATA)))
    for _ in range(draw(st.integers(1, 3))):
        all_paths = paths(data)
        if not all_paths:
            break
        path = draw(st.sampled_from(all_paths))
        parent = _parent(data, path)
        action = draw(st.sampled_from(["drop", "rename", "replace"]))
        if action == "drop":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            new = draw(st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["bach_size", "trainig", "familly", "1", "true"])))
            parent[new] = parent.pop(path[-1])
        else:
            parent[path[-1]] = draw(values)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@SETTINGS
@given(mutated())
def test_mutated_recipes_validate_or_fail_cleanly(text):
    check(text)


@SETTINGS
@given(st.sampled_from(BASES), st.integers(0, 10_000), st.integers(0, 8), st.text(max_size=6))
def test_edited_recipe_text_validates_or_fails_cleanly(base, at, delete, insert):
    at %= len(base) + 1
    check(base[:at] + insert + base[at + delete:])


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_validates_or_fails_cleanly(text):
    check(text)


yaml_ish = st.lists(st.sampled_from(["a", ":", " ", "\n", "-", "[", "]", "{", "}", ",", "&x", "*x", "!!", "'", '"',
                                     "#", "|", ">", "? ", "model", "training", "1e-5", "\t", "---", "%YAML 1.2"]),
                    max_size=40).map("".join)


@SETTINGS
@given(yaml_ish)
def test_random_yaml_shaped_text_validates_or_fails_cleanly(text):
    check(text)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["training.batch_size", "training.bach_size", "model.d_model", "stop.when",
                                            "eval.every", "mesh", "name.x", "schedule", "a.b.c"]),
                          st.text(max_size=15)), max_size=3))
def test_random_overrides_fail_cleanly(pairs):
    try:
        check(BASES[0], [f"{k}={v}" for k, v in pairs])
    except UsageError:
        pass


exprs = st.lists(st.sampled_from(["val_loss", "stalls", "for", "5", "evals", "or", "not", "finite(loss)", "(", ")",
                                  "<", "1e-3", "by", "lossy", "'", "\\", "é", "x", "steps", "  "]),
                 min_size=1, max_size=8).map(" ".join)


@SETTINGS
@given(exprs, st.sampled_from(["plain", "single", "double"]), st.booleans())
def test_language_errors_point_at_the_offending_character(expr, style, flow):
    from capidsl import lang

    if style == "single":
        scalar = "'" + expr.replace("'", "''") + "'"
    elif style == "double":
        scalar = '"' + expr.replace("\\", "\\\\").replace('"', '\\"').replace("é", "\\u00e9") + '"'
    else:
        scalar = expr
    prefix = "stop: {when: " if flow else "stop:\n  when: "
    text = "model: {family: gpt, vocab_size: 2, seq_len: 2, d_model: 2, n_layers: 1, n_heads: 1}\n" + prefix + scalar + ("}\n" if flow else "\n")
    try:
        if read_yaml(text, "p.yaml").data["stop"]["when"] != expr:
            return  # not a plain scalar YAML reads back as written
    except (RecipeError, TypeError, KeyError):
        return
    try:
        lang.parse_stop_rule(expr)
        return
    except lang.LangError as err:
        column = err.column
    try:
        Recipe.from_text(text, name="p.yaml")
    except RecipeError as err:
        (problem,) = [p for p in err.problems if p.path == "stop.when"]
    if column is None or column > len(expr):
        return
    line = text.splitlines()[problem.location.line - 1]
    source_char = line[problem.location.column - 1]
    wanted = expr[column - 1]
    if style == "double" and wanted in "\\\"é":
        assert source_char == "\\"
    elif style == "single" and wanted == "'":
        assert source_char == "'"
    else:
        assert source_char == wanted, (text, column, problem.render())
