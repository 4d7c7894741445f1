"""The Capibara module: a language model whose layers carry a recurrent state across segments.

Each layer is a pre-norm residual block of a gated linear recurrence followed by a GELU MLP:

    a_t = σ(x_t W_a + b_a)              per-channel decay in (0, 1)   (forget gate)
    s_t = a_t ⊙ s_{t−1} + (1 − a_t) ⊙ x_t W_u                         (the state, d_state wide)
    y_t = (s_t ⊙ silu(x_t W_g)) W_o

a diagonal recurrence in the family of HGRN (Qin et al. 2023) and Hawk's RG-LRU (De et al. 2024).
Being linear in s, it is an associative scan over (a, b) pairs, (a₁, b₁)∘(a₂, b₂) = (a₁a₂, a₂b₁ + b₂),
so a segment of T tokens is computed by `jax.lax.associative_scan` in O(log T) depth rather than
a T-step loop; the state entering the segment is folded into its first pair. The recurrence runs
in float32 whatever the compute dtype. The state of every layer at the end of the segment is
returned, so a caller can hand it to the next segment of the same stream (`hidden_state: carry`).

The state is laid out batch-first, [batch, n_layers, d_state]: the train step splits it into
micro-batches along with the batch rows. Layers are stacked and scanned as in the GPT module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from capidsl.models.layers import INIT_STD, Dense, Embed, Norm, dropout, matmul_f32
from capidsl.models.transformer import REMAT_POLICIES, stacked_blocks

FORGET_BIAS = 3.0  # σ(3) ≈ 0.95: a new state starts by remembering ~20 tokens back


@dataclass(frozen=True)
class CapibaraConfig:
    """The normalised options (see `capidsl.models.capibara.CapibaraFamily.normalize`)."""

    vocab_size: int
    seq_len: int
    d_model: int
    n_layers: int
    d_state: int
    d_ff: int
    hidden_state: str  # reset | carry
    tied_embeddings: bool
    dropout: float
    norm_eps: float


def linear_recurrence(a: jax.Array, b: jax.Array, s0: jax.Array, sequential: bool = False) -> jax.Array:
    """s_t = a_t ⊙ s_{t−1} + b_t over axis 1 of [B, T, S], from s0 [B, S]: every s_t.

    By associative scan (O(log T) depth, for training), or `sequential`ly with `lax.scan` over time:
    the same values, and a graph ONNX can express (its interleaving pads have no ONNX form)."""
    if sequential:
        def step(s, ab):
            s = ab[0] * s + ab[1]
            return s, s

        _, states = jax.lax.scan(step, s0, (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
        return jnp.swapaxes(states, 0, 1)
    b = b.at[:, 0].add(a[:, 0] * s0)

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


class RecurrentBlock(nnx.Module):
    """x + recurrence(norm(x)), then x + mlp(norm(x)); returns the block output and its final state."""

    def __init__(self, c: CapibaraConfig, *, rngs, param_dtype, compute_dtype):
        d, s, f = c.d_model, c.d_state, c.d_ff
        kw = dict(bias=False, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        out_std = INIT_STD / math.sqrt(2 * c.n_layers)
        self.rec_norm = Norm(d, "rmsnorm", bias=False, eps=c.norm_eps, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.forget = Dense(d, s, ("embed", "state"), **kw)
        self.forget_bias = nnx.Param(jnp.full((s,), FORGET_BIAS, param_dtype), logical_axes=("state",))
        self.value = Dense(d, s, ("embed", "state"), **kw)
        self.gate = Dense(d, s, ("embed", "state"), **kw)
        self.out = Dense(s, d, ("state", "embed"), std=out_std, **kw)
        self.mlp_norm = Norm(d, "rmsnorm", bias=False, eps=c.norm_eps, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.up = Dense(d, f, ("embed", "mlp"), **kw)
        self.down = Dense(f, d, ("mlp", "embed"), std=out_std, **kw)
        self.rate, self.compute_dtype = c.dropout, compute_dtype

    def __call__(self, x: jax.Array, s0: jax.Array, key, sequential: bool = False) -> tuple[jax.Array, jax.Array]:
        k1, k2 = jax.random.split(key) if key is not None else (None, None)
        h = self.rec_norm(x)
        a = jax.nn.sigmoid((self.forget(h) + self.forget_bias[...].astype(self.compute_dtype)).astype(jnp.float32))
        b = (1.0 - a) * self.value(h).astype(jnp.float32)
        s = linear_recurrence(a, b, s0.astype(jnp.float32), sequential)
        y = self.out((s * jax.nn.silu(self.gate(h).astype(jnp.float32))).astype(self.compute_dtype))
        x = x + dropout(y, self.rate, k1)
        x = x + dropout(self.down(jax.nn.gelu(self.up(self.mlp_norm(x)), approximate=True)), self.rate, k2)
        return x, s[:, -1]


class Capibara(nnx.Module):
    """Token ids [B, T] and a state [B, n_layers, d_state] → float32 logits [B, T, vocab] and the new state."""

    def __init__(self, c: CapibaraConfig, *, rngs: nnx.Rngs, param_dtype, compute_dtype, remat: str = "none"):
        kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.config, self.remat, self.compute_dtype = c, remat, compute_dtype
        self.wte = Embed(c.vocab_size, c.d_model, ("vocab", "embed"), rngs=rngs, **kw)
        self.blocks = stacked_blocks(c, rngs=rngs, block=RecurrentBlock, **kw)
        self.final_norm = Norm(c.d_model, "rmsnorm", bias=False, eps=c.norm_eps, **kw)
        self.lm_head = None if c.tied_embeddings else Dense(c.d_model, c.vocab_size, ("embed", "vocab"), bias=False,
                                                            rngs=rngs, **kw)

    def init_hidden_state(self, batch_size: int) -> jax.Array:
        """The state a stream starts from: zeros [batch_size, n_layers, d_state], float32."""
        c = self.config
        return jnp.zeros((batch_size, c.n_layers, c.d_state), jnp.float32)

    def __call__(self, inputs: jax.Array, state: jax.Array | None = None, *, reset: jax.Array | None = None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None,
                 unroll: bool = False) -> tuple[jax.Array, jax.Array]:
        """(logits, state at the end of the segment). `reset` [B] (1 = the row starts a new stream)
        zeroes those rows' incoming state; `unroll` runs the layers as a Python loop and the recurrence
        step by step (the same values; the graph ONNX export needs)."""
        c = self.config
        if inputs.shape[-1] > c.seq_len:
            raise ValueError(f"a segment of {inputs.shape[-1]} tokens is longer than seq_len {c.seq_len}")
        if state is None:
            state = self.init_hidden_state(inputs.shape[0])
        if reset is not None:
            state = state * (1.0 - reset.astype(state.dtype))[:, None, None]
        use_dropout = not deterministic and c.dropout > 0.0
        if use_dropout and rngs is None:
            raise ValueError("dropout > 0 and deterministic=False need rngs with a 'dropout' stream")
        keys = jax.random.split(rngs.dropout(), c.n_layers) if use_dropout else None
        x = self.wte(inputs)
        x, new_state = self._run_blocks(x, jnp.swapaxes(state, 0, 1), keys, unroll)
        h = self.final_norm(x)
        logits = self.wte.attend(h) if self.lm_head is None else matmul_f32(h, self.lm_head.kernel[...].astype(self.compute_dtype))
        return logits, jnp.swapaxes(new_state, 0, 1)

    def _run_blocks(self, x, states, keys, unroll: bool):
        graphdef, params = nnx.split(self.blocks)

        def body(x, layer):
            layer_params, s0, key = layer
            return nnx.merge(graphdef, layer_params)(x, s0, key, sequential=unroll)

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        if unroll:
            finals = []
            for i in range(self.config.n_layers):
                x, s = body(x, jax.tree_util.tree_map(lambda a: a[i], (params, states, keys)))
                finals.append(s)
            return x, jnp.stack(finals)
        return jax.lax.scan(body, x, (params, states, keys))
