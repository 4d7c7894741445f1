"""From files and `--set` arguments to one merged recipe document with positions.

`extends: parent.yaml` (relative to the file that says it) deep-merges the file onto its parent:
mappings merge key by key, everything else (lists included) is replaced. Problems in a parent
carry the extends chain that led to it. `--set key.path=value` then overrides single keys; the
value is YAML (`--set training.batch_size=64`, `--set mesh.rules={}`), checked later by the same
schema as the file, so an override is exactly as valid as the same line written in the recipe.
On a recipe without `model:`, `--set model.d_model=64` changes the default model it trains.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable

from capidsl.errors import UsageError
from capidsl.recipe.errors import Location, Problem, RecipeError
from capidsl.recipe.schema import default_model
from capidsl.recipe.yaml12 import Document, Position, decode, join_path, read_bytes, read_yaml

MAX_EXTENDS = 16  # a chain longer than this is a mistake, not a design
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_file(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Document:
    """The recipe at `path` with its extends chain merged and `overrides` applied."""
    file = os.fspath(path)
    doc = _load_chain(file, Path(file), ())
    return apply_overrides(doc, overrides)


def load_text(text: str, name: str = "<string>", overrides: Iterable[str] = (),
              base_dir: str | os.PathLike | None = None) -> Document:
    """A recipe given as text; `extends` is resolved against `base_dir` (default: the current folder)."""
    doc = read_yaml(text, name)
    doc = _resolve_extends(doc, Path(base_dir or ".") / "<string>", ())
    return apply_overrides(doc, overrides)


def _load_chain(file: str, real: Path, seen: tuple[Path, ...]) -> Document:
    text = decode(read_bytes(real, file), file)
    return _resolve_extends(read_yaml(text, file), real, seen)


def _resolve_extends(doc: Document, real: Path, seen: tuple[Path, ...]) -> Document:
    file = doc.file
    data = doc.data
    if not isinstance(data, dict):
        what = "an empty document" if data is None else f"a {'list' if isinstance(data, list) else 'single value'}"
        raise RecipeError([Problem(doc.positions[()].value, "",
                                   f"a recipe is a mapping of sections (model:, training:, ...), not {what}")])
    if "extends" not in data:
        return doc
    parent_name = data["extends"]
    where = doc.positions[("extends",)].value
    if not isinstance(parent_name, str) or not parent_name.strip():
        raise RecipeError([Problem(where, "extends", "must be the path of a recipe file (relative to this one)")])
    me = real.resolve() if real.name != "<string>" else real
    chain = seen + (me,)
    if len(chain) > MAX_EXTENDS:
        raise RecipeError([Problem(where, "extends", f"more than {MAX_EXTENDS} files in the extends chain")])
    parent_real = (real.parent / parent_name).resolve()
    parent_file = os.path.normpath(os.path.join(os.path.dirname(file), parent_name)) if not file.startswith("<") else parent_name
    if parent_real in chain:
        names = [p.name for p in chain[chain.index(parent_real):]] + [parent_real.name]
        raise RecipeError([Problem(where, "extends", f"extends cycle: {' -> '.join(names)}")])
    if not parent_real.is_file():
        raise RecipeError([Problem(where, "extends", f"no such file: {parent_file}")])
    try:
        parent = _load_chain(parent_file, parent_real, chain)
    except RecipeError as err:
        raise RecipeError([_via(p, file) for p in err.problems]) from None
    child_data = {k: v for k, v in data.items() if k != "extends"}
    merged = deep_merge(parent.data, child_data)
    positions: dict[tuple, Position] = {}
    parent_positions = {k: v.shifted((file,)) for k, v in parent.positions.items()}
    for path in _paths(merged):
        positions[path] = doc.positions[path] if path in doc.positions else parent_positions[path]
    positions[()] = doc.positions[()]
    return Document(merged, positions, file)


def _via(problem: Problem, file: str) -> Problem:
    loc = problem.location.shifted((file,)) if problem.location is not None else None
    return Problem(loc, problem.path, problem.message, problem.hint)


def deep_merge(base: Any, over: Any) -> Any:
    """`over` onto `base`: mappings merge key by key; anything else in `over` replaces."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = deep_merge(base[key], value) if key in base else value
        return out
    return over


def _paths(data: Any, prefix: tuple = ()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _paths(value, prefix + (i,))


def apply_overrides(doc: Document, overrides: Iterable[str]) -> Document:
    """Set `key.path=value` arguments (values as YAML) into the document, recording their positions."""
    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = list(overrides)
    if not overrides:
        return doc
    data = copy.deepcopy(doc.data)
    positions = dict(doc.positions)
    problems: list[Problem] = []
    for arg in overrides:
        key, sep, value_text = str(arg).partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.fullmatch(key):
            raise UsageError(f"--set expects key.path=value (e.g. training.batch_size=64), got {arg!r}")
        path = tuple(key.split("."))
        file = f"<--set {arg}>"
        shift = len(arg) - len(value_text)
        end = len(arg) + 1  # libyaml puts end-of-input errors on the line after
        if path[0] == "extends":
            problems.append(Problem(Location(file, 1, 1), key, "extends cannot be overridden; write it in the recipe"))
            continue
        try:
            value_doc = read_yaml(value_text, file)
        except RecipeError as err:
            problems.extend(_shift(p, shift, end, key) for p in err.problems)
            continue
        if path[0] == "model" and path[1:2] not in ((), ("family",)) and "model" not in data:
            # a recipe without a model trains the default one: --set tunes it as it would a written one
            data["model"] = default_model()
        target = data
        for depth, part in enumerate(path[:-1]):
            nxt = target.get(part)
            if nxt is None:
                nxt = target[part] = {}
                positions[path[: depth + 1]] = Position(Location(file, 1, 1))
            if not isinstance(nxt, dict):
                problems.append(Problem(Location(file, 1, 1), join_path(path[: depth + 1]),
                                        "is not a mapping, so it has no keys to set"))
                break
            target = nxt
        else:
            target[path[-1]] = value_doc.data
            for old in [p for p in positions if p[: len(path)] == path]:
                del positions[old]
            for sub, pos in value_doc.positions.items():
                value = _shift_loc(pos.value, shift)
                key_loc = Location(file, 1, 1) if not sub else None
                positions[path + sub] = Position(value, key_loc, pos.scalar)
    if problems:
        raise RecipeError(problems)
    return Document(data, positions, doc.file)


def _shift_loc(loc: Location, shift: int) -> Location:
    return Location(loc.file, loc.line, loc.column + shift if loc.line == 1 else loc.column, loc.chain)


def _shift(problem: Problem, shift: int, end: int, key: str) -> Problem:
    """A problem in an override's value, placed in the whole `--set` argument and named by its key."""
    loc = problem.location
    if loc is not None:
        loc = _shift_loc(loc, shift) if loc.line == 1 else Location(loc.file, 1, end, loc.chain)
    path = key + ("" if not problem.path or problem.path.startswith("[") else ".") + problem.path
    return Problem(loc, path, problem.message, problem.hint)
