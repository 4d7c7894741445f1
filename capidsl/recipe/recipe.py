"""`Recipe`: a validated recipe as frozen, typed sections, plus where each key was written."""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from capidsl.families import BUILTIN_FAMILIES, ENTRY_POINT_GROUP
from capidsl.lang import Schedule
from capidsl.recipe import desugar, load, schema
from capidsl.recipe.errors import Location, Problem, RecipeError
from capidsl.recipe.language import value_location
from capidsl.recipe.sections import (
    CheckpointConfig, DataConfig, EvalConfig, ExportConfig, LoggingConfig, MeshConfig, ModelConfig,
    OptimizerConfig, PrecisionConfig, PruningConfig, StopConfig, TrainingConfig,
)
from capidsl.recipe.yaml12 import Document


@dataclass(frozen=True)
class Recipe:
    """A recipe after extends, overrides, schema checks, language parsing and desugaring.

    Build one with `Recipe.from_yaml(path, overrides=...)` or `Recipe.from_text(text)`; both
    raise RecipeError listing every problem. Equal recipes compare equal wherever they came from.
    """

    name: str | None
    description: str | None
    run_dir: str | None
    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    optimizer: OptimizerConfig
    schedule: Schedule
    pruning: PruningConfig
    stop: StopConfig
    eval: EvalConfig
    checkpoint: CheckpointConfig
    mesh: MeshConfig
    precision: PrecisionConfig
    export: ExportConfig
    logging: LoggingConfig
    source: str | None = field(default=None, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)  # defaults taken for absent sections
    _document: Document | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Iterable[str] = ()) -> "Recipe":
        """Load, merge (`extends`), override (`key.path=value`), validate and desugar a recipe file."""
        return from_document(load.load_file(path, overrides), source=os.fspath(path))

    @classmethod
    def from_text(cls, text: str, name: str = "<string>", overrides: Iterable[str] = (),
                  base_dir: str | os.PathLike | None = None) -> "Recipe":
        """The same from YAML text; `extends` is relative to `base_dir` (default: the current folder)."""
        return from_document(load.load_text(text, name, overrides, base_dir), source=None)

    def written(self, dotted_path: str) -> bool:
        """Whether the recipe (or a --set) wrote `dotted_path`, rather than leaving it to its default."""
        return self._document is not None and _split(dotted_path) in self._document.positions

    def location(self, dotted_path: str, column: int | None = None) -> Location | None:
        """Where `dotted_path` (e.g. "training.batch_size", "model.hidden[1]") was written; for a key
        that was not written (a default, or a field desugared from a seed key), where its nearest
        written parent is; None if none is.

        `column` (1-based, as in LangError.column) picks one character of a recipe-language string,
        so plan-time errors in a schedule or stop rule point at the offending piece."""
        if self._document is None:
            return None
        path = _split(dotted_path)
        pos = self._document.positions.get(path)
        if column is not None and pos is not None and pos.scalar is not None:
            value = self._document.data
            for part in path:
                value = value[part]
            if isinstance(value, str):
                return value_location(pos, value, column - 1)
        return schema.locate(self._document, path, key=False)

    def to_dict(self, defaults: bool = False) -> dict[str, Any]:
        """The merged document (after extends and overrides) as plain data, as written; with
        `defaults=True`, every absent key the schema gives a default is filled in as well."""
        data = copy.deepcopy(self._document.data) if self._document is not None else {}
        return schema.with_defaults(data) if defaults else data


def from_document(doc: Document, source: str | None) -> Recipe:
    """Validate a merged document and build its Recipe."""
    problems = schema.check(doc)
    problems.extend(_family_problems(doc))
    parsed, lang_problems = desugar.parse_language(doc)
    problems.extend(lang_problems)
    problems.extend(desugar.conflicts(doc))
    if problems:
        raise RecipeError(problems)
    data = schema.with_defaults(doc.data)
    parts = desugar.sections(data, parsed)
    return Recipe(name=data.get("name"), description=data.get("description"), run_dir=data.get("run_dir"),
                  source=source, notes=schema.taken_defaults(doc), _document=doc, **parts)


def _family_problems(doc: Document) -> list[Problem]:
    """A model family must be built in or registered as an entry point (checked by name only)."""
    model = doc.data.get("model") if isinstance(doc.data, dict) else None
    family = model.get("family") if isinstance(model, dict) else None
    if not isinstance(family, str) or family in BUILTIN_FAMILIES:
        return []
    import importlib.metadata  # only for a family that is not built in: it costs 60 ms to import

    known = list(BUILTIN_FAMILIES) + sorted(
        ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if family in known:
        return []
    close = difflib.get_close_matches(family, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known families: {', '.join(known)}"
    return [Problem(schema.locate(doc, ("model", "family")), "model.family",
                    f"unknown model family {family!r} (not built in, no entry point in group {ENTRY_POINT_GROUP})", hint)]


def _split(dotted: str) -> tuple:
    out: list = []
    for part in dotted.replace("]", "").split("."):
        name, *indices = part.split("[")
        if name:
            out.append(name)
        out.extend(int(i) for i in indices)
    return tuple(out)
