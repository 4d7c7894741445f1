"""From a validated document (defaults filled) to typed sections, with the seed keys desugared.

One meaning per key (docs/architecture.md):
- training.num_epochs: N          ≡ training.duration: "N epochs"          (both given: error)
- training.early_stopping_patience: P ≡ stop.when: "val_loss stalls for P evals"
                                     (both given: the two rules are joined with `or`)
- training.checkpoint_frequency: K ≡ checkpoint.every: "every K epochs"    (both given: error)
- training.mixed_precision: true  ≡ precision {params: float32, compute: bfloat16, output: float32};
                             false ≡ all float32                            (both given: error)
- schedule absent                 ≡ "constant(<training.learning_rate>, rest)"
"""

from __future__ import annotations

from typing import Any

from capidsl import lang
from capidsl.families import BUILTIN_FAMILIES
from capidsl.lang.stop import AnyOf
from capidsl.recipe.errors import Problem
from capidsl.recipe.language import parse_field
from capidsl.recipe.schema import locate as schema_locate
from capidsl.recipe.sections import (
    CheckpointConfig, DataConfig, EvalConfig, ExportConfig, FrozenMap, KeepBest, LoggingConfig,
    MeshConfig, ModelConfig, OptimizerConfig, PrecisionConfig, PruningConfig, StopConfig, TrainingConfig, build,
)
from capidsl.recipe.yaml12 import Document

MIXED = PrecisionConfig(params="float32", compute="bfloat16", output="float32")
FULL = PrecisionConfig()


LANGUAGE_FIELDS: dict[tuple, str] = {
    ("training", "duration"): "duration",
    ("schedule",): "schedule",
    ("pruning", "schedule"): "pruning",
    ("stop", "when"): "stop_rule",
    ("eval", "every"): "cadence",
    ("checkpoint", "every"): "cadence",
    ("logging", "every"): "cadence",
}

# seed key -> (canonical key, what both set); both given is an error
_EXCLUSIVE = {
    ("training", "num_epochs"): (("training", "duration"), "how long to train"),
    ("training", "checkpoint_frequency"): (("checkpoint", "every"), "the checkpoint cadence"),
    ("training", "mixed_precision"): (("precision",), "the dtypes"),
}


def parse_language(doc: Document) -> tuple[dict[tuple, Any], list[Problem]]:
    """Every recipe-language string written in the document, parsed; LangErrors as located Problems.

    Runs on unvalidated documents too (a string where a string belongs is parsed whatever else
    is wrong), so one run reports schema and language problems together."""
    problems: list[Problem] = []
    parsed: dict[tuple, Any] = {}
    stop = _get(doc.data, ("stop",))
    directions = _get(doc.data, ("stop", "directions")) if isinstance(stop, dict) else None
    directions = {k: v for k, v in directions.items() if v in ("min", "max")} if isinstance(directions, dict) else {}
    parsers = {
        "duration": lang.parse_duration, "schedule": lang.parse_schedule, "cadence": lang.parse_cadence,
        "stop_rule": lambda text: lang.parse_stop_rule(text, directions=directions),
        "pruning": lang.parse_pruning,
    }
    for path, kind in LANGUAGE_FIELDS.items():
        text = _get(doc.data, path)
        if isinstance(text, str):
            value = parse_field(doc, path, text, parsers[kind], problems)
            if value is not None:
                parsed[path] = value
    return parsed, problems


def conflicts(doc: Document) -> list[Problem]:
    """A seed key and the canonical key it is sugar for, both given (not null)."""
    problems = []
    for sugar, (canonical, what) in _EXCLUSIVE.items():
        if _get(doc.data, sugar) is not None and _get(doc.data, canonical) is not None:
            problems.append(Problem(schema_locate(doc, sugar, key=True), ".".join(sugar),
                                    f"conflicts with {'.'.join(canonical)} (both set {what}); keep one"))
    return problems


def sections(data: dict, parsed: dict[tuple, Any]) -> dict[str, Any]:
    """Typed sections keyed by name, from a valid document with defaults filled and its parsed
    language strings (`parse_language`)."""
    t = data["training"]
    duration = parsed.get(("training", "duration"))
    if t["num_epochs"] is not None:
        duration = lang.parse_duration(f"{t['num_epochs']} epochs")

    s = data["stop"]
    when = parsed.get(("stop", "when"))
    if t["early_stopping_patience"] is not None:
        patience = lang.parse_stop_rule(f"val_loss stalls for {t['early_stopping_patience']} evals")
        when = patience if when is None else lang.StopRule(AnyOf((when.expr, patience.expr)),
                                                           source=f"{when} or {patience}")

    c = data["checkpoint"]
    checkpoint_every = parsed.get(("checkpoint", "every"))
    if t["checkpoint_frequency"] is not None:
        checkpoint_every = lang.parse_cadence(f"every {t['checkpoint_frequency']} epochs")

    precision = FULL
    if "precision" in data:
        precision = build(PrecisionConfig, data["precision"] or {})
    elif t["mixed_precision"]:
        precision = MIXED

    schedule = parsed.get(("schedule",))
    if schedule is None:
        schedule = lang.parse_schedule(f"constant({float(t['learning_rate'])!r}, rest)")

    eval_every = parsed.get(("eval", "every"))
    if eval_every is None and data["eval"]["every"] is not None:
        eval_every = lang.parse_cadence(data["eval"]["every"])
    logging_every = parsed.get(("logging", "every")) or lang.parse_cadence(data["logging"]["every"])

    family = data["model"]["family"]
    init = data["model"].get("init")
    if family in BUILTIN_FAMILIES:  # the family's options sit beside `family`
        options = {k: v for k, v in data["model"].items() if k not in ("family", "init")}
    else:  # an entry-point family: its options are under model.options
        options = dict(data["model"].get("options") or {})
    keep_best = c["keep_best"]
    out = {
        "model": ModelConfig(family, FrozenMap(options), None if init is None else FrozenMap(init)),
        "data": build(DataConfig, data["data"]),
        "training": build(TrainingConfig, t, duration=duration),
        "optimizer": build(OptimizerConfig, data["optimizer"]),
        "schedule": schedule,
        "pruning": build(PruningConfig, data["pruning"], schedule=parsed.get(("pruning", "schedule"))),
        "stop": build(StopConfig, s, when=when),
        "eval": build(EvalConfig, data["eval"], every=eval_every),
        "checkpoint": build(CheckpointConfig, c, every=checkpoint_every,
                            keep_best=None if keep_best is None else build(KeepBest, _keep_best(keep_best))),
        "mesh": build(MeshConfig, data["mesh"]),
        "precision": precision,
        "export": build(ExportConfig, data["export"]),
        "logging": build(LoggingConfig, data["logging"], every=logging_every),
    }
    return out


def _keep_best(values: dict) -> dict:
    return {"metric": "val_loss", "mode": "min", "n": 1, **values}


def _get(data: dict, path: tuple):
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data
