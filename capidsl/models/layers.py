"""The few building blocks the families share: Dense, Embed, Norm and functional dropout.

Each parameter is an `nnx.Param` stored in `param_dtype` with its logical axes as metadata;
each layer computes in `compute_dtype` (normalisation statistics in float32). They hold no RNG:
dropout takes an explicit key, so a model is nothing but parameters and a step stays a pure
function of (parameters, batch, key). Plain `jnp` operations only, so that ONNX export traces them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # GPT-2's initialiser scale for weights and embeddings


def param(rngs: nnx.Rngs, shape, dtype, axes, std: float | None) -> nnx.Param:
    """A parameter drawn from N(0, std²) (std None: ones), tagged with its logical axes."""
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0.0:
        value = jnp.zeros(shape, dtype)
    else:
        value = nnx.initializers.normal(std)(rngs.params(), shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel [d_in, d_out] with logical axes `axes`, bias on the output axis."""

    def __init__(self, d_in: int, d_out: int, axes: tuple, *, bias: bool, rngs: nnx.Rngs,
                 param_dtype, compute_dtype, std: float = INIT_STD):
        self.kernel = param(rngs, (d_in, d_out), param_dtype, axes, std)
        self.bias = param(rngs, (d_out,), param_dtype, axes[-1:], 0.0) if bias else None
        self.compute_dtype = compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x.astype(self.compute_dtype) @ self.kernel[...].astype(self.compute_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.compute_dtype)
        return y


class Embed(nnx.Module):
    """A lookup table [num, dim]; `attend` uses it as the output projection (tied embeddings)."""

    def __init__(self, num: int, dim: int, axes: tuple, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        self.embedding = param(rngs, (num, dim), param_dtype, axes, INIT_STD)
        self.compute_dtype = compute_dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.compute_dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x @ embeddingᵀ, accumulated and returned in float32 (logits)."""
        return matmul_f32(x.astype(self.compute_dtype), self.embedding[...].astype(self.compute_dtype).T)


def matmul_f32(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b with a float32 result; in float32 a plain matmul (what ONNX export sees)."""
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return a @ b
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


class Norm(nnx.Module):
    """LayerNorm (scale, optional bias) or RMSNorm (scale only), statistics in float32."""

    def __init__(self, dim: int, kind: str, *, bias: bool, eps: float, param_dtype, compute_dtype):
        self.kind, self.eps, self.compute_dtype = kind, eps, compute_dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        has_bias = bias and kind == "layernorm"
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("norm",)) if has_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.compute_dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (deterministic) or `rate` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)
