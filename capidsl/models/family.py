"""The ModelFamily contract that the plan compiler and the executor program against, and `param_table`.

A family turns a recipe's `model:` options into a flax.nnx module and answers, without building
anything, the questions the plan compiler asks: how many parameters, what a batch looks like,
how many FLOPs per token, how many activation bytes per layer. Parameters carry their logical
axes as NNX variable metadata under the key `logical_axes` (one name, or None, per dimension);
the plan compiler maps those names to mesh axes. Nothing here imports JAX at module level, so
`capidsl.models.family_names()` stays cheap.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capidsl.models.errors import ModelError

LOGICAL_AXES_KEY = "logical_axes"

# The leaf names of low-rank adapters (model.lora; capidsl/models/layers.py's Dense): parameters
# that train by default when the model has them, and that a pretrained checkpoint does not hold.
ADAPTER_LEAVES = ("lora_a", "lora_b")


def is_adapter(path: str) -> bool:
    """Whether the dotted parameter path names an adapter matrix."""
    return path.rsplit(".", 1)[-1] in ADAPTER_LEAVES


# The logical axis names the built-in families use (a custom family may add its own).
LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "mlp", "layers", "norm", "classes", "hidden", "input", "state")


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of an abstract model: dotted path, shape, dtype name and logical axes."""

    path: str  # "blocks.attn.q.kernel"
    shape: tuple[int, ...]
    dtype: str  # "float32"
    logical_axes: tuple[str | None, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class ModelFamily(abc.ABC):
    """A named family of models. Subclass it (or provide the same methods) and register it.

    `cfg` below is always the plain dict returned by `normalize`, which must be idempotent:
    the plan stores the normalised options and the executor normalises them again.
    """

    name: str = "?"

    @abc.abstractmethod
    def normalize(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The recipe's model keys (minus "family") with every default filled in, as a plain JSON-able dict."""

    @abc.abstractmethod
    def build(self, cfg: Mapping[str, Any], *, rngs, param_dtype, compute_dtype, remat: str = "none"):
        """The flax.nnx module. It must hold nothing but `nnx.Param`s (dropout RNG comes through `loss`)."""

    @abc.abstractmethod
    def param_count(self, cfg: Mapping[str, Any]) -> int:
        """The exact number of parameter scalars, computed analytically (equals the built model's)."""

    @abc.abstractmethod
    def batch_shapes(self, cfg: Mapping[str, Any], batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """The arrays of one batch of `batch_size` rows: name -> (shape, dtype name)."""

    @abc.abstractmethod
    def loss(self, model, batch, *, deterministic: bool, rngs=None):
        """(loss_sum, weight_sum, metrics): float32 sums over real (mask > 0) examples/tokens.

        Sums, not means, so that gradient accumulation divides once by the total weight over all
        micro-batches. `metrics` holds at least "correct_sum" (the weighted count of argmax hits).
        """

    @abc.abstractmethod
    def predict(self, model, inputs):
        """The inference function: float32 logits for `inputs` (what ONNX export traces)."""

    @abc.abstractmethod
    def flops_per_token(self, cfg: Mapping[str, Any]) -> float:
        """Model FLOPs per token (or example) for one forward and backward pass."""

    @abc.abstractmethod
    def activation_bytes_per_layer(self, cfg: Mapping[str, Any], micro_batch: int, compute_bytes: int, remat: str) -> int:
        """Bytes of activations one layer keeps for the backward pass, for one micro-batch.

        The plan counts the residuals of `jax.vjp(loss)` itself (capidsl/plan/activations.py) and uses
        this formula only when the family's loss cannot be traced on abstract parameters."""

    @abc.abstractmethod
    def num_layers(self, cfg: Mapping[str, Any]) -> int:
        """How many layers `activation_bytes_per_layer` is multiplied by."""

    # -- shared by the built-in families -------------------------------------------------------

    def merge_options(self, options: Mapping[str, Any], defaults: Mapping[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
        """`defaults` overlaid with `options`; unknown keys and missing required keys are ModelErrors.

        A None value means "the default" (recipes write `n_kv_heads: null`).
        """
        unknown = sorted(set(options) - set(defaults) - {"family"})
        if unknown:
            raise ModelError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                subject=f"model {self.name}",
                hint=f"the {self.name} family takes: {', '.join(sorted(defaults))}",
            )
        cfg = dict(defaults)
        cfg.update({k: v for k, v in options.items() if k != "family" and v is not None})
        missing = [k for k in required if cfg.get(k) is None]
        if missing:
            raise ModelError(f"missing option{'s' if len(missing) > 1 else ''} {', '.join(missing)}", subject=f"model {self.name}")
        return cfg


REQUIRED_METHODS = (
    "normalize", "build", "param_count", "batch_shapes", "loss", "predict",
    "flops_per_token", "activation_bytes_per_layer", "num_layers",
)


def param_table(abstract_model) -> list[ParamInfo]:
    """Every `nnx.Param` of a model (abstract, from `nnx.eval_shape`, or real), sorted by dotted path.

    The path joins the state's keys with dots ("blocks.attn.q.kernel"), the same name the executor
    gives the leaf of `nnx.split(model, nnx.Param, ...)`. Allocates nothing.
    """
    from flax import nnx

    state = nnx.state(abstract_model, nnx.Param)
    rows = []
    for keys, var in nnx.to_flat_state(state):
        shape = tuple(int(d) for d in var.shape)
        meta = var.get_metadata()
        axes = meta.get(LOGICAL_AXES_KEY)
        if axes is None or len(axes) != len(shape):
            raise ModelError(
                f"parameter {'.'.join(map(str, keys))} {shape} has logical axes {axes!r}",
                subject="model",
                hint="create every parameter as nnx.Param(value, logical_axes=(one name or None per dimension))",
            )
        rows.append(ParamInfo(path=".".join(str(k) for k in keys), shape=shape, dtype=str(var.dtype), logical_axes=tuple(axes)))
    return sorted(rows, key=lambda r: r.path)
