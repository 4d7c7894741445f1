"""compile_plan: a validated Recipe (canonical fields only) → a frozen Plan, for the live or a simulated topology.

Order of decisions: topology → mesh → model shapes (nnx.eval_shape, nothing allocated; shapes.py)
→ attention kernel (by device kind, dtype and head size; kernels.py) → batching (auto micro-batch
by the memory estimate; batching.py) → data and steps per epoch (data.py) → run length, schedule,
cadences, stop rule (cadences.py) → lints → estimates. Each step is a function of the earlier
steps' results. Every error points at the recipe key (file:line:col) that caused it, whichever
package raised it: a ModelError or DataError is placed here.
"""

from __future__ import annotations

import dataclasses

from capidsl.data.errors import DataError
from capidsl.families import BUILTIN_FAMILIES
from capidsl.models.errors import ModelError
from capidsl.plan import comms, flops, kernels, lints, pruning
from capidsl.plan.batching import Batching, plan_batching
from capidsl.plan.cadences import Cadences, plan_cadences, total_steps
from capidsl.plan.data import DataLayout, plan_data
from capidsl.plan.errors import PlanError
from capidsl.plan.memory import Workload
from capidsl.plan.mesh import layout
from capidsl.plan.mixture import resolve_stages
from capidsl.plan.plan import (
    PLAN_VERSION, ExportPlan, Lint, LoggingPlan, MeshPlan, ModelPlan, OptimizerPlan, Plan, Topology, freeze_options,
)
from capidsl.plan.shapes import ModelShapes, plan_model_shapes
from capidsl.plan.trainable import frozen_params, trained


def compile_plan(recipe, topology: Topology | None = None, *, progress=None) -> Plan:
    """The execution plan for `recipe` on `topology` (default: the devices this process sees).

    A document source's token store is prepared first when the cache lacks it; `progress` (see
    `capidsl.data.store.Silent`) shows that preparation, the CLI's as a progress bar."""
    from capidsl.plan.topology import live

    where = _where(recipe)
    try:
        return _compile(recipe, topology or live(), where, progress)
    except ModelError as err:
        raise _placed(err, err.message, _model_key(err.subject, recipe.model.family), where) from None
    except DataError as err:
        raise _placed(err, err.args[0], _data_key(err.subject), where) from None


def _compile(recipe, topology: Topology, where, progress=None) -> Plan:
    """The steps, in order; each takes what the ones before it decided."""
    mesh, mesh_lints = layout({"data": recipe.mesh.data, "fsdp": recipe.mesh.fsdp, "tensor": recipe.mesh.tensor},
                              topology, where("mesh"))
    model = plan_model_shapes(recipe, mesh, where)
    attention = kernels.plan_attention(recipe.model.family, model.cfg, topology.device_kind, model.precision.compute_dtype)
    layer_loop = _layer_loop(recipe, model, topology.device_kind, where)
    frozen = frozen_params(recipe.training.trainable, model.sharding, where)  # training.trainable's complement
    batching = plan_batching(recipe.training, topology, mesh,
                             _workload(recipe, model, mesh, topology, frozen, attention, layer_loop), where)
    data_config = recipe.data
    if model.tokenizer and not recipe.written("data.tokenizer"):  # a pretrained model's own tokenizer, unless the recipe names one
        data_config = dataclasses.replace(data_config, tokenizer=model.tokenizer)
    data = plan_data(data_config, recipe.training.seed, model, batching, where, progress)
    batch = data.batch
    total = total_steps(recipe.training, data.steps_per_epoch, batch.tokens_per_step, where)
    data = resolve_stages(data, recipe.data, total, batch.tokens_per_step, where)  # a mixture's stages, in steps
    cadences = plan_cadences(recipe, total, data.steps_per_epoch, batch.tokens_per_step, data.val_batches,
                             trained(model.sharding, frozen), where)  # pruning leaves frozen weights alone
    found = _lints(cadences, data, where)
    memory, memory_lints = _memory(batching, data)
    return _assemble(recipe, topology, mesh, model, batching, data, cadences, memory,
                     lints=tuple(mesh_lints + found + memory_lints + list(data.lints)), frozen=frozen, attention=attention,
                     layer_loop=layer_loop)


def _layer_loop(recipe, model: ModelShapes, device_kind: str, where) -> str:
    """training.layer_loop resolved for this model and device kind (kernels.choose_layer_loop), refused at its
    key when it cannot run."""
    requested = recipe.training.layer_loop
    try:
        return kernels.choose_layer_loop(recipe.model.family, model.family.num_layers(model.cfg), model.remat,
                                         requested, device_kind)
    except kernels.LoopError as err:
        raise PlanError(str(err), subject="training.layer_loop", location=where("training.layer_loop"),
                        hint="layer_loop: auto picks what runs (scanned under remat and for other families)") from None


def _where(recipe):
    """`where(key, column=None)`: the recipe's file:line:col for a dotted key, or None."""
    def where(key: str, column: int | None = None):
        try:
            return recipe.location(key, column)
        except (KeyError, TypeError, AttributeError):
            return None
    return where


def _model_key(subject: str | None, family: str) -> str:
    """The recipe key a ModelError's subject names: itself when it is one (`model.d_model`,
    `model.options.kernel`, `training.remat`), with a third-party family's `model.<option>` under
    `model.options` where its options are written; `model.family`; else `model`."""
    s = subject or ""
    if s == "model.family" or s.startswith("model family"):
        return "model.family"
    if s.startswith("model.") and not s.startswith("model.options.") and family not in BUILTIN_FAMILIES:
        return "model.options." + s.removeprefix("model.")
    return s if "." in s and " " not in s else "model"


def _data_key(subject: str | None) -> str:
    """The recipe key a DataError's subject names: `data` or one of its keys (`data.path`, ...)."""
    return subject if subject and (subject == "data" or subject.startswith("data.")) else "data"


def _placed(err, message: str, key: str, where) -> PlanError:
    """A lower stage's error as a PlanError at recipe key `key`, keeping its message, subject and hint."""
    names_a_key = err.subject and "." in err.subject and " " not in err.subject
    return PlanError(message, subject=key if names_a_key else err.subject or key, location=where(key), hint=err.hint)


def _workload(recipe, model: ModelShapes, mesh: MeshPlan, topology: Topology, frozen: tuple[str, ...] = (),
              attention: str = kernels.XLA, layer_loop: str = kernels.SCANNED) -> Workload:
    """The memory estimate's inputs besides the batch shape (pruning masks count as state; frozen
    parameters have no gradient or optimizer state; a fused attention kernel saves no T×T scores)."""
    p = recipe.pruning
    pruned = pruning.pruned_params(trained(model.sharding, frozen), p.embeddings)
    masks = pruning.mask_bytes(pruned) if p.schedule is not None else 0
    return Workload(model=model, mesh=mesh, optimizer=recipe.optimizer.name, momentum=recipe.optimizer.momentum,
                    device_memory=topology.memory_per_device, state_bytes=masks, frozen=frozenset(frozen),
                    attention=attention, layer_loop=layer_loop)


def _lints(cadences: Cadences, data: DataLayout, where) -> list[Lint]:
    """Warnings about legal settings that are probably mistakes; a stop rule that can never be judged is an error."""
    cadence, stop, global_batch = cadences.cadence, cadences.stop, data.batch.global_batch
    found = lints.lint(cadence, stop, cadences.checkpoint.keep_best_metric, where)
    eval_every = cadence.eval_every
    if eval_every and eval_every <= cadence.total_steps and cadence.eval_batches == 0:
        loc = where("eval.every")
        found.append(Lint("warning", "eval-empty", f"the validation split ({data.val_examples} examples) holds less than "
                          f"one global batch of {global_batch}: evaluations will fail", str(loc) if loc else None))
    if stop.rule is not None and any(m.startswith("val_") for m in stop.rule.metrics()) and eval_every \
            and data.val_batches == 0:
        raise PlanError(f"the stop rule reads validation metrics but the validation split ({data.val_examples} examples) "
                        f"holds less than one batch of {global_batch}", subject="data.validation_fraction",
                        location=where("data.validation_fraction"), hint="raise data.validation_fraction")
    return found


def _memory(batching: Batching, data: DataLayout):
    """The memory estimate of the plan's most demanding batch shape, and a warning if it does not fit."""
    batch, workload = data.batch, batching.workload
    if data.data.buckets:  # the most demanding of the plan's batch shapes
        mem = max((workload.at(b.rows // (batch.data_parallel * batch.accumulation), batch.accumulation, seq_len=b.length)
                   for b in data.data.buckets), key=lambda e: e.total)
    else:
        mem = workload.at(batch.micro_batch, batch.accumulation)
    if mem.fits:
        return mem, []
    return mem, [Lint("warning", "does-not-fit", f"the estimate ({mem.total / 2**30:.2f} GiB per device) exceeds the "
                      f"device memory ({mem.device_memory / 2**30:.2f} GiB)", None)]


def _assemble(recipe, topology: Topology, mesh: MeshPlan, model: ModelShapes, batching: Batching, data: DataLayout,
              cadences: Cadences, memory, lints: tuple[Lint, ...], frozen: tuple[str, ...] = (),
              attention: str = kernels.XLA, layer_loop: str = kernels.SCANNED) -> Plan:
    """The Plan from the steps' results, with the FLOP and communication estimates they imply."""
    t, o, batch, fam, precision = recipe.training, recipe.optimizer, data.batch, model.family, model.precision
    return Plan(
        version=PLAN_VERSION, name=recipe.name or "recipe", seed=int(t.seed), run_dir=recipe.run_dir or "runs/recipe",
        topology=topology, mesh=mesh,
        model=ModelPlan(family=recipe.model.family, config=freeze_options(model.cfg),
                        param_count=fam.param_count(model.cfg), remat=model.remat, init=model.init,
                        attention=attention, layer_loop=layer_loop),
        sharding=model.sharding, precision=precision, batch=batch,
        optimizer=OptimizerPlan(name=o.name, beta1=float(o.beta1), beta2=float(o.beta2), epsilon=float(o.epsilon),
                                weight_decay=float(o.weight_decay), momentum=float(o.momentum), nesterov=bool(o.nesterov),
                                grad_clip=None if t.grad_clip is None else float(t.grad_clip), decay_mask="matrices",
                                frozen=frozen),
        schedule=cadences.schedule, stop=cadences.stop, cadence=cadences.cadence, checkpoint=cadences.checkpoint,
        data=data.data, memory=memory,
        flops=flops.estimate(fam, model.cfg, batch.tokens_per_step, topology, precision.compute_dtype),
        logging=LoggingPlan(tensorboard=bool(recipe.logging.tensorboard), progress=recipe.logging.progress),
        export=ExportPlan(format=recipe.export.format, opset=int(recipe.export.opset),
                          tolerance=float(recipe.export.tolerance), path=recipe.export.path),
        lints=lints, pruning=cadences.pruning, hidden_state=batching.hidden,
        comms=comms.estimate(model.sharding, mesh, batch, topology, precision.compute_dtype),
        xla_flags=kernels.xla_flags(topology.device_kind),
    )
