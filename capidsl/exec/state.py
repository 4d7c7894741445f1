"""The training state — parameters, optimizer state, step, loss scale, a carried recurrent state — created
directly sharded.

Parameters are never materialised whole on one device: the model is built inside a `jax.jit`
whose `out_shardings` are the plan's, so each device computes only its own shards (XLA prunes
the rest of the initialiser). The state is the functional split of an nnx model
(`graphdef, params = nnx.split(model, nnx.Param)`): the train step is a plain `jax.jit` over it
that calls `nnx.merge` inside, about 25% faster than `nnx.jit` on small models (STACK.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import named_sharding, param_path, replicated, tree_shardings
from capidsl.exec.optimizer import make_optimizer
from capidsl.exec.precision import LossScale, dtype, initial_loss_scale
from capidsl.plan.plan import Plan


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a step reads and writes; a pytree (checkpointed as is)."""

    params: nnx.State  # the model's nnx.Param variables, in the plan's param_dtype
    opt_state: Any  # optax state
    step: jax.Array  # int32 scalar: optimizer steps taken
    loss_scale: LossScale  # scale 1 and never changed unless the plan scales the loss
    hidden: Any = ()  # the recurrent state carried to the next batch (plan.hidden_state), else nothing


def model_family(plan: Plan):
    """The registered family and its normalised config for the plan's model."""
    from capidsl.models import get_family  # the model registry (capidsl/models)

    fam = get_family(plan.model.family)
    return fam, fam.normalize(plan.model.options)


def build_model(plan: Plan, fam, cfg, rngs: nnx.Rngs):
    """The model exactly as the plan says: dtypes, rematerialisation, attention kernel and layer loop
    included (the kernel and loop are passed only when not the default, so a family without them never
    sees them)."""
    kernel = {} if plan.model.attention == "xla" else {"attention": plan.model.attention}
    if plan.model.layer_loop != "scanned":
        kernel["layer_loop"] = plan.model.layer_loop
    return fam.build(
        cfg,
        rngs=rngs,
        param_dtype=dtype(plan.precision.param_dtype),
        compute_dtype=dtype(plan.precision.compute_dtype),
        remat=plan.model.remat,
        **kernel,
    )


def _creator(plan: Plan):
    """A function () -> TrainState that builds the model, and a box that receives its graphdef."""
    fam, cfg = model_family(plan)
    tx = make_optimizer(plan)
    box: dict[str, Any] = {}

    def create() -> TrainState:
        model = build_model(plan, fam, cfg, nnx.Rngs(plan.seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        box["graphdef"], box["rest"] = graphdef, rest
        return TrainState(
            params=params,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            loss_scale=initial_loss_scale(plan.precision),
            hidden=initial_hidden(plan),
        )

    return create, box


def fresh_adapters(create, abstract_params, shardings) -> dict[str, jax.Array]:
    """path -> the model's own newly drawn adapter (model.lora), as a model built from scratch draws
    it; {} without adapters. Only the adapters leave the jitted build: XLA drops the rest of it."""
    from capidsl.models.family import is_adapter

    paths = [param_path(k) for k, _ in jax.tree_util.tree_leaves_with_path(abstract_params)]
    if not any(is_adapter(p) for p in paths):
        return {}
    placed = {param_path(k): s for k, s in jax.tree_util.tree_leaves_with_path(shardings)}

    def adapters():
        leaves = jax.tree_util.tree_leaves_with_path(create().params)
        return {param_path(k): v for k, v in leaves if is_adapter(param_path(k))}

    return jax.jit(adapters, out_shardings={p: placed[p] for p in paths if is_adapter(p)})()


def initial_hidden(plan: Plan):
    """Zeros of the plan's carried state (every stream starts from a zero state), or () when none is carried."""
    h = plan.hidden_state
    return () if h is None else jnp.zeros(tuple(h.shape), dtype(h.dtype))


def _check_against_plan(plan: Plan, abstract: TrainState, rest) -> None:
    """The model built here must be the one the plan was compiled for: same parameters, same shapes."""
    if jax.tree_util.tree_leaves(rest):
        names = sorted({param_path(k) for k, _ in jax.tree_util.tree_leaves_with_path(rest)})
        raise RunError(
            f"the model holds state besides its parameters: {', '.join(names[:5])}",
            subject=f"model {plan.model.family}",
            hint="a family must take its dropout RNG as the `rngs` argument of `loss`, not store one",
        )
    planned = {p.path: tuple(p.shape) for p in plan.sharding.params}
    built = {param_path(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract.params)}
    if planned != built:
        diff = sorted(set(planned.items()) ^ set(built.items()))
        shown = "; ".join(f"{p} {s}{' (plan)' if planned.get(p) == s else ' (model)'}" for p, s in diff[:6])
        raise RunError(
            f"the model's parameters differ from the plan's: {shown}",
            subject=f"model {plan.model.family}",
            hint="compile the plan again with this version of capidsl",
        )


def _abstract(plan: Plan):
    create, box = _creator(plan)
    abstract = jax.eval_shape(create)
    _check_against_plan(plan, abstract, box["rest"])
    return box["graphdef"], abstract, create


def shardings_for(plan: Plan, mesh: Mesh, abstract: TrainState) -> TrainState:
    """The plan's NamedSharding for every leaf of a state (counters and the loss scale replicated)."""
    return TrainState(
        params=tree_shardings(plan, mesh, abstract.params),
        opt_state=tree_shardings(plan, mesh, abstract.opt_state),
        step=replicated(mesh),
        loss_scale=jax.tree_util.tree_map(lambda _: replicated(mesh), abstract.loss_scale),
        hidden=() if plan.hidden_state is None else named_sharding(mesh, plan.hidden_state.spec),
    )


def abstract_state(plan: Plan, mesh: Mesh) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, state of ShapeDtypeStructs carrying the plan's shardings): for restore and AOT."""
    graphdef, abstract, _ = _abstract(plan)
    shardings = shardings_for(plan, mesh, abstract)
    return graphdef, jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def init_state(plan: Plan, mesh: Mesh) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, a fresh state) with every array created already sharded as the plan says; the
    parameters are the pretrained ones when the plan starts from a checkpoint (capidsl/exec/weights.py)."""
    graphdef, abstract, create = _abstract(plan)
    shardings = shardings_for(plan, mesh, abstract)
    with jax.set_mesh(mesh):
        if plan.model.init is None:
            return graphdef, jax.jit(create, out_shardings=shardings)()
        from capidsl.exec.weights import pretrained_params

        params = pretrained_params(plan, mesh, abstract.params, shardings.params,
                                   fresh_adapters(create, abstract.params, shardings.params))
        tx = make_optimizer(plan)

        def start(params) -> TrainState:
            return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                              loss_scale=initial_loss_scale(plan.precision), hidden=initial_hidden(plan))

        return graphdef, jax.jit(start, out_shardings=shardings, donate_argnums=0)(params)
