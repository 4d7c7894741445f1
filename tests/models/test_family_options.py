"""The built-in families and the recipe schema agree: the same family names, and for each family the same
options, the same required ones and the same defaults (a schema default written out changes nothing)."""

from __future__ import annotations

import pytest

from capidsl.families import BUILTIN, BUILTIN_FAMILIES
from capidsl.models import ModelError, family_names, get_family
from capidsl.recipe import schema

# The smallest valid options of each family; a new required option makes normalize refuse these (and the test say so).
MINIMAL = {
    "gpt": {"vocab_size": 256, "seq_len": 16, "d_model": 32, "n_layers": 2, "n_heads": 4},
    "mlp": {"input_dim": 8, "num_classes": 4},
    "capibara": {"vocab_size": 256, "seq_len": 16, "d_model": 32, "n_layers": 2},
}


def _model_schema() -> dict:
    return schema.schema()["properties"]["model"]


def _branch(family: str) -> dict:
    """The schema's `then` for `family` (the options it forbids and requires)."""
    for rule in _model_schema()["allOf"]:
        if rule["if"]["properties"]["family"].get("const") == family:
            return rule["then"]
    raise AssertionError(f"the schema has no branch for model family {family!r}")


MODEL_KEYS = {"family", "options", "init", "lora"}  # keys of `model:` that are not a family's options (lora: normalised into lora_* keys, present only with adapters)


def _schema_options(family: str) -> dict[str, dict]:
    """Option name -> its schema, for the keys the schema lets `family` have beside `family`."""
    forbidden = {k for k, v in _branch(family).get("properties", {}).items() if v is False}
    return {k: v for k, v in _model_schema()["properties"].items() if k not in forbidden | MODEL_KEYS}


def test_one_list_of_built_in_families():
    branches = [r["if"]["properties"]["family"]["const"] for r in _model_schema()["allOf"]
                if "const" in r["if"]["properties"]["family"]]
    others = next(r["if"]["properties"]["family"]["not"]["enum"] for r in _model_schema()["allOf"]
                  if "not" in r["if"]["properties"]["family"])
    assert branches == others == list(BUILTIN) == list(BUILTIN_FAMILIES) == list(schema.BUILTIN_FAMILIES)
    assert family_names()[: len(BUILTIN)] == list(BUILTIN)
    assert set(MINIMAL) == set(BUILTIN)


@pytest.mark.parametrize("family", list(BUILTIN))
def test_the_schema_and_the_family_accept_the_same_options(family):
    accepted = set(get_family(family).normalize(MINIMAL[family]))
    assert accepted == set(_schema_options(family)), (
        f"only the family: {sorted(accepted - set(_schema_options(family)))}; "
        f"only the schema: {sorted(set(_schema_options(family)) - accepted)}")


@pytest.mark.parametrize("family", list(BUILTIN))
def test_the_schema_and_the_family_require_the_same_options(family):
    fam = get_family(family)
    required = set()
    for key in MINIMAL[family]:
        try:
            fam.normalize({k: v for k, v in MINIMAL[family].items() if k != key})
        except ModelError as err:
            assert key in err.message, err.message
            required.add(key)
    branch = _branch(family)  # gpt: required unless model.init supplies them (its `else`)
    assert required == set(branch.get("required", branch.get("else", {}).get("required", ())))


@pytest.mark.parametrize("family", list(BUILTIN))
def test_the_schema_defaults_are_the_family_defaults(family):
    fam = get_family(family)
    implied = fam.normalize(MINIMAL[family])
    for key, spec in _schema_options(family).items():
        if "default" in spec and key not in MINIMAL[family]:
            written = fam.normalize(MINIMAL[family] | {key: spec["default"]})
            assert written == implied, f"model.{key}: the schema's default {spec['default']!r} is not {family}'s"
