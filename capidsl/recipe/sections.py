"""The frozen, typed sections of a Recipe: one dataclass per recipe section, fields named as the keys.

Recipe-language fields hold parsed AST objects (capidsl.lang), not text. Seed keys
(`num_epochs`, `early_stopping_patience`, `checkpoint_frequency`, `mixed_precision`) keep their
values as written; the canonical fields they are sugar for are filled in by desugaring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from capidsl.lang import Cadence, Duration, PruningSchedule, StopRule


class FrozenMap(Mapping):
    """A read-only, hashable mapping (lists inside become tuples, mappings FrozenMaps)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None):
        object.__setattr__(self, "_data", {k: freeze(v) for k, v in (data or {}).items()})

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda kv: kv[0])))

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __setattr__(self, name, value):
        raise AttributeError("a FrozenMap is immutable")

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


def freeze(value: Any) -> Any:
    """Lists → tuples, mappings → FrozenMap, recursively."""
    if isinstance(value, Mapping) and not isinstance(value, FrozenMap):
        return FrozenMap(value)
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of freeze: plain dicts and lists again."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class ModelConfig:
    """`model:` — a family name and that family's options as written (the family fills its defaults)."""

    family: str
    options: FrozenMap = field(default_factory=FrozenMap)
    init: FrozenMap | None = None  # `model.init`: {from, step} (starting weights), None = random

    def __getattr__(self, name: str):  # recipe.model.d_model reads an option
        options = object.__getattribute__(self, "options")
        if name in options:
            return options[name]
        raise AttributeError(name)


@dataclass(frozen=True)
class DataConfig:
    source: str
    path: str | None
    field: str
    tokenizer: str
    validation_fraction: float
    shuffle: bool
    workers: int
    prefetch: int
    synthetic_examples: int
    batching: str  # packed | bucketed
    token_budget: int | None
    buckets: tuple[int, ...] | None
    hf_split: str = "train"
    format: str = "text"  # text | supervised (prompt/completion rows, loss on the completion)
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    bad_documents: str = "error"  # error | skip
    cache: str | None = None  # token stores' directory; None = $CAPIDSL_CACHE or ~/.cache/capidsl/tokens
    mixture: FrozenMap | None = None  # name -> {source, path, field, hf_split, weight}
    mixture_stages: tuple | None = None  # ({at: duration text, weights: {name: w}}, ...)
    max_repeats: float = 4


@dataclass(frozen=True)
class TrainingConfig:
    """`training:` — `duration` is canonical (from num_epochs when that is given)."""

    batch_size: int
    micro_batch: int | str | None
    gradient_accumulation_steps: int | None
    learning_rate: float
    num_epochs: int | None
    duration: Duration | None
    early_stopping_patience: int | None
    checkpoint_frequency: int | None
    seed: int
    mixed_precision: bool | None
    grad_clip: float | None
    remat: str
    layer_loop: str = "auto"  # auto | scanned | unrolled: plan/kernels.py choose_layer_loop
    trainable: tuple[str, ...] | None = None  # glob patterns over parameter paths; None = every parameter trains


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    beta1: float
    beta2: float
    epsilon: float
    weight_decay: float
    momentum: float
    nesterov: bool


@dataclass(frozen=True)
class PruningConfig:
    """`pruning:` — `schedule` parsed (None = no pruning), magnitude ranking per layer or global."""

    schedule: PruningSchedule | None
    scope: str
    embeddings: bool


@dataclass(frozen=True)
class StopConfig:
    """`stop:` — `when` is canonical (joined with training.early_stopping_patience's rule)."""

    when: StopRule | None
    restore_best: bool
    directions: FrozenMap


@dataclass(frozen=True)
class EvalConfig:
    every: Cadence | None
    batches: int | None


@dataclass(frozen=True)
class KeepBest:
    metric: str
    mode: str
    n: int


@dataclass(frozen=True)
class CheckpointConfig:
    """`checkpoint:` — `every` is canonical (from training.checkpoint_frequency); the key `async`
    is the field `async_` (a Python keyword)."""

    every: Cadence | None
    keep: int
    keep_best: KeepBest | None
    async_: bool


@dataclass(frozen=True)
class MeshConfig:
    data: int
    fsdp: int
    tensor: int
    rules: FrozenMap


@dataclass(frozen=True)
class PrecisionConfig:
    """Canonical dtypes: from the `precision` section, or from training.mixed_precision."""

    params: str = "float32"
    compute: str = "float32"
    output: str = "float32"
    loss_scale: str = "none"
    loss_scale_value: float = 32768


@dataclass(frozen=True)
class ExportConfig:
    format: str
    opset: int
    tolerance: float
    path: str | None


@dataclass(frozen=True)
class LoggingConfig:
    every: Cadence
    tensorboard: bool
    progress: str


def build(cls, values: Mapping, **parsed):
    """cls from a section mapping (defaults already filled), with `parsed` replacing fields."""
    kwargs = {}
    for f in fields(cls):
        key = "async" if f.name == "async_" else f.name
        if f.name in parsed:
            kwargs[f.name] = parsed[f.name]
        elif key in values:
            kwargs[f.name] = freeze(values[key])
    return cls(**kwargs)
