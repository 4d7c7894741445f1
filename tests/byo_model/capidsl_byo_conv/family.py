"""The "causal_conv" family: a language model with no attention, registered from outside capidsl.

It is written only against capidsl's public model contract (`capidsl.models.ModelFamily`), the
way a third-party package would: token embedding → depthwise causal convolution over the last
`kernel` tokens (residual) → GELU MLP (residual) → RMSNorm → logits through the tied embedding.
Every parameter is an `nnx.Param` with logical axes, so the plan compiler can shard it.

Options: vocab_size, seq_len, d_model (required), kernel (4), d_ff (4·d_model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capidsl.models import ModelError, ModelFamily

DEFAULTS: dict[str, Any] = {"vocab_size": None, "seq_len": None, "d_model": None, "kernel": 4, "d_ff": None}
REQUIRED = ("vocab_size", "seq_len", "d_model")
EPS = 1e-5


def _param(rngs: nnx.Rngs, shape, dtype, axes, std: float | None) -> nnx.Param:
    value = jnp.ones(shape, dtype) if std is None else std * jax.random.normal(rngs.params(), shape, dtype)
    return nnx.Param(value, logical_axes=axes)


def _rms(x: jax.Array, scale: nnx.Param) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + EPS)
    return (y * scale[...].astype(jnp.float32)).astype(x.dtype)


class CausalConv(nnx.Module):
    """Token ids [B, T] → float32 logits [B, T, vocab]."""

    def __init__(self, c: Mapping[str, Any], *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        d, f, v, k = c["d_model"], c["d_ff"], c["vocab_size"], c["kernel"]
        self.kernel_size, self.compute_dtype = k, compute_dtype
        self.embed = _param(rngs, (v, d), param_dtype, ("vocab", "embed"), 0.02)
        self.conv = _param(rngs, (k, d), param_dtype, (None, "embed"), 1.0 / math.sqrt(k))
        self.conv_norm = _param(rngs, (d,), param_dtype, ("norm",), None)
        self.mlp_norm = _param(rngs, (d,), param_dtype, ("norm",), None)
        self.up = _param(rngs, (d, f), param_dtype, ("embed", "mlp"), 0.02)
        self.up_bias = nnx.Param(jnp.zeros((f,), param_dtype), logical_axes=("mlp",))
        self.down = _param(rngs, (f, d), param_dtype, ("mlp", "embed"), 0.02)
        self.down_bias = nnx.Param(jnp.zeros((d,), param_dtype), logical_axes=("embed",))
        self.final_norm = _param(rngs, (d,), param_dtype, ("norm",), None)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        cd, k = self.compute_dtype, self.kernel_size
        x = jnp.take(self.embed[...], inputs, axis=0).astype(cd)
        t = x.shape[1]
        h = _rms(x, self.conv_norm)
        padded = jnp.pad(h, ((0, 0), (k - 1, 0), (0, 0)))  # causal: position t sees t-k+1 … t
        w = self.conv[...].astype(cd)
        x = x + sum(w[j] * padded[:, k - 1 - j:k - 1 - j + t] for j in range(k))
        h = _rms(x, self.mlp_norm)
        h = jax.nn.gelu(h @ self.up[...].astype(cd) + self.up_bias[...].astype(cd), approximate=True)
        x = x + h @ self.down[...].astype(cd) + self.down_bias[...].astype(cd)
        h = _rms(x, self.final_norm)
        return jnp.matmul(h, self.embed[...].astype(cd).T, preferred_element_type=jnp.float32)


class CausalConvFamily(ModelFamily):
    """A convolutional language model: what a package outside capidsl registers and trains."""

    name = "causal_conv"

    def normalize(self, options):
        cfg = self.merge_options(options, DEFAULTS, REQUIRED)
        for key in ("vocab_size", "seq_len", "d_model", "kernel", "d_ff"):
            v = cfg[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ModelError(f"must be a positive integer, not {v!r}", subject=f"model.options.{key}")
        if cfg["d_ff"] is None:
            cfg["d_ff"] = 4 * cfg["d_model"]
        return cfg

    def build(self, cfg, *, rngs, param_dtype, compute_dtype, remat: str = "none"):
        if remat != "none":
            raise ModelError(f"remat {remat!r} is not supported", subject="training.remat", hint="use remat: none")
        return CausalConv(self.normalize(cfg), rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)

    def param_count(self, cfg) -> int:
        c = self.normalize(cfg)
        d, f = c["d_model"], c["d_ff"]
        return c["vocab_size"] * d + c["kernel"] * d + 3 * d + 2 * d * f + f + d

    def batch_shapes(self, cfg, batch_size: int):
        shape = (int(batch_size), int(cfg["seq_len"]))
        return {"inputs": (shape, "int32"), "targets": (shape, "int32"), "mask": (shape, "float32")}

    def num_layers(self, cfg) -> int:
        return 1

    def flops_per_token(self, cfg) -> float:
        """6 × the scalars every token multiplies by: the convolution, the MLP and the output head."""
        c = self.normalize(cfg)
        d = c["d_model"]
        return float(6 * (c["kernel"] * d + 2 * d * c["d_ff"] + d * c["vocab_size"]))

    def activation_bytes_per_layer(self, cfg, micro_batch: int, compute_bytes: int, remat: str) -> int:
        """Saved per token: embedding, two norm outputs, the convolution sum, MLP input/GELU in/out."""
        c = self.normalize(cfg)
        tokens = int(micro_batch) * c["seq_len"]
        return int(compute_bytes) * tokens * (4 * c["d_model"] + 2 * c["d_ff"])

    def predict(self, model, inputs):
        return model(inputs)

    def loss(self, model, batch, *, deterministic: bool, rngs=None):
        logits = model(batch["inputs"])
        mask = batch["mask"].astype(jnp.float32)
        real = mask > 0
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
        return (jnp.sum(jnp.where(real, nll * mask, 0.0)), jnp.sum(mask),
                {"correct_sum": jnp.sum(jnp.where(real, correct * mask, 0.0))})
