"""The Plan: everything the executor will do, decided ahead of time, frozen, JSON round-trippable.

The Plan is the contract between the compiler and the executor. It holds no JAX objects:
shardings are tuples of mesh-axis names per dimension, dtypes are strings, the schedule and the
stop rule are language ASTs. `Plan.fingerprint` identifies a run for resume; fields that may
change safely on resume (length, stop rule, cadences, output locations) are left out of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from capidsl.lang.ast import ResolvedPruning, ResolvedSchedule, StopRule
from capidsl.plan.frozen import canonical_json, content_hash, from_jsonable, to_jsonable

PLAN_VERSION = 1

Options = tuple[tuple[str, Any], ...]  # a frozen mapping: sorted (key, value) pairs, lists as tuples


def freeze_options(mapping: dict[str, Any]) -> Options:
    """Sorted (key, value) pairs with lists turned into tuples, so that options are hashable."""

    def freeze(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        if isinstance(v, dict):
            return freeze_options(v)
        return v

    return tuple(sorted((k, freeze(v)) for k, v in mapping.items()))


@dataclass(frozen=True)
class Topology:
    """The devices the plan is for: the live machine or a simulated cluster."""

    device_kind: str
    device_count: int
    process_count: int
    memory_per_device: int  # bytes
    peak_flops_bf16: float  # per device, FLOP/s
    peak_flops_f32: float
    simulated: bool

    @property
    def devices_per_process(self) -> int:
        return self.device_count // self.process_count


@dataclass(frozen=True)
class MeshPlan:
    """Named mesh axes and their sizes, in the order the device mesh is built."""

    axes: tuple[str, ...]  # ("data", "fsdp", "tensor")
    shape: tuple[int, ...]

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    @property
    def device_count(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def data_parallel(self) -> int:
        """How many ways the batch is split: the data and fsdp axes together."""
        return self.size("data") * self.size("fsdp")


MeshSpec = tuple[tuple[str, ...], ...]  # per array dimension: the mesh axes it is split over; () = replicated


@dataclass(frozen=True)
class ParamSharding:
    """One parameter: its shape, logical axes and the mesh axes each dimension is split over."""

    path: str  # "blocks.attn.q.kernel"
    shape: tuple[int, ...]
    dtype: str
    logical_axes: tuple[str | None, ...]
    spec: MeshSpec
    bytes_per_device: int


@dataclass(frozen=True)
class ShardingPlan:
    """The axis rules in force, every parameter's placement, and the batch's placement."""

    rules: tuple[tuple[str, tuple[str, ...]], ...]  # logical axis -> mesh axes
    params: tuple[ParamSharding, ...]
    batch_spec: MeshSpec  # for a [batch, ...] input array

    def spec_of(self, path: str) -> MeshSpec:
        for p in self.params:
            if p.path == path:
                return p.spec
        raise KeyError(path)


@dataclass(frozen=True)
class InitPlan:
    """Where the starting weights come from (capidsl/plan/init.py), checked against the model."""

    kind: str  # hf: a Hugging Face model directory; run: a capidsl run's checkpoint
    path: str  # absolute
    architecture: str  # GPT2LMHeadModel | LlamaForCausalLM | capidsl
    files: tuple[str, ...]  # the safetensors files read, or the checkpoint
    tensors: int
    bytes: int  # the checkpoint's tensor bytes
    dtypes: tuple[str, ...]  # stored dtypes (cast to the plan's param dtype on load)
    digest: str  # of the files' headers and sizes: a changed checkpoint changes the fingerprint
    tokenizer: str | None  # the directory's tokenizer.json (the run's tokenizer), when there is one
    step: int | None = None  # a run's checkpoint step


@dataclass(frozen=True)
class ModelPlan:
    """Which registered model family to build, with its normalised options."""

    family: str
    config: Options
    param_count: int
    remat: str  # none | full | dots
    init: InitPlan | None = None  # random weights when None
    # the attention kernel (capidsl/plan/kernels.py): xla | cudnn. Chosen from the topology's device kind,
    # so resume-safe like the topology (not fingerprinted), and left out of the JSON when xla.
    attention: str = "xla"
    # how the stacked layers run (kernels.choose_layer_loop): scanned | unrolled. The same parameters and
    # numbers either way, so layout, not meaning; left out of the JSON when scanned (plans from before it).
    layer_loop: str = "scanned"

    @property
    def options(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config}


@dataclass(frozen=True)
class PrecisionPlan:
    """Dtypes for stored parameters, computation and outputs; loss scaling for fp16."""

    param_dtype: str  # float32 | bfloat16 | float16
    compute_dtype: str
    output_dtype: str
    loss_scale: str  # none | static | dynamic
    loss_scale_value: float


@dataclass(frozen=True)
class BatchPlan:
    """global_batch = micro_batch × accumulation × data_parallel, checked by the compiler."""

    global_batch: int  # sequences (or examples) per optimizer step
    micro_batch: int  # per data-parallel shard, per micro-step
    accumulation: int
    data_parallel: int
    seq_len: int  # 1 for non-sequence models
    tokens_per_step: int
    per_process_batch: int  # rows of the global batch each process loads


@dataclass(frozen=True)
class OptimizerPlan:
    """The optax optimizer and its hyper-parameters; the learning rate comes from `Plan.schedule`."""

    name: str  # adamw | adam | sgd | adafactor | lion
    beta1: float
    beta2: float
    epsilon: float
    weight_decay: float
    momentum: float
    nesterov: bool
    grad_clip: float | None
    decay_mask: str  # "matrices": decay only ≥2-D weights (not biases, norms); "all"
    frozen: tuple[str, ...] = ()  # parameters that never change (training.trainable); () = all train


@dataclass(frozen=True)
class BucketPlan:
    """One batch shape of length-bucketed batching: `rows` rows of `length` tokens (capidsl/data/buckets.py)."""

    length: int  # holds the examples predicting n tokens, previous bucket's length < n <= length
    rows: int  # the global batch of this bucket
    train_examples: int
    val_examples: int
    batches_per_epoch: int  # train_examples // rows: the rest waits for the next epoch's order
    real_tokens: int  # target tokens of this bucket's training examples (for the padding estimate)


@dataclass(frozen=True)
class MixSourcePlan:
    """One source of a mixture: where it is read from, its token store and what it holds."""

    name: str
    source: str
    path: str | None
    field: str
    hf_split: str
    store: str  # the token store's id (a content fingerprint)
    train_examples: int  # packed windows of seq_len + 1 tokens
    val_examples: int
    train_tokens: int
    val_tokens: int


@dataclass(frozen=True)
class MixStagePlan:
    """From optimizer step `start_step` on, the sources' shares of every batch's rows (in source order)."""

    start_step: int
    weights: tuple[float, ...]
    at: str  # as written in the recipe ("90%"), or "start"


@dataclass(frozen=True)
class DataPlan:
    """The input pipeline: where examples come from, how they are tokenised, packed and split."""

    source: str  # stdlib | text | jsonl | csv | parquet | npy | synthetic
    path: str | None
    field: str
    tokenizer: str  # "byte" or a path to a local tokenizer file
    kind: str  # "lm" (token windows) | "classification" (features, label)
    vocab_size: int
    seq_len: int
    input_dim: int  # classification only (0 otherwise)
    num_classes: int  # classification only (0 otherwise)
    validation_fraction: float
    shuffle: bool
    seed: int
    workers: int
    prefetch: int
    synthetic_examples: int
    train_examples: int  # packed windows (lm) or rows in the train split, counted at plan time
    val_examples: int
    streams: int = 0  # > 0: each batch row is one of this many contiguous streams, read in order; 0: windows shuffled
    buckets: tuple[BucketPlan, ...] = ()  # variable-length rows by length bucket (one batch shape each); () = windows
    store: str = ""  # the token store's id (a content fingerprint of files, tokenizer, split rule); "" = none
    cache: str = ""  # where stores are kept (not part of the fingerprint: moving the cache changes nothing)
    hf_split: str = "train"
    format: str = "text"  # text | supervised (loss masked to completions)
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    bad_documents: str = "error"  # error | skip
    loss_tokens: int = 0  # training targets that count in the loss (supervised: completion tokens), 0 = not counted
    skipped_documents: int = 0  # left out by bad_documents: skip
    mixture: tuple[MixSourcePlan, ...] = ()  # several sources by weight (source == "mixture")
    mixture_stages: tuple[MixStagePlan, ...] = ()


@dataclass(frozen=True)
class CadencePlan:
    """When things happen, all in optimizer steps."""

    total_steps: int
    steps_per_epoch: int
    eval_every: int | None
    eval_batches: int
    checkpoint_every: int | None
    log_every: int


@dataclass(frozen=True)
class CheckpointPlan:
    """What orbax keeps: the newest `keep`, plus the best `keep_best` by a metric."""

    keep: int
    keep_best_metric: str | None
    keep_best_mode: str  # min | max
    keep_best: int
    async_save: bool


@dataclass(frozen=True)
class StopPlan:
    """The compiled stop rule (None: run to total_steps) and whether to restore the best weights."""

    rule: StopRule | None
    restore_best: bool
    restore_metric: str | None  # the metric "best" means for restore_best
    restore_mode: str  # min | max


@dataclass(frozen=True)
class ExportPlan:
    """Export at the end of the run (format "none" for no export)."""

    format: str
    opset: int
    tolerance: float
    path: str | None


@dataclass(frozen=True)
class LoggingPlan:
    tensorboard: bool
    progress: str  # auto | rich | plain | none


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device, analytic; `fits` is judged on `total` against the device memory.

    total = params + opt_state + batch + state (the step's arguments) + temp (its temporaries, the
    sum of `breakdown`: saved activations, backward working set, float32 grads, the optimizer copy
    (or accumulation), FSDP gather — capidsl/plan/memory.py). `activations` = saved + working set."""

    params: int
    grads: int  # float32, per parameter shard
    opt_state: int
    activations: int
    batch: int
    total: int
    device_memory: int
    fits: bool
    activation_formula: str
    compiled: tuple[tuple[str, int], ...] = ()  # XLA memory_analysis figures when `plan --compile` ran
    state: int = 0  # other training state: pruning masks, a carried recurrent state (included in total)
    temp: int = 0  # the estimate of XLA's temp_size_in_bytes (included in total)
    breakdown: tuple[tuple[str, int], ...] = ()  # temp's terms, in bytes

    @property
    def headroom(self) -> int:
        return self.device_memory - self.total


@dataclass(frozen=True)
class FlopsEstimate:
    flops_per_token: float
    flops_per_step: float
    assumed_mfu: float
    step_time_s: float  # per step at assumed_mfu on this topology
    formula: str


@dataclass(frozen=True)
class HiddenStatePlan:
    """A recurrent state carried from each batch to the next (batch rows are streams); in the train state."""

    shape: tuple[int, ...]  # [global batch, layers, state width]
    dtype: str
    logical_axes: tuple[str | None, ...]
    spec: MeshSpec
    bytes_per_device: int


@dataclass(frozen=True)
class PruningPlan:
    """Magnitude pruning: the schedule on concrete steps, the ranking scope, the weights it covers."""

    schedule: ResolvedPruning
    scope: str  # per_layer | global
    params: tuple[str, ...]  # paths of the pruned parameters
    weights: int  # scalars in those parameters
    groups: int  # sets of weights ranked together (per matrix and layer, or 1 for global)
    final_zeros: int  # weights that are exactly zero after the last event


@dataclass(frozen=True)
class Lint:
    level: str  # warning | error
    code: str
    message: str
    location: str | None = None  # file:line:col when known


@dataclass(frozen=True)
class CommsEstimate:
    """Bytes each device sends per optimizer step, by collective; analytic (see capidsl/plan/comms.py)."""

    fsdp_all_gather: int  # parameters gathered over the axes that split them (forward and backward)
    fsdp_reduce_scatter: int  # their gradients summed and left sharded
    data_all_reduce: int  # gradients summed over the batch axes that replicate them
    tensor_all_reduce: int  # activations summed over the tensor axis: every layer and the rest of the model
    tensor_per_layer: int  # ... in one of the stacked layers
    layers: int
    across_hosts: tuple[str, ...]  # mesh axes whose groups span several processes: their traffic uses the network
    formula: str

    @property
    def total(self) -> int:
        return self.fsdp_all_gather + self.fsdp_reduce_scatter + self.data_all_reduce + self.tensor_all_reduce


# Fields that may differ between a checkpoint's plan and a resuming plan without breaking exactness
# of what has been computed so far; they are excluded from the fingerprint.
RESUME_SAFE = ("name", "run_dir", "cadence", "schedule", "stop", "logging", "export", "lints", "checkpoint", "flops", "memory", "topology",
               "comms", "xla_flags")


# How the run is laid out on its devices, not what it computes: a resume may change these (a
# preemptible cluster that comes back with another number of devices or hosts) while the global
# batch stays. The restored state means the same thing; sums run in another order, so the loss
# continues within float tolerance rather than bitwise. Dotted paths; `[]` = every parameter row.
LAYOUT = ("mesh", "sharding.rules", "sharding.batch_spec", "sharding.params[].spec", "sharding.params[].bytes_per_device",
          "batch.micro_batch", "batch.accumulation", "batch.data_parallel", "batch.per_process_batch",
          "hidden_state.spec", "hidden_state.bytes_per_device",
          "model.attention",  # the kernel follows the device kind; the parameters are the same either way
          "model.layer_loop")
NOT_MEANING = LAYOUT + ("data.cache",)  # where the token stores are kept


def meaning(data: dict[str, Any]) -> dict[str, Any]:
    """A plan's JSON without RESUME_SAFE and NOT_MEANING: what the fingerprint hashes, and what a
    resume must find unchanged."""
    out = {k: v for k, v in data.items() if k not in RESUME_SAFE}
    for path in NOT_MEANING:
        _drop(out, path.split("."))
    return out


def _drop(node: Any, keys: list[str]) -> None:
    """Remove the dotted path `keys` from the JSON `node` in place (copying what it changes)."""
    head, rest = keys[0], keys[1:]
    if not isinstance(node, dict):
        return
    rows = head.endswith("[]")
    name = head.removesuffix("[]")
    if name not in node:
        return
    if not rest:
        del node[name]
    elif rows and isinstance(node[name], list):
        node[name] = [dict(row) for row in node[name]]
        for row in node[name]:
            _drop(row, rest)
    elif isinstance(node[name], dict):
        node[name] = dict(node[name])
        _drop(node[name], rest)


@dataclass(frozen=True)
class Plan:
    """A compiled recipe. `capidsl run plan.json` executes exactly this."""

    version: int
    name: str
    seed: int
    run_dir: str
    topology: Topology
    mesh: MeshPlan
    model: ModelPlan
    sharding: ShardingPlan
    precision: PrecisionPlan
    batch: BatchPlan
    optimizer: OptimizerPlan
    schedule: ResolvedSchedule
    stop: StopPlan
    cadence: CadencePlan
    checkpoint: CheckpointPlan
    data: DataPlan
    memory: MemoryEstimate
    flops: FlopsEstimate
    logging: LoggingPlan
    export: ExportPlan
    lints: tuple[Lint, ...] = field(default=())
    comms: CommsEstimate | None = None  # an estimate: not part of the fingerprint (RESUME_SAFE)
    pruning: PruningPlan | None = None
    hidden_state: HiddenStatePlan | None = None
    xla_flags: tuple[str, ...] = ()  # set in XLA_FLAGS by the executor (by device kind: plan/kernels.py); resume-safe

    def to_json(self) -> dict[str, Any]:
        data = to_jsonable(self)
        if not self.optimizer.frozen:  # everything trains: the JSON (and fingerprint) of a plan without it
            del data["optimizer"]["frozen"]
        if self.model.init is None:  # random weights: the JSON of a plan without init
            del data["model"]["init"]
        if self.model.attention == "xla":  # XLA's attention: the JSON of a plan without the field
            del data["model"]["attention"]
        if self.model.layer_loop == "scanned":
            del data["model"]["layer_loop"]
        if not self.xla_flags:  # no flags (a CPU): the JSON of a plan without the field
            del data["xla_flags"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        return from_jsonable(cls, data)

    def dumps(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_json(), indent=indent, sort_keys=True, allow_nan=False)

    @classmethod
    def loads(cls, text: str) -> "Plan":
        return cls.from_json(json.loads(text))

    @property
    def fingerprint(self) -> str:
        """Hash of everything that must not change on resume (shapes, dtypes, data, optimizer, seed)."""
        return content_hash(meaning(self.to_json()))

    def canonical(self) -> str:
        return canonical_json(self.to_json())
