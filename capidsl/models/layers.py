"""The few building blocks the families share: Dense, Embed, Norm and functional dropout.

Each parameter is an `nnx.Param` stored in `param_dtype` with its logical axes as metadata;
each layer computes in `compute_dtype` (normalisation statistics in float32). They hold no RNG:
dropout takes an explicit key, so a model is nothing but parameters and a step stays a pure
function of (parameters, batch, key). Plain `jnp` operations only, so that ONNX export traces them.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from flax import nnx

INIT_STD = 0.02  # GPT-2's initialiser scale for weights and embeddings

# Where the rows of a [batch, ...] activation live while a step is traced: set by the executor
# from the plan's batch sharding (`rows_sharding`), read by `shard_rows`; None outside a step.
_ROWS: contextvars.ContextVar = contextvars.ContextVar("capidsl_rows_sharding", default=None)


@contextlib.contextmanager
def rows_sharding(sharding: jax.sharding.NamedSharding):
    """While tracing a step: a [batch, ...] activation's rows are split as `sharding` splits the batch."""
    token = _ROWS.set(sharding)
    try:
        yield
    finally:
        _ROWS.reset(token)


def shard_rows(x: jax.Array) -> jax.Array:
    """Pin `x`'s first dimension to the batch's mesh axes (every other dimension left to XLA).

    Needed after an embedding lookup: GSPMD gives a gather's output the table's sharding, so under
    FSDP (the table split over `fsdp` on its model dimension) every device would otherwise compute
    the whole global batch. A no-op outside a step (export, abstract tracing in the plan compiler).
    """
    sharding = _ROWS.get()
    if sharding is None:
        return x
    spec = jax.sharding.PartitionSpec(sharding.spec[0] if len(sharding.spec) else None, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(sharding.mesh, spec))


def param(rngs: nnx.Rngs, shape, dtype, axes, std: float | None) -> nnx.Param:
    """A parameter drawn from N(0, std²) (std None: ones), tagged with its logical axes."""
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0.0:
        value = jnp.zeros(shape, dtype)
    else:
        value = nnx.initializers.normal(std)(rngs.params(), shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


def gathered_rows_table(table: jax.Array) -> jax.Array:
    """A lookup table whole along its model dimension (FSDP gathers it for the lookup), its rows
    (the vocabulary) split however XLA has them, so that the gathered rows can take the batch's
    split without a detour through a replicated copy. A no-op outside a step."""
    sharding = _ROWS.get()
    if sharding is None:
        return table
    spec = jax.sharding.PartitionSpec(jax.sharding.PartitionSpec.UNCONSTRAINED, *([None] * (table.ndim - 1)))
    return jax.lax.with_sharding_constraint(table, jax.sharding.NamedSharding(sharding.mesh, spec))


class Dense(nnx.Module):
    """y = x @ kernel (+ bias); kernel [d_in, d_out] with logical axes `axes`, bias on the output axis.

    With `lora` = (rank, scale, dropout) it also holds a low-rank adapter (Hu et al. 2021):
    y += scale · dropout(x) @ lora_a @ lora_b, lora_a [d_in, rank] drawn as PEFT draws it
    (uniform ±1/sqrt(d_in)), lora_b [rank, d_out] zeros, so a new adapter leaves the model as it was."""

    def __init__(self, d_in: int, d_out: int, axes: tuple, *, bias: bool, rngs: nnx.Rngs,
                 param_dtype, compute_dtype, std: float = INIT_STD, lora: tuple[int, float, float] | None = None):
        self.kernel = param(rngs, (d_in, d_out), param_dtype, axes, std)
        self.bias = param(rngs, (d_out,), param_dtype, axes[-1:], 0.0) if bias else None
        self.compute_dtype = compute_dtype
        if lora is not None:
            rank, self.lora_scale, self.lora_dropout = lora
            self.lora_a = nnx.Param(lora_a_init(adapter_key(rngs), d_in, rank, param_dtype), logical_axes=(axes[0], None))
            self.lora_b = nnx.Param(jnp.zeros((rank, d_out), param_dtype), logical_axes=(None, axes[1]))
        else:
            self.lora_a = self.lora_b = None

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """`key`: the adapter's dropout key (None: no dropout)."""
        x = x.astype(self.compute_dtype)
        y = x @ self.kernel[...].astype(self.compute_dtype)
        if self.lora_a is not None:
            h = dropout(x, self.lora_dropout, key) @ self.lora_a[...].astype(self.compute_dtype)
            y = y + (h @ self.lora_b[...].astype(self.compute_dtype)) * jnp.asarray(self.lora_scale, self.compute_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.compute_dtype)
        return y


LORA_SALT = 0x10A  # separates the adapters' keys from the weights' own


def adapter_key(rngs: nnx.Rngs) -> jax.Array:
    """A key for this Dense's adapter that leaves the params stream where it was: the base weights
    draw exactly what a model without adapters draws (adapters added to a model change nothing)."""
    stream = rngs.params
    return jax.random.fold_in(jax.random.fold_in(stream.key[...], stream.count[...]), LORA_SALT)


def lora_a_init(key: jax.Array, d_in: int, rank: int, dtype) -> jax.Array:
    """An adapter's down-projection [d_in, rank]: uniform in ±1/sqrt(d_in), as PEFT's
    kaiming_uniform(a=sqrt(5)) draws it (the up-projection starts at zero)."""
    bound = 1.0 / d_in ** 0.5
    return jax.random.uniform(key, (d_in, rank), jnp.float32, -bound, bound).astype(dtype)


class Embed(nnx.Module):
    """A lookup table [num, dim]; `attend` uses it as the output projection (tied embeddings)."""

    def __init__(self, num: int, dim: int, axes: tuple, *, rngs: nnx.Rngs, param_dtype, compute_dtype):
        self.embedding = param(rngs, (num, dim), param_dtype, axes, INIT_STD)
        self.compute_dtype = compute_dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(gathered_rows_table(self.embedding[...]), ids, axis=0).astype(self.compute_dtype)

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
