"""The GPT module: a decoder-only transformer covering GPT-2 and Llama-style configurations.

Learned or rotary positions, LayerNorm or RMSNorm, GELU MLP or SwiGLU, multi-head or grouped-query
attention (k/v heads repeated to the query heads), tied or untied output embeddings, optional
biases, dropout, low-rank adapters on chosen projections (`LoRAConfig`). Pre-norm residual blocks,
causal attention with a `jnp.tril` mask, or, where the plan chose it (capidsl/plan/kernels.py), cuDNN's
fused attention (`GPTConfig.attention`; see `fused_attention`).

The `n_layers` blocks are one stacked module: built once under `nnx.vmap` (every parameter gains
a leading "layers" axis) and run with `jax.lax.scan` over the split state, so tracing and `eval_shape`
do not grow with depth (MaxText's `scan_layers`); where the plan chose it (`unroll_layers`, see
capidsl/plan/kernels.py `choose_layer_loop`) the scan is unrolled, which XLA runs faster and compiles
more slowly. Rematerialisation wraps the scanned block in `jax.checkpoint`: "full" saves only each
block's input, "dots" also saves the outputs of matmuls without batch dimensions
(`dots_with_no_batch_dims_saveable`: the projections, not the attention scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from capidsl.models.errors import ModelError
from capidsl.models.family import LOGICAL_AXES_KEY
from capidsl.models.layers import INIT_STD, Dense, Embed, Norm, dropout, matmul_f32, shard_rows

REMAT_POLICIES = {
    "full": None,  # jax.checkpoint's default: save nothing but the block's inputs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# xla: the einsum formulation below (saves the T×T probabilities); cudnn: jax.nn.dot_product_attention's
# fused kernel (GPU only); recompute: XLA keeping only what cudnn keeps (the plan traces it for cudnn).
ATTENTION = ("xla", "cudnn", "recompute")

LORA_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters: on which projections (names in LORA_TARGETS), of what rank, scaled by alpha / rank."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float

    def on(self, name: str) -> tuple[int, float, float] | None:
        """The Dense's `lora` argument for projection `name` ("attn.q"), or None when it has no adapter."""
        return (self.rank, self.alpha / self.rank, self.dropout) if name in self.targets else None


@dataclass(frozen=True)
class GPTConfig:
    """The normalised options (see `capidsl.models.gpt.GPTFamily.normalize`), hashable for the graphdef."""

    vocab_size: int
    seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    position: str  # learned | rope
    norm: str  # layernorm | rmsnorm
    mlp: str  # gelu | swiglu
    tied_embeddings: bool
    bias: bool
    dropout: float
    rope_theta: float
    norm_eps: float
    max_positions: int
    rope_scaling: str  # none | llama3
    rope_scaling_factor: float
    rope_low_freq_factor: float
    rope_high_freq_factor: float
    rope_original_max_len: int
    lora: LoRAConfig | None = None
    attention: str = "xla"  # the kernel (ATTENTION): a build argument from the plan, not a recipe option
    unroll_layers: bool = False  # the layer scan unrolled: a build argument from the plan (`layer_loop`)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def adapter(self, name: str) -> tuple[int, float, float] | None:
        return None if self.lora is None else self.lora.on(name)

    @property
    def adapter_dropout(self) -> bool:
        """Whether the adapters take dropout keys (only then are more keys split off: a model
        without it draws exactly the keys it always drew)."""
        return self.lora is not None and self.lora.dropout > 0.0


def rope_frequencies(c: GPTConfig) -> jax.Array:
    """The rotary frequencies [head_dim / 2]: θ^(-2i/d), with Llama 3.1's scaling when asked (the
    frequencies whose wavelength exceeds original_max_len / low_freq_factor divided by the factor,
    those below original_max_len / high_freq_factor kept, a smooth blend in between)."""
    hd = c.head_dim
    inv_freq = 1.0 / (c.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    if c.rope_scaling == "none":
        return inv_freq
    factor, low, high, old = (c.rope_scaling_factor, c.rope_low_freq_factor, c.rope_high_freq_factor,
                              c.rope_original_max_len)
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return jnp.where(medium, blended, scaled)


def rope_tables(seq: int, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [seq, 1, head_dim] for rotary embeddings (Su et al. 2021), "rotate half" layout."""
    freqs = jnp.arange(seq, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, heads, head_dim] rotated pairwise by position (as GPT-NeoX and Llama in HF)."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def _causal_probs(scores: jax.Array) -> jax.Array:
    t_q, t_k = scores.shape[-2:]
    masked = jnp.where(jnp.tril(jnp.ones((t_q, t_k), dtype=bool)), scores, jnp.finfo(scores.dtype).min)
    e = jnp.exp(masked - jnp.max(masked, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@jax.custom_jvp
def causal_softmax(scores: jax.Array) -> jax.Array:
    """Softmax over the keys (last axis) with each query's future keys masked out, for scores [..., T, T].

    Its derivative is written from the output alone, y·(ẋ − Σ y·ẋ), so the backward pass keeps one
    T×T tensor per layer: differentiated as written (`jax.nn.softmax` with jax's default
    `jax_softmax_custom_jvp=False`), autodiff keeps both exp(x − max) and the quotient, plus the causal
    mask and a zero fill broadcast to [rows, heads, T, T] — twice the memory, and what XLA can fuse
    away in an unrolled program but a looping scan must store."""
    return _causal_probs(scores)


@causal_softmax.defjvp
def _causal_softmax_jvp(primals, tangents):
    (scores,), (dot,) = primals, tangents
    y = _causal_probs(scores)
    return y, y * (dot - jnp.sum(y * dot, axis=-1, keepdims=True))


def _xla_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


@jax.custom_vjp
def recomputed_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Causal attention by XLA that keeps for the backward only what cuDNN's fused kernel keeps: q, k, v
    and the float32 logsumexp per row and head (the output, which cuDNN also keeps, is the o projection's
    input already); the backward recomputes the probabilities. Runs anywhere; the plan traces it in
    place of "cudnn" (which cannot be traced without a GPU) to count the fused kernel's residuals."""
    return _xla_attention(q, k, v)


def _recomputed_fwd(q, k, v):
    out, lse = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla", return_residual=True)
    return out, (q, k, v, lse.astype(jnp.float32))


def _recomputed_bwd(res, g):
    q, k, v, _ = res  # the logsumexp is held as cuDNN holds it; XLA's backward recomputes it
    return jax.vjp(_xla_attention, q, k, v)[1](g)


recomputed_attention.defvjp(_recomputed_fwd, _recomputed_bwd)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
    """Causal attention [B, T, heads, head_dim] with k, v [B, T, kv_heads, head_dim] (kv_heads dividing
    heads), scaled by 1/sqrt(head_dim): cuDNN's fused kernel ("cudnn", NVIDIA GPUs only: bfloat16 or
    float16, head_dim a multiple of 8 up to 128, 256 on Hopper) or its memory stand-in ("recompute").
    "cudnn" on another backend is a ModelError (jax itself would say only "cuDNN is not detected")."""
    if implementation == "cudnn":
        if jax.default_backend() != "gpu":
            raise ModelError(f"the plan's attention kernel is cudnn, which runs only on an NVIDIA GPU, and JAX here "
                             f"runs on {jax.default_backend()}", subject="model gpt",
                             hint="plan for the devices that run it (a GPU plan's estimate already counts the fused kernel)")
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    return recomputed_attention(q, k, v)


class Attention(nnx.Module):
    """Causal self-attention; q/o over "heads" (n_heads·head_dim), k/v over "kv_heads"."""

    def __init__(self, c: GPTConfig, *, rngs, param_dtype, compute_dtype):
        d, hd = c.d_model, c.head_dim
        kw = dict(bias=c.bias, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.q = Dense(d, c.n_heads * hd, ("embed", "heads"), lora=c.adapter("attn.q"), **kw)
        self.k = Dense(d, c.n_kv_heads * hd, ("embed", "kv_heads"), lora=c.adapter("attn.k"), **kw)
        self.v = Dense(d, c.n_kv_heads * hd, ("embed", "kv_heads"), lora=c.adapter("attn.v"), **kw)
        # GPT-2 scales the residual projections' init by 1/sqrt(2·n_layers).
        self.o = Dense(c.n_heads * hd, d, ("heads", "embed"), std=INIT_STD / math.sqrt(2 * c.n_layers),
                       lora=c.adapter("attn.o"), **kw)
        self.config, self.compute_dtype = c, compute_dtype

    def __call__(self, x: jax.Array, rope, key) -> jax.Array:
        c = self.config
        b, t, _ = x.shape
        hd = c.head_dim
        kq = kk = kv = ko = None
        if c.adapter_dropout and key is not None:
            key, kq, kk, kv, ko = jax.random.split(key, 5)
        q = self.q(x, kq).reshape(b, t, c.n_heads, hd)
        k = self.k(x, kk).reshape(b, t, c.n_kv_heads, hd)
        v = self.v(x, kv).reshape(b, t, c.n_kv_heads, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if c.attention != "xla":  # fused: k/v keep their n_kv_heads (grouped-query attention is native)
            return self.o(fused_attention(q, k, v, c.attention).reshape(b, t, c.n_heads * hd), ko)
        if c.n_kv_heads != c.n_heads:  # grouped-query attention: each k/v head serves a group of q heads
            k = jnp.repeat(k, c.n_heads // c.n_kv_heads, axis=2)
            v = jnp.repeat(v, c.n_heads // c.n_kv_heads, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd)
        probs = causal_softmax(scores).astype(self.compute_dtype)
        probs = dropout(probs, c.dropout, key)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c.n_heads * hd)
        return self.o(y, ko)


class FeedForward(nnx.Module):
    """GELU MLP (up, down) or SwiGLU (gate, up, down: down(silu(gate x) · up x), Shazeer 2020)."""

    def __init__(self, c: GPTConfig, *, rngs, param_dtype, compute_dtype):
        kw = dict(bias=c.bias, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.kind = c.mlp
        self.gate = Dense(c.d_model, c.d_ff, ("embed", "mlp"), lora=c.adapter("mlp.gate"), **kw) if c.mlp == "swiglu" else None
        self.up = Dense(c.d_model, c.d_ff, ("embed", "mlp"), lora=c.adapter("mlp.up"), **kw)
        self.down = Dense(c.d_ff, c.d_model, ("mlp", "embed"), std=INIT_STD / math.sqrt(2 * c.n_layers),
                          lora=c.adapter("mlp.down"), **kw)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """`key`: the adapters' dropout key (None: none)."""
        kg, ku, kd = jax.random.split(key, 3) if key is not None else (None, None, None)
        if self.kind == "swiglu":
            return self.down(jax.nn.silu(self.gate(x, kg)) * self.up(x, ku), kd)
        return self.down(jax.nn.gelu(self.up(x, ku), approximate=True), kd)


class Block(nnx.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); residual dropout on each branch."""

    def __init__(self, c: GPTConfig, *, rngs, param_dtype, compute_dtype):
        kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.attn_norm = Norm(c.d_model, c.norm, bias=c.bias, eps=c.norm_eps, **kw)
        self.attn = Attention(c, rngs=rngs, **kw)
        self.mlp_norm = Norm(c.d_model, c.norm, bias=c.bias, eps=c.norm_eps, **kw)
        self.mlp = FeedForward(c, rngs=rngs, **kw)
        self.rate, self.adapter_dropout = c.dropout, c.adapter_dropout

    def __call__(self, x: jax.Array, rope, key) -> jax.Array:
        k_attn, k_res1, k_res2, k_mlp = (None,) * 4
        if key is not None and self.adapter_dropout:
            k_attn, k_res1, k_res2, k_mlp = jax.random.split(key, 4)
        elif key is not None:
            k_attn, k_res1, k_res2 = jax.random.split(key, 3)
        x = x + dropout(self.attn(self.attn_norm(x), rope, k_attn), self.rate, k_res1)
        return x + dropout(self.mlp(self.mlp_norm(x), k_mlp), self.rate, k_res2)


def stacked_blocks(c, *, rngs, param_dtype, compute_dtype, block=None) -> nnx.Module:
    """`c.n_layers` blocks (`block`, default the transformer Block) as one module whose parameters
    have a leading "layers" axis."""
    block = block or Block

    @nnx.split_rngs(splits=c.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=c.n_layers)
    def create(r):
        return block(c, rngs=r, param_dtype=param_dtype, compute_dtype=compute_dtype)

    blocks = create(rngs)
    for _, node in nnx.iter_graph(blocks):
        if isinstance(node, nnx.Param):
            node.set_metadata(**{LOGICAL_AXES_KEY: ("layers",) + tuple(node.get_metadata()[LOGICAL_AXES_KEY])})
    return blocks


class GPT(nnx.Module):
    """Token ids [B, T] → float32 logits [B, T, vocab]."""

    def __init__(self, c: GPTConfig, *, rngs: nnx.Rngs, param_dtype, compute_dtype, remat: str = "none"):
        kw = dict(param_dtype=param_dtype, compute_dtype=compute_dtype)
        self.config, self.remat, self.compute_dtype = c, remat, compute_dtype
        self.wte = Embed(c.vocab_size, c.d_model, ("vocab", "embed"), rngs=rngs, **kw)
        self.wpe = Embed(c.max_positions, c.d_model, (None, "embed"), rngs=rngs, **kw) if c.position == "learned" else None
        self.blocks = stacked_blocks(c, rngs=rngs, **kw)
        self.final_norm = Norm(c.d_model, c.norm, bias=c.bias, eps=c.norm_eps, **kw)
        self.lm_head = None if c.tied_embeddings else Dense(c.d_model, c.vocab_size, ("embed", "vocab"), bias=False, rngs=rngs, **kw)

    def __call__(self, inputs: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None,
                 unroll: bool = False) -> jax.Array:
        """Logits. Dropout needs `rngs` (a "dropout" stream) unless `deterministic`; `unroll` runs
        the layers as a Python loop instead of a scan (same result; a plain graph for export)."""
        c = self.config
        t = inputs.shape[-1]
        if t > c.max_positions:
            raise ValueError(f"sequence of {t} tokens is longer than max_positions {c.max_positions}")
        use_dropout = not deterministic and (c.dropout > 0.0 or c.adapter_dropout)
        if use_dropout and rngs is None:
            raise ValueError("dropout > 0 and deterministic=False need rngs with a 'dropout' stream")
        keys = jax.random.split(rngs.dropout(), c.n_layers + 1) if use_dropout else None

        x = shard_rows(self.wte(inputs))  # the batch's rows stay split over data × fsdp (see shard_rows)
        if self.wpe is not None:
            x = x + self.wpe.embedding[:t].astype(self.compute_dtype)
        x = dropout(x, c.dropout, keys[0] if use_dropout else None)
        rope = rope_tables(t, rope_frequencies(c)) if c.position == "rope" else None
        x = self._run_blocks(x, rope, keys[1:] if use_dropout else None, unroll)
        h = self.final_norm(x)
        if self.lm_head is None:
            return self.wte.attend(h)
        return matmul_f32(h, self.lm_head.kernel[...].astype(self.compute_dtype))

    def _run_blocks(self, x, rope, keys, unroll: bool):
        graphdef, state = nnx.split(self.blocks)

        def body(x, layer):
            layer_state, key = layer
            return nnx.merge(graphdef, layer_state)(x, rope, key), None

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        if unroll:
            for i in range(self.config.n_layers):
                layer = jax.tree_util.tree_map(lambda a: a[i], (state, keys))
                x, _ = body(x, layer)
            return x
        x, _ = jax.lax.scan(body, x, (state, keys), unroll=self.config.unroll_layers)
        return x
