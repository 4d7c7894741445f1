"""The recipe JSON Schema (schemas/recipe.schema.json): validation, plain-words messages, defaults.

jsonschema finds the problems; this module words each one for a person (unknown keys with a
"did you mean", enum values listed, types named) and places it at the key or value it is about.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from typing import Any, Iterator

import jsonschema
from jsonschema import Draft202012Validator

from capidsl.families import BUILTIN_FAMILIES
from capidsl.recipe.errors import Problem
from capidsl.recipe.yaml12 import Document, join_path, short_number
from capidsl.resources import resource_path

SCHEMA_FILE = "recipe.schema.json"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The recipe schema as data (read once per process)."""
    return json.loads(resource_path("schemas", SCHEMA_FILE).read_text(encoding="utf-8"))


INT64 = 2**63  # every integer key ends up in a 64-bit integer (numpy, JAX, orbax): |n| < INT64


def _is_integer(checker, instance) -> bool:  # 32.0 is not an integer in a recipe; True is not either
    return isinstance(instance, int) and not isinstance(instance, bool) and -INT64 <= instance < INT64


def _is_number(checker, instance) -> bool:  # .inf and .nan are no value of any number key
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, float) and math.isfinite(instance))


@functools.lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    types = Draft202012Validator.TYPE_CHECKER.redefine_many({"integer": _is_integer, "number": _is_number})
    cls = jsonschema.validators.extend(Draft202012Validator, type_checker=types)
    return cls(schema())


def check(doc: Document) -> list[Problem]:
    """Every schema problem in the merged document, worded and located."""
    problems: list[Problem] = []
    for err in validator().iter_errors(doc.data):
        problems.extend(_explain(err, doc))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.location, p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def locate(doc: Document, path: tuple, key: bool = False):
    """The Location of `path` in `doc` (the key for key=True, else the value); the nearest
    written ancestor when the path itself is not in the file."""
    while True:
        pos = doc.positions.get(path)
        if pos is not None:
            return (pos.key or pos.value) if key else pos.value
        if not path:
            return None
        path = path[:-1]
        key = True


def _explain(err: jsonschema.ValidationError, doc: Document) -> Iterator[Problem]:
    path = tuple(err.absolute_path)
    kind = err.validator
    value = err.instance
    here = join_path(path)
    if kind == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        for key in value:
            if key not in allowed:
                yield Problem(locate(doc, path + (key,), key=True), join_path(path + (key,)),
                              f"unknown key {key!r}", _did_you_mean(key, allowed, path))
    elif kind is None and err.schema is False:
        # jsonschema leaves the property out of a false-schema error's path: find the keys that
        # the enclosing `properties` forbids in the mapping at `path` instead.
        node: Any = schema()
        for part in list(err.absolute_schema_path):
            node = node[part]
        mapping = _get(doc.data, path)
        keys = [k for k in mapping if node.get(k) is False] if isinstance(node, dict) and isinstance(mapping, dict) else []
        family = mapping.get("family", "gpt") if isinstance(mapping, dict) else "gpt"
        for key in keys:
            if path == ("model",) and family in BUILTIN_FAMILIES:
                msg = f"{key!r} is not an option of model family {family!r}"
                hint = "options of other families go in model.options" if key == "options" else None
            elif path == ("model",):
                msg = f"{key!r} is an option of the built-in families; put the options of {family!r} under model.options"
                hint = None
            else:
                msg, hint = "is not allowed here", None
            yield Problem(locate(doc, path + (key,), key=True), join_path(path + (key,)), msg, hint)
    elif kind == "required":
        for key in err.validator_value:
            if isinstance(value, dict) and key not in value:
                why = f" (model family {value.get('family', 'gpt')!r} needs it)" if path == ("model",) else ""
                yield Problem(locate(doc, path, key=True), join_path(path + (key,)), f"required key is missing{why}")
    elif kind == "type":
        yield Problem(locate(doc, path), here, _range_words(err.validator_value, value)
                      or f"expected {_type_words(err.validator_value)}, got {_describe(value)}")
    elif kind in ("enum", "const"):
        allowed = err.validator_value if kind == "enum" else [err.validator_value]
        hint = None
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
        yield Problem(locate(doc, path), here,
                      f"{_show(value)} is not one of: {', '.join(_show(a) for a in allowed)}", hint)
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "greater than",
                 "exclusiveMaximum": "less than"}[kind]
        yield Problem(locate(doc, path), here, f"must be {words} {_show(err.validator_value)}, got {_show(value)}")
    elif kind == "not":
        yield Problem(locate(doc, path), here, f"{_show(value)} is not allowed here",
                      "use -1 for the rest of the devices" if path[:1] == ("mesh",) else None)
    elif kind == "anyOf":
        options = " or ".join(_branch_words(b) for b in err.validator_value)
        types = [b["type"] for b in err.validator_value if isinstance(b, dict) and isinstance(b.get("type"), str)]
        yield Problem(locate(doc, path), here, _range_words(types, value) or f"expected {options}, got {_describe(value)}")
    elif kind == "pattern":
        if err.relative_schema_path and "propertyNames" in err.relative_schema_path:
            yield Problem(locate(doc, path + (value,), key=True), join_path(path + (value,)),
                          f"{value!r} is not a valid name (letters, digits and _, not starting with a digit)")
        else:
            yield Problem(locate(doc, path), here, f"{_show(value)} is not a valid name (letters, digits, _ . -)")
    else:
        yield Problem(locate(doc, path), here, err.message)


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _did_you_mean(key: str, allowed: list[str], path: tuple) -> str | None:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    if not path:  # a section key written at the top level?
        for section, sub in schema()["properties"].items():
            if key in sub.get("properties", {}) if isinstance(sub, dict) else False:
                return f"did you mean {section}.{key}?"
    elif path == ("model",):
        return "options of other families go under model.options"
    return f"allowed: {', '.join(allowed)}"


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
               "null": "null", "object": "a mapping", "array": "a list"}


def _type_words(types) -> str:
    types = [types] if isinstance(types, str) else list(types)
    return " or ".join(_TYPE_WORDS.get(t, t) for t in types)


def default_model() -> dict:
    """The model a recipe without `model:` trains: the schema's default (the base recipe's GPT)."""
    return dict(schema()["properties"]["model"]["default"])


def taken_defaults(doc: Document) -> tuple[str, ...]:
    """One line per section the recipe does not write whose default is a choice worth saying out
    loud (the model, the data), for `capidsl plan` to show. A section is written when it has a
    position: `--set model.KEY=...` on a recipe without a model tunes the default model (load.py)."""
    notes = []
    if ("model",) not in doc.positions:
        model = default_model()
        family = model.pop("family")
        options = ", ".join(f"{k} {v}" for k, v in model.items())
        changed = ", then changed by --set" if (doc.data or {}).get("model", default_model()) != default_model() else ""
        notes.append(f"model: not in the recipe; the default {family} ({options}) was taken{changed}")
    if ("data",) not in doc.positions:
        data = schema()["properties"]["data"]["properties"]
        notes.append(f"data: not in the recipe; the default {data['source']['default']} corpus "
                     f"({data['tokenizer']['default']} tokenizer) was taken")
    return tuple(notes)


def _range_words(types, value: Any) -> str | None:
    """The message for a number of the right kind but out of range (non-finite, or an integer
    beyond 64 bits), which the type checks above refuse; None for a plain type mismatch."""
    types = [types] if isinstance(types, str) else list(types)
    if isinstance(value, float) and not math.isfinite(value) and "number" in types:
        return f"must be a finite number, got {_show(value)}"
    if isinstance(value, int) and not isinstance(value, bool) and "integer" in types:
        return f"must be an integer that fits in 64 bits (-2**63 to 2**63-1), got {_show(value)}"
    return None


def _branch_words(branch: dict) -> str:
    if "const" in branch:
        return _show(branch["const"])
    if "enum" in branch:
        return "one of " + ", ".join(_show(a) for a in branch["enum"])
    words = _type_words(branch.get("type", "value"))
    if "minimum" in branch:
        words += f" >= {branch['minimum']}"
    if branch.get("type") == "array" and "items" in branch:
        words += " of " + _branch_words(branch["items"]).removeprefix("one of ")
    return words


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "a mapping"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    return short_number(repr(value))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {_show(value)}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, int):
        return f"the integer {_show(value)}"
    if isinstance(value, float):
        return f"the number {_show(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def with_defaults(data: dict) -> dict:
    """The document with every absent section and key set to its schema default.

    Model options are left as written (the model family's `normalize` owns their defaults,
    only `family` defaults to "gpt"), and an absent `model` is the schema's default model;
    `precision` stays absent unless written, so desugaring can tell it from training.mixed_precision.
    """
    props = schema()["properties"]
    out = dict(data)
    for name, sub in props.items():
        if name in ("model", "precision", "extends"):
            continue
        if sub.get("type") == "object" or (isinstance(sub.get("type"), list) and "object" in sub["type"]):
            section = dict(out.get(name) or {})
            for key, spec in sub.get("properties", {}).items():
                if key not in section and "default" in spec:
                    section[key] = spec["default"]
            out[name] = section
        elif name not in out and "default" in sub:
            out[name] = sub["default"]
    model = dict(out["model"] if "model" in out else default_model())
    model.setdefault("family", props["model"]["properties"]["family"]["default"])
    out["model"] = model
    return out
