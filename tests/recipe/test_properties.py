"""Property: whatever a recipe file holds, loading it either succeeds or raises RecipeError whose
every problem has a location — never another exception."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
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


# Hostile numbers: every number/integer key of the schema, given a value no float holds (a 400-digit
# integer, 1e400), a non-finite one (.inf, .nan) or an integer beyond 64 bits, is a located problem at
# that value — in the file and through --set — never an OverflowError further on.

SCHEMA = json.loads((REPO / "schemas" / "recipe.schema.json").read_text())
SENTINEL = "HOSTILE_NUMBER"
MODELS = {"gpt": DATA[0]["model"], "mlp": {"family": "mlp", "input_dim": 4, "num_classes": 2},
          "capibara": {"family": "capibara", "vocab_size": 256, "seq_len": 16, "d_model": 16, "n_layers": 1}}


def _types(spec: dict) -> set[str]:
    t = spec.get("type", [])
    out = {t} if isinstance(t, str) else set(t)
    for branch in spec.get("anyOf", []):
        out |= _types(branch)
    return out


def numeric_keys(node: dict = SCHEMA, prefix: tuple = ()) -> dict[tuple, set[str]]:
    """Every key path whose schema type is number or integer (a list's items as index 0), with its types."""
    out: dict[tuple, set[str]] = {}
    for key, spec in node.get("properties", {}).items():
        if not isinstance(spec, dict):
            continue
        path, types = prefix + (key,), _types(spec)
        if types & {"number", "integer"}:
            out[path] = types & {"number", "integer"}
        items = spec.get("items")
        if isinstance(items, dict) and _types(items) & {"number", "integer"}:
            out[path + (0,)] = _types(items) & {"number", "integer"}
        if "object" in types:
            out.update(numeric_keys(spec, path))
    return out


NUMERIC = numeric_keys()


def _family(key: str) -> str:
    """A built-in family that takes model option `key`."""
    for rule in SCHEMA["properties"]["model"]["allOf"]:
        family = rule["if"]["properties"]["family"].get("const")
        if family and rule["then"]["properties"].get(key) is not False:
            return family
    raise AssertionError(key)


def _recipe_with(path: tuple, literal: str) -> tuple[str, int]:
    """base.yaml with `literal` written as the value at `path`; the text and the literal's line."""
    data = copy.deepcopy(DATA[0])
    if path[0] == "model":
        data["model"] = dict(MODELS[_family(path[1])])
    *parents, last = path
    value = SENTINEL
    if last == 0:  # a list's item
        *parents, last = parents
        value = [SENTINEL]
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value
    text = yaml.safe_dump(data, sort_keys=False)
    line = text[:text.index(SENTINEL)].count("\n") + 1
    return text.replace(SENTINEL, literal), line


def _dotted(path: tuple) -> str:
    return ".".join(p for p in path if isinstance(p, str)) + ("[0]" if path[-1] == 0 else "")


def located_problem(text: str, line: int | None, path: tuple, overrides=()) -> None:
    """Loading fails with a RecipeError, all its problems located, one of them at `path` (on `line`)."""
    with pytest.raises(RecipeError) as info:
        Recipe.from_text(text, name="h.yaml", overrides=overrides)
    problems = info.value.problems
    assert all(p.location is not None and p.location.line >= 1 and p.location.column >= 1 for p in problems)
    here = [p for p in problems if p.path == _dotted(path)]
    assert here, info.value.render()
    if line is not None:
        assert any(p.location.file == "h.yaml" and p.location.line == line for p in here), info.value.render()
    else:
        assert any(p.location.file.startswith("<--set ") for p in here), info.value.render()


def _override(path: tuple, literal: str) -> str:
    if path[-1] == 0:
        return f"{'.'.join(path[:-1])}=[{literal}]"
    return f"{'.'.join(path)}={literal}"


BEYOND_FLOAT = st.one_of(
    st.integers(309, 4400).map(lambda n: "1" + "0" * n), st.integers(309, 4400).map(lambda n: "-9" + "9" * n),
    st.integers(309, 10**6).map(lambda e: f"1e{e}"), st.integers(309, 10**6).map(lambda e: f"-2.5E+{e}"),
    st.integers(325, 10**6).map(lambda e: f"3e-{e}"), st.integers(256, 600).map(lambda n: "0x" + "f" * n),
    st.sampled_from(["0o" + "7" * 400, "!!float 1e999", "!!int " + "1" * 400, "1.7976931348623159e308"]),
)
NON_FINITE = st.sampled_from([".inf", "-.inf", "+.Inf", ".nan", ".NaN", "!!float .inf", "!!float -.INF"])
BEYOND_INT64 = st.one_of(st.integers(2**63, 10**300), st.integers(-(10**300), -(2**63) - 1)).map(str)


@pytest.mark.parametrize("path", list(NUMERIC), ids=_dotted)
def test_every_numeric_key_refuses_numbers_no_float_holds(path):
    for literal in ("1" + "0" * 400, "1e400", ".inf"):
        text, line = _recipe_with(path, literal)
        located_problem(text, line, path)
        located_problem(_recipe_with(path, "1")[0], None, path, overrides=[_override(path, literal)])


@SETTINGS
@given(st.sampled_from(list(NUMERIC)), st.one_of(BEYOND_FLOAT, NON_FINITE, BEYOND_INT64), st.booleans())
def test_hostile_numbers_are_located_problems_at_their_key(path, literal, as_override):
    if literal.lstrip("-").isdigit() and len(literal) < 310 and "integer" not in NUMERIC[path]:
        # an integer beyond 64 bits but within a float's range is a number like any other
        check(_recipe_with(path, literal)[0])
        return
    if as_override:
        located_problem(_recipe_with(path, "1")[0], None, path, overrides=[_override(path, literal)])
    else:
        text, line = _recipe_with(path, literal)
        located_problem(text, line, path)
