"""The "mlp" family: a multi-layer perceptron classifier for small tabular or vision data.

Options (recipe `model:` keys): input_dim and num_classes (required), hidden (list of widths,
default [256, 256]), dropout (0.0, after each hidden activation), bias (true). Hidden layers are
Dense + ReLU; the output layer gives class logits. Parameters: "hidden.<i>.kernel" with logical
axes ("input" for the first layer's input, else "hidden") × "hidden", and "out.kernel"
(… × "classes"); biases on the output axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capidsl.models.errors import ModelError
from capidsl.models.family import ModelFamily
from capidsl.models.layers import Dense, dropout
from capidsl.models.transformer import REMAT_POLICIES

DEFAULTS: dict[str, Any] = {"input_dim": None, "hidden": [256, 256], "num_classes": None, "dropout": 0.0, "bias": True}
REQUIRED = ("input_dim", "num_classes")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _widths(c: Mapping[str, Any]) -> list[int]:
    return [c["input_dim"], *c["hidden"], c["num_classes"]]


class MLP(nnx.Module):
    """Features [B, input_dim] → float32 logits [B, num_classes]."""

    def __init__(self, c: Mapping[str, Any], *, rngs, param_dtype, compute_dtype, remat: str = "none"):
        widths = _widths(c)
        axes = ["input"] + ["hidden"] * len(c["hidden"])
        kw = dict(bias=c["bias"], rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        # He-style scale for ReLU layers: N(0, 2/fan_in); the output layer N(0, 1/fan_in).
        self.hidden = nnx.List([
            Dense(widths[i], widths[i + 1], (axes[i], "hidden"), std=math.sqrt(2.0 / widths[i]), **kw)
            for i in range(len(c["hidden"]))
        ])
        self.out = Dense(widths[-2], widths[-1], (axes[-1], "classes"), std=math.sqrt(1.0 / widths[-2]), **kw)
        self.rate, self.remat = float(c["dropout"]), remat

    def __call__(self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
        use_dropout = not deterministic and self.rate > 0.0
        if use_dropout and rngs is None:
            raise ValueError("dropout > 0 and deterministic=False need rngs with a 'dropout' stream")
        rate = self.rate

        def layer_fn(layer, x, key):
            return dropout(jax.nn.relu(layer(x)), rate, key)

        if self.remat != "none":
            layer_fn = nnx.remat(layer_fn, policy=REMAT_POLICIES[self.remat])
        for layer in self.hidden:
            x = layer_fn(layer, x, rngs.dropout() if use_dropout else None)
        return self.out(x).astype(jnp.float32)


class MLPFamily(ModelFamily):
    """Feed-forward classifiers over fixed-width feature vectors."""

    name = "mlp"

    def normalize(self, options: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.merge_options(options, DEFAULTS, REQUIRED)
        for k in ("input_dim", "num_classes"):
            if not _positive_int(cfg[k]):
                raise ModelError(f"must be a positive integer, not {cfg[k]!r}", subject=f"model.{k}")
        hidden = cfg["hidden"]
        if not isinstance(hidden, (list, tuple)) or not all(_positive_int(w) for w in hidden):
            raise ModelError(f"must be a list of positive integers, not {hidden!r}", subject="model.hidden")
        cfg["hidden"] = [int(w) for w in hidden]
        if isinstance(cfg["dropout"], bool) or not isinstance(cfg["dropout"], (int, float)) or not 0 <= cfg["dropout"] < 1:
            raise ModelError(f"must be a number in [0, 1), not {cfg['dropout']!r}", subject="model.dropout")
        cfg["dropout"] = float(cfg["dropout"])
        if not isinstance(cfg["bias"], bool):
            raise ModelError(f"must be true or false, not {cfg['bias']!r}", subject="model.bias")
        return cfg

    def build(self, cfg, *, rngs, param_dtype, compute_dtype, remat: str = "none"):
        if remat not in ("none", "full", "dots"):
            raise ModelError(f"remat must be none, full or dots, not {remat!r}", subject="model.remat")
        return MLP(self.normalize(cfg), rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)

    def num_layers(self, cfg) -> int:
        """Dense layers: the hidden ones and the output layer."""
        return len(cfg["hidden"]) + 1

    def batch_shapes(self, cfg, batch_size: int):
        b = int(batch_size)
        return {"x": ((b, int(cfg["input_dim"])), "float32"), "y": ((b,), "int32"), "mask": ((b,), "float32")}

    def param_count(self, cfg) -> int:
        c = self.normalize(cfg)
        w = _widths(c)
        return sum(w[i] * w[i + 1] + (w[i + 1] if c["bias"] else 0) for i in range(len(w) - 1))

    def flops_per_token(self, cfg) -> float:
        """6·N per example (forward 2N + backward 4N), N = the kernels' scalars (biases left out)."""
        w = _widths(self.normalize(cfg))
        return float(6 * sum(w[i] * w[i + 1] for i in range(len(w) - 1)))

    def activation_bytes_per_layer(self, cfg, micro_batch: int, compute_bytes: int, remat: str) -> int:
        """The network's saved activations divided evenly over `num_layers` (rounded up).

        Saved per example: each Dense layer's input (c bytes per unit), each hidden layer's
        pre-activation for the ReLU (c per unit) and, with dropout, its 1-byte mask. With remat
        ("full" or "dots") only the layer inputs are kept. Logits are the loss's, not counted.
        """
        c = self.normalize(cfg)
        w, b, cb = _widths(c), int(micro_batch), int(compute_bytes)
        total = sum(cb * b * w[i] for i in range(len(w) - 1))  # the inputs of every Dense layer
        if remat == "none":
            per_hidden = cb + (1 if c["dropout"] > 0 else 0)
            total += sum(per_hidden * b * width for width in c["hidden"])
        elif remat not in ("full", "dots"):
            raise ModelError(f"remat must be none, full or dots, not {remat!r}", subject="model.remat")
        n = self.num_layers(c)
        return -(-total // n)

    def predict(self, model, inputs):
        """Float32 class logits [B, num_classes] for features [B, input_dim]."""
        return model(inputs, deterministic=True)

    def loss(self, model, batch, *, deterministic: bool, rngs=None):
        """Cross-entropy summed over rows with mask > 0 (the mask weights each row)."""

        logits = model(batch["x"], deterministic=deterministic, rngs=rngs)
        mask = batch["mask"].astype(jnp.float32)
        real = mask > 0
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        correct = (jnp.argmax(logits, axis=-1) == batch["y"]).astype(jnp.float32)
        return (jnp.sum(jnp.where(real, nll * mask, 0.0)), jnp.sum(mask),
                {"correct_sum": jnp.sum(jnp.where(real, correct * mask, 0.0))})
