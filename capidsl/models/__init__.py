"""Model families: what the plan compiler sizes and the executor trains.

    from capidsl.models import get_family, family_names, ModelFamily, param_table
    fam = get_family("gpt")        # "gpt", "mlp", or a name in the entry-point group "capidsl.models"
    cfg = fam.normalize(options)   # the recipe's model keys minus "family", defaults filled: a plain dict
    model = fam.build(cfg, rngs=nnx.Rngs(params=seed), param_dtype=jnp.float32,
                      compute_dtype=jnp.bfloat16, remat="none" | "full" | "dots")
    fam.param_count(cfg)                      # exact, analytic (GPT-2 small, tied: 124,439,808)
    fam.batch_shapes(cfg, batch_size)         # {"inputs": ((B, T), "int32"), ...}
    fam.loss(model, batch, deterministic=, rngs=)  # (loss_sum, weight_sum, {"correct_sum": ...}): sums
    fam.predict(model, inputs)                # float32 logits; the function ONNX export traces
    fam.flops_per_token(cfg)                  # forward + backward model FLOPs per token
    fam.activation_bytes_per_layer(cfg, micro_batch, compute_bytes, remat)
    fam.num_layers(cfg)
    param_table(nnx.eval_shape(lambda: fam.build(...)))  # [ParamInfo(path, shape, dtype, logical_axes)], by path

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (one name or None per
dimension; names from `LOGICAL_AXES`); stacked layers have a leading "layers" axis. Models hold
no state other than parameters. Importing this package imports no JAX; `get_family` does.
"""

from capidsl.models.errors import ModelError
from capidsl.models.family import LOGICAL_AXES, LOGICAL_AXES_KEY, ModelFamily, ParamInfo, param_table
from capidsl.models.registry import ENTRY_POINT_GROUP, family_names, get_family

__all__ = [
    "ENTRY_POINT_GROUP",
    "LOGICAL_AXES",
    "LOGICAL_AXES_KEY",
    "ModelError",
    "ModelFamily",
    "ParamInfo",
    "family_names",
    "get_family",
    "param_table",
]
