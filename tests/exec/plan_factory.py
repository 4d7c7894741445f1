"""Small Plans built straight from the Plan dataclasses, for executor tests (no recipe, no compiler).

`make_plan("gpt", mesh={"data": 2, "fsdp": 2, "tensor": 2}, accumulation=4)` gives a complete,
consistent Plan for a tiny model: the parameter table comes from the model family itself
(`param_table` of the abstract model) and the sharding follows `RULES`, the way the plan compiler
places parameters: each dimension takes the mesh axes its logical axis maps to, if they are in
the mesh, unused by another dimension, and divide it. `make_batch(plan, ...)` makes a matching
global batch of random data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from capidsl.lang.ast import ResolvedPiece, ResolvedSchedule
from capidsl.plan.plan import (
    PLAN_VERSION,
    BatchPlan,
    CadencePlan,
    CheckpointPlan,
    DataPlan,
    ExportPlan,
    FlopsEstimate,
    LoggingPlan,
    MemoryEstimate,
    MeshPlan,
    ModelPlan,
    OptimizerPlan,
    ParamSharding,
    Plan,
    PrecisionPlan,
    ShardingPlan,
    StopPlan,
    Topology,
    freeze_options,
)

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes (FSDP over the model dimension, tensor parallelism over heads, MLP
# hidden units and the vocabulary; the stacked-layers axis is never split).
RULES: dict[str, tuple[str, ...]] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "hidden": ("tensor",),
    "classes": (),
    "input": ("fsdp",),
    "norm": (),
    "layers": (),
}

TINY = {
    "gpt": dict(vocab_size=32, seq_len=8, d_model=16, n_layers=1, n_heads=2, dropout=0.0),
    "mlp": dict(input_dim=8, hidden=[32, 32], num_classes=4, dropout=0.0),
}

PRECISIONS = {
    "float32": ("float32", "float32", "float32", "none"),
    "bfloat16": ("float32", "bfloat16", "float32", "none"),
    "float16": ("float32", "float16", "float32", "dynamic"),
}


def mesh_plan(mesh: dict[str, int] | None) -> MeshPlan:
    sizes = {a: 1 for a in AXES} | dict(mesh or {})
    return MeshPlan(axes=AXES, shape=tuple(sizes[a] for a in AXES))


def place(shape, logical_axes, mp: MeshPlan, rules=RULES):
    """The MeshSpec for one parameter under `rules`, and its bytes per device for a given itemsize."""
    used: set[str] = set()
    spec = []
    for dim, name in zip(shape, logical_axes):
        axes = tuple(a for a in rules.get(name or "", ()) if mp.size(a) > 1 and a not in used)
        while axes and dim % math.prod(mp.size(a) for a in axes):
            axes = axes[:-1]
        used.update(axes)
        spec.append(axes)
    return tuple(spec)


def param_table(family: str, options: dict[str, Any], precision: PrecisionPlan, remat: str):
    """The family's own parameter table for the abstract model (nothing allocated)."""
    import jax.numpy as jnp
    from flax import nnx

    from capidsl.models import get_family, param_table as table

    fam = get_family(family)
    cfg = fam.normalize(options)
    abstract = nnx.eval_shape(
        lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(precision.param_dtype),
                          compute_dtype=jnp.dtype(precision.compute_dtype), remat=remat)
    )
    return fam, cfg, table(abstract)


def constant_schedule(lr: float, total_steps: int) -> ResolvedSchedule:
    """The ResolvedSchedule of a constant learning rate over the whole run."""
    piece = ResolvedPiece(kind="constant", start_step=0, steps=total_steps, init_value=float(lr), end_value=float(lr))
    return ResolvedSchedule(text=f"constant({lr!r}, rest)", total_steps=total_steps, pieces=(piece,))


def make_plan(
    family: str = "gpt",
    *,
    mesh: dict[str, int] | None = None,
    micro_batch: int = 1,
    accumulation: int = 1,
    precision: str = "float32",
    optimizer: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    grad_clip: float | None = 1.0,
    decay_mask: str = "matrices",
    total_steps: int = 20,
    seed: int = 0,
    remat: str = "none",
    schedule=None,
    rules: dict[str, tuple[str, ...]] | None = None,
    device_count: int | None = None,
    **model_options: Any,
) -> Plan:
    """A consistent Plan for a tiny `family` model; every keyword is one plan decision."""
    mp = mesh_plan(mesh)
    if micro_batch < 1 or accumulation < 1:
        raise ValueError(f"micro_batch and accumulation must be >= 1, got {micro_batch} and {accumulation}")
    pdt, cdt, odt, scale = PRECISIONS[precision]
    prec = PrecisionPlan(param_dtype=pdt, compute_dtype=cdt, output_dtype=odt, loss_scale=scale,
                         loss_scale_value=2.0**15 if scale != "none" else 1.0)
    options = TINY[family] | model_options
    fam, cfg, table = param_table(family, options, prec, remat)
    rules = RULES | (rules or {})
    params = []
    for info in table:
        spec = place(info.shape, info.logical_axes, mp, rules)
        local = math.prod(d // math.prod(mp.size(a) for a in axes) for d, axes in zip(info.shape, spec))
        params.append(ParamSharding(path=info.path, shape=tuple(info.shape), dtype=str(info.dtype),
                                    logical_axes=tuple(info.logical_axes), spec=spec,
                                    bytes_per_device=local * np.dtype(info.dtype).itemsize))
    batch_spec = (tuple(a for a in BATCH_AXES if mp.size(a) > 1),)
    dp = mp.data_parallel
    seq_len = options.get("seq_len", 1) if family == "gpt" else 1
    global_batch = micro_batch * accumulation * dp
    batch = BatchPlan(global_batch=global_batch, micro_batch=micro_batch, accumulation=accumulation,
                      data_parallel=dp, seq_len=seq_len, tokens_per_step=global_batch * seq_len,
                      per_process_batch=global_batch)
    param_bytes = sum(p.bytes_per_device for p in params)
    n = device_count or mp.device_count
    return Plan(
        version=PLAN_VERSION,
        name=f"test-{family}",
        seed=seed,
        run_dir="runs/test",
        topology=Topology(device_kind="cpu", device_count=n, process_count=1, memory_per_device=2**34,
                          peak_flops_bf16=1e11, peak_flops_f32=1e11, simulated=False),
        mesh=mp,
        model=ModelPlan(family=family, config=freeze_options(dict(options)), param_count=sum(math.prod(p.shape) for p in params), remat=remat),
        sharding=ShardingPlan(rules=tuple(sorted(rules.items())), params=tuple(params), batch_spec=batch_spec),
        precision=prec,
        batch=batch,
        optimizer=OptimizerPlan(name=optimizer, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=weight_decay,
                                momentum=0.9, nesterov=False, grad_clip=grad_clip, decay_mask=decay_mask),
        schedule=schedule if schedule is not None else constant_schedule(lr, total_steps),
        stop=StopPlan(rule=None, restore_best=False, restore_metric=None, restore_mode="min"),
        cadence=CadencePlan(total_steps=total_steps, steps_per_epoch=total_steps, eval_every=None, eval_batches=2,
                            checkpoint_every=None, log_every=1),
        checkpoint=CheckpointPlan(keep=2, keep_best_metric=None, keep_best_mode="min", keep_best=0, async_save=False),
        data=DataPlan(source="synthetic", path=None, field="text", tokenizer="byte",
                      kind="lm" if family == "gpt" else "classification",
                      vocab_size=options.get("vocab_size", 0), seq_len=seq_len,
                      input_dim=options.get("input_dim", 0), num_classes=options.get("num_classes", 0),
                      validation_fraction=0.1, shuffle=True, seed=seed, workers=0, prefetch=2,
                      synthetic_examples=256, train_examples=global_batch * total_steps, val_examples=global_batch * 2),
        memory=MemoryEstimate(params=param_bytes, grads=param_bytes, opt_state=2 * param_bytes, activations=0,
                              batch=0, total=4 * param_bytes, device_memory=2**34, fits=True, activation_formula="test"),
        flops=FlopsEstimate(flops_per_token=0.0, flops_per_step=0.0, assumed_mfu=0.4, step_time_s=0.0, formula="test"),
        logging=LoggingPlan(tensorboard=False, progress="none"),
        export=ExportPlan(format="none", opset=23, tolerance=1e-4, path=None),
    )


def make_batch(plan: Plan, seed: int = 0, *, real_tokens=None) -> dict[str, np.ndarray]:
    """A random global batch for `plan` as numpy. `real_tokens`: per row, how many leading positions
    (gpt) or whether the row (mlp, 0/1) count; default all."""
    rng = np.random.default_rng(seed)
    b = plan.batch.global_batch
    if plan.data.kind == "lm":  # counting sequences from random starts: the next token is learnable
        t = plan.batch.seq_len
        start = rng.integers(0, plan.data.vocab_size, size=(b, 1))
        toks = ((start + np.arange(t + 1)[None, :]) % plan.data.vocab_size).astype(np.int32)
        mask = np.ones((b, t), np.float32)
        if real_tokens is not None:
            mask = (np.arange(t)[None, :] < np.asarray(real_tokens)[:, None]).astype(np.float32)
        return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask}
    x = rng.standard_normal((b, plan.data.input_dim)).astype(np.float32)
    y = np.argmax(x[:, : plan.data.num_classes], axis=1).astype(np.int32)  # learnable: the largest of the first features
    mask = np.ones((b,), np.float32) if real_tokens is None else np.asarray(real_tokens, np.float32)
    return {"x": x, "y": y, "mask": mask}
