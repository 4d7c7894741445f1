"""compile_plan: a validated Recipe (canonical fields only) → a frozen Plan, for the live or a simulated topology.

Order of decisions: topology → mesh → model shapes (nnx.eval_shape, nothing allocated) →
sharding → batching (auto micro-batch by the memory estimate) → dataset size → exact step counts
→ schedule and stop rule resolved → cadences → estimates → lints. Every error points at the
recipe key (file:line:col) that caused it.
"""

from __future__ import annotations

from capidsl.data.describe import describe
from capidsl.lang import LangError
from capidsl.lang.stop import Stalls, direction_of, walk
from capidsl.plan import batching, comms, flops, lints, memory, pruning
from capidsl.plan.errors import PlanError
from capidsl.plan.buckets import plan_buckets
from capidsl.plan.recurrent import plan_hidden_state
from capidsl.plan.mesh import batch_blocks, layout
from capidsl.plan.plan import (
    PLAN_VERSION, Lint, BatchPlan, CadencePlan, CheckpointPlan, DataPlan, ExportPlan, LoggingPlan, ModelPlan,
    OptimizerPlan, Plan, PrecisionPlan, StopPlan, Topology, freeze_options,
)
from capidsl.plan.sharding import plan_sharding, rules_with


def _where(recipe):
    def where(key: str, column: int | None = None):
        try:
            return recipe.location(key, column)
        except (KeyError, TypeError, AttributeError):
            return None
    return where


def _lang_error(err: LangError, key: str, where) -> PlanError:
    return PlanError(err.message, subject=key, location=where(key, err.column), hint=err.hint)


def _abstract_table(fam, cfg, precision: PrecisionPlan, remat: str):
    """The model's parameter table from abstract shapes only."""
    import jax.numpy as jnp
    from flax import nnx

    from capidsl.models import param_table

    abstract = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(precision.param_dtype),
                                                compute_dtype=jnp.dtype(precision.compute_dtype), remat=remat))
    return param_table(abstract)


def compile_plan(recipe, topology: Topology | None = None) -> Plan:
    """The execution plan for `recipe` on `topology` (default: the devices this process sees)."""
    from capidsl.models import get_family
    from capidsl.plan.topology import live

    where = _where(recipe)
    topology = topology or live()
    t = recipe.training
    mesh_cfg = recipe.mesh
    mesh, mesh_lints = layout({"data": mesh_cfg.data, "fsdp": mesh_cfg.fsdp, "tensor": mesh_cfg.tensor}, topology,
                              where("mesh"))

    # -- model, precision, sharding ----------------------------------------------------------------
    fam = get_family(recipe.model.family)
    cfg = fam.normalize(dict(recipe.model.options))
    p = recipe.precision
    precision = PrecisionPlan(param_dtype=p.params, compute_dtype=p.compute, output_dtype=p.output,
                              loss_scale=p.loss_scale, loss_scale_value=float(p.loss_scale_value))
    table = _abstract_table(fam, cfg, precision, t.remat)
    rules = rules_with(dict(mesh_cfg.rules))
    try:
        sharding = plan_sharding(table, mesh, rules)
    except PlanError as err:
        err.location = err.location or where("mesh")
        raise
    lm = "inputs" in fam.batch_shapes(cfg, 1)
    seq_len = int(cfg.get("seq_len", 1)) if lm else 1

    # -- batching ------------------------------------------------------------------------------------
    dp = mesh.data_parallel
    o = recipe.optimizer
    state_bytes = pruning.mask_bytes(pruning.pruned_params(sharding, recipe.pruning.embeddings)) \
        if recipe.pruning.schedule is not None else 0

    def estimate(micro: int, accumulation: int, seq_len: int | None = None):
        at = cfg if seq_len is None else {**cfg, "seq_len": seq_len}  # a bucket's rows are shorter than seq_len
        return memory.estimate(family=fam, cfg=at, sharding=sharding, mesh=mesh, optimizer=o.name, momentum=o.momentum,
                               micro_batch=micro, rows_per_device=micro * accumulation,
                               batch_shapes=fam.batch_shapes(at, 1), compute_dtype=precision.compute_dtype,
                               remat=t.remat, device_memory=topology.memory_per_device, state_bytes=state_bytes)

    micro, accumulation = batching.derive(
        t.batch_size, t.micro_batch, t.gradient_accumulation_steps, dp,
        fits=lambda m: estimate(m, t.batch_size // dp // m).fits, where=where)
    # a state carried across batches (placed once the batch is known to split; `micro_batch: auto` above
    # sized micro-batches without it: it is B × layers × width, small beside the activations)
    hidden = plan_hidden_state(fam, cfg, t.batch_size, mesh, rules)
    state_bytes += hidden.bytes_per_device if hidden is not None else 0
    global_batch = t.batch_size
    tokens_per_step = global_batch * seq_len
    blocks = batch_blocks(mesh, topology, where("mesh"))  # processes holding distinct rows of each batch
    if global_batch % blocks:
        raise PlanError(f"the global batch ({global_batch}) does not split over {blocks} processes",
                        subject="training.batch_size", location=where("training.batch_size"))
    batch = BatchPlan(global_batch=global_batch, micro_batch=micro, accumulation=accumulation, data_parallel=dp,
                      seq_len=seq_len, tokens_per_step=tokens_per_step,
                      per_process_batch=global_batch // blocks)

    # -- data and run length ---------------------------------------------------------------------------
    d = recipe.data
    data = DataPlan(source=d.source, path=d.path, field=d.field, tokenizer=d.tokenizer,
                    kind="lm" if lm else "classification", vocab_size=int(cfg.get("vocab_size", 0)), seq_len=seq_len,
                    input_dim=int(cfg.get("input_dim", 0)), num_classes=int(cfg.get("num_classes", 0)),
                    validation_fraction=float(d.validation_fraction), shuffle=bool(d.shuffle), seed=int(t.seed),
                    workers=int(d.workers), prefetch=int(d.prefetch), synthetic_examples=int(d.synthetic_examples),
                    train_examples=0, val_examples=0, streams=t.batch_size if hidden is not None else 0)
    info = describe(data)
    if lm and info.vocab_size > data.vocab_size:
        raise PlanError(f"the tokenizer has {info.vocab_size} tokens but model.vocab_size is {data.vocab_size}",
                        subject="model.vocab_size", location=where("model.vocab_size"),
                        hint=f"set model.vocab_size to at least {info.vocab_size}")
    data = DataPlan(**{**data.__dict__, "train_examples": info.train_examples, "val_examples": info.val_examples})
    steps_per_epoch = info.train_examples // global_batch
    bucket_lints: tuple = ()
    if d.batching == "bucketed":  # one document per row, by length bucket (capidsl/plan/buckets.py)
        bucketing = plan_buckets(d, data, batch, blocks, where)
        data, batch, steps_per_epoch = bucketing.data, bucketing.batch, bucketing.steps_per_epoch
        bucket_lints = bucketing.lints
        global_batch, tokens_per_step = batch.global_batch, batch.tokens_per_step
    if steps_per_epoch == 0:
        raise PlanError(f"the training split holds {info.train_examples} examples, fewer than one batch of {global_batch}",
                        subject="data", location=where("data"), hint="use more data or a smaller batch")
    if t.duration is None:
        raise PlanError("the recipe does not say how long to train", subject="training", location=where("training"),
                        hint='set training.duration (e.g. "2000 steps") or training.num_epochs')
    try:
        total_steps = t.duration.to_steps(steps_per_epoch, tokens_per_step)
    except LangError as err:
        key = "training.num_epochs" if t.num_epochs is not None else "training.duration"
        raise _lang_error(err, key, where) from None

    # -- schedule, stop rule, cadences -------------------------------------------------------------------
    try:
        schedule = recipe.schedule.resolve(total_steps, steps_per_epoch, tokens_per_step)
    except LangError as err:
        raise _lang_error(err, "schedule", where) from None
    prune = pruning.plan_pruning(recipe.pruning, sharding, total_steps, steps_per_epoch, tokens_per_step, where)

    def steps_of(cadence, key):
        if cadence is None:
            return None
        try:
            return cadence.to_steps(steps_per_epoch, tokens_per_step)
        except LangError as err:
            raise _lang_error(err, key, where) from None

    eval_every = steps_of(recipe.eval.every, "eval.every")
    val_batches = bucketing.val_batches if data.buckets else info.val_examples // global_batch
    eval_batches = min(recipe.eval.batches, val_batches) if recipe.eval.batches else val_batches
    cadence = CadencePlan(total_steps=total_steps, steps_per_epoch=steps_per_epoch, eval_every=eval_every,
                          eval_batches=eval_batches, checkpoint_every=steps_of(recipe.checkpoint.every, "checkpoint.every"),
                          log_every=steps_of(recipe.logging.every, "logging.every"))
    stop = _stop_plan(recipe, steps_per_epoch, tokens_per_step)
    kb = recipe.checkpoint.keep_best
    checkpoint = CheckpointPlan(keep=recipe.checkpoint.keep, keep_best_metric=kb.metric if kb else None,
                                keep_best_mode=kb.mode if kb else "min", keep_best=kb.n if kb else 0,
                                async_save=recipe.checkpoint.async_)
    found = lints.lint(cadence, stop, checkpoint.keep_best_metric, where)
    if eval_every and eval_every <= total_steps and eval_batches == 0:
        loc = where("eval.every")
        found.append(Lint("warning", "eval-empty", f"the validation split ({info.val_examples} examples) holds less than "
                          f"one global batch of {global_batch}: evaluations will fail", str(loc) if loc else None))
    if stop.rule is not None and any(m.startswith("val_") for m in stop.rule.metrics()) and eval_every and val_batches == 0:
        raise PlanError(f"the stop rule reads validation metrics but the validation split ({info.val_examples} examples) "
                        f"holds less than one batch of {global_batch}", subject="data.validation_fraction",
                        location=where("data.validation_fraction"), hint="raise data.validation_fraction")

    # -- estimates -------------------------------------------------------------------------------------
    mem = estimate(micro, accumulation)
    if data.buckets:  # the most demanding of the plan's batch shapes
        mem = max((estimate(b.rows // (dp * accumulation), accumulation, seq_len=b.length) for b in data.buckets),
                  key=lambda e: e.total)
    if not mem.fits:
        found.append(Lint("warning", "does-not-fit",
                          f"the estimate ({mem.total / 2**30:.2f} GiB per device) exceeds the device memory "
                          f"({mem.device_memory / 2**30:.2f} GiB)", None))
    flop = flops.estimate(fam, cfg, tokens_per_step, topology, precision.compute_dtype)
    traffic = comms.estimate(sharding, mesh, batch, topology, precision.compute_dtype)

    return Plan(
        version=PLAN_VERSION, name=recipe.name or "recipe", seed=int(t.seed), run_dir=recipe.run_dir or "runs/recipe",
        topology=topology, mesh=mesh,
        model=ModelPlan(family=recipe.model.family, config=freeze_options(cfg), param_count=fam.param_count(cfg),
                        remat=t.remat),
        sharding=sharding, precision=precision, batch=batch,
        optimizer=OptimizerPlan(name=o.name, beta1=float(o.beta1), beta2=float(o.beta2), epsilon=float(o.epsilon),
                                weight_decay=float(o.weight_decay), momentum=float(o.momentum), nesterov=bool(o.nesterov),
                                grad_clip=None if t.grad_clip is None else float(t.grad_clip), decay_mask="matrices"),
        schedule=schedule, stop=stop, cadence=cadence, checkpoint=checkpoint, data=data, memory=mem, flops=flop,
        logging=LoggingPlan(tensorboard=bool(recipe.logging.tensorboard), progress=recipe.logging.progress),
        export=ExportPlan(format=recipe.export.format, opset=int(recipe.export.opset),
                          tolerance=float(recipe.export.tolerance), path=recipe.export.path),
        lints=tuple(mesh_lints + found + list(bucket_lints)), pruning=prune, hidden_state=hidden, comms=traffic,
    )


def _stop_plan(recipe, steps_per_epoch: int, tokens_per_step: int) -> StopPlan:
    """The stop rule resolved for this run, and which metric `restore_best` means."""
    s = recipe.stop
    rule = s.when.resolve(steps_per_epoch, tokens_per_step) if s.when is not None else None
    metric, mode = None, "min"
    if rule is not None:
        stalls = [n for n in walk(rule.expr) if isinstance(n, Stalls)]
        if stalls:
            metric, mode = stalls[0].metric, stalls[0].mode
        else:
            evals = [m for m in rule.metrics() if m.startswith("val_")]
            metric = evals[0] if evals else None
            mode = (direction_of(metric, dict(s.directions)) or "min") if metric else "min"
    if s.restore_best and metric is None:
        metric, mode = "val_loss", "min"
    return StopPlan(rule=rule, restore_best=bool(s.restore_best), restore_metric=metric if s.restore_best else None,
                    restore_mode=mode)
