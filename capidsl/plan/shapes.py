"""The model step of planning: the family's options, its parameter table from abstract shapes, and placement.

Nothing is allocated: the model is built under `nnx.eval_shape`, so planning a 70B model costs
what planning a small one does. The result, `ModelShapes`, is what every later step reads about
the model (the family's analytic answers, the sharded parameters, the sequence length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capidsl.plan.errors import PlanError
from capidsl.plan.plan import MeshPlan, PrecisionPlan, ShardingPlan
from capidsl.plan.sharding import plan_sharding, rules_with


@dataclass(frozen=True)
class ModelShapes:
    """The model as the plan sees it: family, normalised options, dtypes and the placed parameters."""

    family: Any  # a capidsl.models.ModelFamily
    cfg: dict  # the family's normalised options (read, never written, after this step)
    precision: PrecisionPlan
    remat: str
    rules: dict[str, tuple[str, ...]]  # logical axis → mesh axes (the defaults with mesh.rules)
    sharding: ShardingPlan
    lm: bool  # a language model (batches of token sequences), or a classifier
    seq_len: int  # 1 for a classifier
    init: Any = None  # the InitPlan of pretrained starting weights (capidsl/plan/init.py), or None
    tokenizer: str | None = None  # the pretrained model's own tokenizer file, when it has one


def plan_precision(p) -> PrecisionPlan:
    """The recipe's `precision:` section as plan fields."""
    return PrecisionPlan(param_dtype=p.params, compute_dtype=p.compute, output_dtype=p.output,
                         loss_scale=p.loss_scale, loss_scale_value=float(p.loss_scale_value))


def abstract_table(fam, cfg, precision: PrecisionPlan, remat: str):
    """The model's parameter table from abstract shapes only."""
    import jax.numpy as jnp
    from flax import nnx

    from capidsl.models import param_table

    abstract = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.dtype(precision.param_dtype),
                                                compute_dtype=jnp.dtype(precision.compute_dtype), remat=remat))
    return param_table(abstract)


def plan_model_shapes(recipe, mesh: MeshPlan, where) -> ModelShapes:
    """The recipe's model normalised by its family, built abstractly and placed on `mesh`.

    A ModelError from the family passes through; `compile_plan` places it at the recipe key."""
    from capidsl.models import get_family

    from capidsl.plan.init import init_options, plan_init

    fam = get_family(recipe.model.family)
    options, hf = init_options(recipe, where)
    cfg = fam.normalize(options)
    precision = plan_precision(recipe.precision)
    remat = recipe.training.remat
    table = abstract_table(fam, cfg, precision, remat)
    init = plan_init(hf, cfg, table, where)
    rules = rules_with(dict(recipe.mesh.rules))
    try:
        sharding = plan_sharding(table, mesh, rules)
    except PlanError as err:
        err.location = err.location or where("mesh")
        raise
    lm = "inputs" in fam.batch_shapes(cfg, 1)
    return ModelShapes(family=fam, cfg=cfg, precision=precision, remat=remat, rules=rules, sharding=sharding, lm=lm,
                       seq_len=int(cfg.get("seq_len", 1)) if lm else 1, init=init,
                       tokenizer=None if hf is None else hf["tokenizer"])
