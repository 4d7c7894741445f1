"""The "gpt" family: options, exact parameter count, cost model, loss and prediction for `GPT`.

Options (recipe `model:` keys) and their defaults:
    vocab_size, seq_len, d_model, n_layers, n_heads   required
    n_kv_heads       n_heads (multi-head); fewer (dividing n_heads) = grouped-query attention
    d_ff             gelu: 4·d_model; swiglu: the Llama rule, 256·ceil(int(2·4·d_model/3) / 256)
    position         learned | rope                       (default learned)
    norm             layernorm | rmsnorm                  (default layernorm)
    mlp              gelu | swiglu                        (default gelu)
    tied_embeddings  true                                 (the output projection is wteᵀ)
    bias             true: biases in every Dense and in LayerNorm (never in RMSNorm or the output head)
    dropout          0.0: embedding, attention-probability and residual dropout
    rope_theta       10000.0                              (rope only)
    rope_scaling     none | llama3: Llama 3.1's frequency scaling, with rope_scaling_factor (8),
                     rope_low_freq_factor (1), rope_high_freq_factor (4), rope_original_max_len (8192)
    max_positions    seq_len: the longest sequence the model takes (rows of the learned position
                     table); a pretrained model's context, which training may use less of
    norm_eps         1e-5
    lora             none, or {rank, alpha (= rank), targets (default [attn.q, attn.v]), dropout (0)}:
                     low-rank adapters on the named projections (attn.q/k/v/o, mlp.gate/up/down);
                     normalised into lora_rank, lora_alpha, lora_targets, lora_dropout, present
                     only when adapters are, so a model without them keeps its options unchanged
GPT-2 small = {vocab_size: 50257, seq_len: 1024, d_model: 768, n_layers: 12, n_heads: 12} (124,439,808
parameters); Llama-2-7B = {vocab_size: 32000, seq_len: 4096, d_model: 4096, n_layers: 32, n_heads: 32,
position: rope, norm: rmsnorm, mlp: swiglu, tied_embeddings: false, bias: false} (6,738,415,616).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax

from capidsl.models.errors import ModelError
from capidsl.models.family import ModelFamily
from capidsl.models.transformer import ATTENTION, GPT, LORA_TARGETS, REMAT_POLICIES, GPTConfig, LoRAConfig

DEFAULTS: dict[str, Any] = {
    "vocab_size": None,
    "seq_len": None,
    "d_model": None,
    "n_layers": None,
    "n_heads": None,
    "n_kv_heads": None,
    "d_ff": None,
    "position": "learned",
    "norm": "layernorm",
    "mlp": "gelu",
    "tied_embeddings": True,
    "bias": True,
    "dropout": 0.0,
    "rope_theta": 10000.0,
    "norm_eps": 1e-5,
    "max_positions": None,
    "rope_scaling": "none",
    "rope_scaling_factor": 8.0,
    "rope_low_freq_factor": 1.0,
    "rope_high_freq_factor": 4.0,
    "rope_original_max_len": 8192,
}
ROPE_SCALING_KEYS = ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len")
REQUIRED = ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads")
CHOICES = {"position": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"),
           "rope_scaling": ("none", "llama3")}
INTS = ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_positions",
        "rope_original_max_len")
FLOATS = ("dropout", "rope_theta", "norm_eps", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor")
BOOLS = ("tied_embeddings", "bias")
SWIGLU_MULTIPLE_OF = 256  # Llama's `multiple_of`
LORA_KEYS = ("rank", "alpha", "targets", "dropout")
LORA_DEFAULT_TARGETS = ("attn.q", "attn.v")  # the LoRA paper's choice (Hu et al. 2021, section 7.1)


def llama_d_ff(d_model: int, multiple_of: int = SWIGLU_MULTIPLE_OF) -> int:
    """Llama's SwiGLU hidden size: 2/3 of 4·d (same parameters as a 4·d GELU MLP), rounded up."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _fail(message: str, key: str, hint: str | None = None):
    raise ModelError(message, subject=f"model.{key}", hint=hint)


def _lora(options: dict[str, Any]) -> dict[str, Any] | None:
    """Take the adapters out of `options`: the recipe's `lora` mapping or a normalised config's
    lora_* keys, checked and with defaults filled in; None when the model has none."""
    flat = {k: options.pop(f"lora_{k}") for k in LORA_KEYS if f"lora_{k}" in options}
    given = options.pop("lora", None)
    if given is None and not flat:
        return None
    if given is not None and flat:
        _fail("is given twice: as model.lora and as lora_* options", "lora")
    given = dict(given) if given is not None else flat
    unknown = sorted(set(given) - set(LORA_KEYS))
    if unknown:
        _fail(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}", "lora",
              hint=f"model.lora takes: {', '.join(LORA_KEYS)}")
    rank = given.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        _fail(f"must be a positive integer, not {rank!r}", "lora.rank")
    alpha = given.get("alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        _fail(f"must be a positive number, not {alpha!r}", "lora.alpha")
    rate = given.get("dropout", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        _fail(f"must be a number in [0, 1), not {rate!r}", "lora.dropout")
    targets = given.get("targets", LORA_DEFAULT_TARGETS)
    if isinstance(targets, str) or not targets:
        _fail(f"must be a non-empty list of projections, not {targets!r}", "lora.targets",
              hint=f"choose from {', '.join(LORA_TARGETS)}")
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad:
        _fail(f"{', '.join(map(repr, bad))} {'is not a projection' if len(bad) == 1 else 'are not projections'}",
              "lora.targets", hint=f"choose from {', '.join(LORA_TARGETS)}")
    ordered = [t for t in LORA_TARGETS if t in targets]  # one order, whatever the recipe's: one plan
    return {"rank": rank, "alpha": float(alpha), "targets": ordered, "dropout": float(rate)}


class GPTFamily(ModelFamily):
    """Decoder-only transformer language models (GPT-2 and Llama shapes)."""

    name = "gpt"

    # -- configuration -------------------------------------------------------------------------

    def normalize(self, options: Mapping[str, Any]) -> dict[str, Any]:
        options = dict(options)
        lora = _lora(options)
        cfg = self.merge_options(options, DEFAULTS, REQUIRED)
        for k in INTS:
            if cfg[k] is not None and (isinstance(cfg[k], bool) or not isinstance(cfg[k], int) or cfg[k] < 1):
                _fail(f"must be a positive integer, not {cfg[k]!r}", k)
        for k in FLOATS:
            if isinstance(cfg[k], bool) or not isinstance(cfg[k], (int, float)):
                _fail(f"must be a number, not {cfg[k]!r}", k)
            cfg[k] = float(cfg[k])
        for k in BOOLS:
            if not isinstance(cfg[k], bool):
                _fail(f"must be true or false, not {cfg[k]!r}", k)
        for k, allowed in CHOICES.items():
            if cfg[k] not in allowed:
                _fail(f"must be one of {', '.join(allowed)}, not {cfg[k]!r}", k)
        if not 0.0 <= cfg["dropout"] < 1.0:
            _fail(f"must be in [0, 1), not {cfg['dropout']}", "dropout")
        if cfg["d_model"] % cfg["n_heads"]:
            _fail(f"d_model {cfg['d_model']} is not a multiple of n_heads {cfg['n_heads']}", "n_heads")
        if cfg["n_kv_heads"] is None:
            cfg["n_kv_heads"] = cfg["n_heads"]
        if cfg["n_heads"] % cfg["n_kv_heads"]:
            _fail(f"n_heads {cfg['n_heads']} is not a multiple of n_kv_heads {cfg['n_kv_heads']}", "n_kv_heads")
        if cfg["position"] == "rope" and (cfg["d_model"] // cfg["n_heads"]) % 2:
            _fail(f"rotary positions need an even head dimension, not {cfg['d_model'] // cfg['n_heads']}", "position")
        if cfg["max_positions"] is None:
            cfg["max_positions"] = cfg["seq_len"]
        if cfg["seq_len"] > cfg["max_positions"]:
            _fail(f"seq_len {cfg['seq_len']} is longer than the model's max_positions {cfg['max_positions']}", "seq_len")
        if cfg["rope_scaling"] != "none" and cfg["position"] != "rope":
            _fail(f"rope_scaling {cfg['rope_scaling']} needs position: rope", "rope_scaling")
        if cfg["rope_scaling"] != "none" and cfg["rope_high_freq_factor"] <= cfg["rope_low_freq_factor"]:
            _fail("rope_high_freq_factor must be larger than rope_low_freq_factor", "rope_high_freq_factor")
        if cfg["d_ff"] is None:
            cfg["d_ff"] = 4 * cfg["d_model"] if cfg["mlp"] == "gelu" else llama_d_ff(cfg["d_model"])
        if lora is not None:
            if "mlp.gate" in lora["targets"] and cfg["mlp"] != "swiglu":
                _fail("targets mlp.gate, which only a swiglu MLP has", "lora.targets")
            cfg.update({f"lora_{k}": v for k, v in lora.items()})
        return cfg

    def config(self, cfg: Mapping[str, Any]) -> GPTConfig:
        cfg = self.normalize(cfg)
        lora = None
        if "lora_rank" in cfg:
            rank, alpha, targets, rate = (cfg.pop(f"lora_{k}") for k in LORA_KEYS)
            lora = LoRAConfig(rank=rank, alpha=alpha, targets=tuple(targets), dropout=rate)
        return GPTConfig(**cfg, lora=lora)

    def build(self, cfg, *, rngs, param_dtype, compute_dtype, remat: str = "none", attention: str = "xla",
              layer_loop: str = "scanned"):
        """`attention`: the kernel the plan chose (capidsl/plan/kernels.py; ATTENTION), passed only when not "xla";
        `layer_loop`: "scanned" or "unrolled" (kernels.choose_layer_loop), passed only when unrolled."""
        if remat != "none" and remat not in REMAT_POLICIES:
            _fail(f"remat must be none, full or dots, not {remat!r}", "remat")
        if attention not in ATTENTION:
            raise ModelError(f"unknown attention kernel {attention!r}", subject="model gpt",
                             hint=f"one of {', '.join(ATTENTION)}")
        c = self.config(cfg)
        if attention != "xla" and c.dropout > 0.0:
            _fail(f"attention probability dropout needs the xla attention, not {attention}", "dropout")
        if layer_loop not in ("scanned", "unrolled"):
            raise ModelError(f"unknown layer loop {layer_loop!r}", subject="model gpt", hint="scanned or unrolled")
        c = dataclasses.replace(c, attention=attention, unroll_layers=layer_loop == "unrolled")
        return GPT(c, rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)

    def num_layers(self, cfg) -> int:
        return int(cfg["n_layers"])

    def batch_shapes(self, cfg, batch_size: int):
        shape = (int(batch_size), int(cfg["seq_len"]))
        return {"inputs": (shape, "int32"), "targets": (shape, "int32"), "mask": (shape, "float32")}

    # -- counting ------------------------------------------------------------------------------

    @staticmethod
    def _layer_matmul_params(c: Mapping[str, Any]) -> int:
        """Kernel scalars of one block: q, k, v, o and the MLP's two or three matrices."""
        d, hd = c["d_model"], c["d_model"] // c["n_heads"]
        attn = d * c["n_heads"] * hd * 2 + d * c["n_kv_heads"] * hd * 2
        mlp = (3 if c["mlp"] == "swiglu" else 2) * d * c["d_ff"]
        return attn + mlp

    @staticmethod
    def adapter_params(c: Mapping[str, Any]) -> int:
        """Adapter scalars of the whole model: rank·(d_in + d_out) per targeted projection per layer."""
        if "lora_rank" not in c:
            return 0
        d, hd, f = c["d_model"], c["d_model"] // c["n_heads"], c["d_ff"]
        sides = {"attn.q": d + c["n_heads"] * hd, "attn.k": d + c["n_kv_heads"] * hd, "attn.v": d + c["n_kv_heads"] * hd,
                 "attn.o": c["n_heads"] * hd + d, "mlp.gate": d + f, "mlp.up": d + f, "mlp.down": f + d}
        return c["n_layers"] * c["lora_rank"] * sum(sides[t] for t in c["lora_targets"])

    def param_count(self, cfg) -> int:
        c = self.normalize(cfg)
        d, hd, v = c["d_model"], c["d_model"] // c["n_heads"], c["vocab_size"]
        norm = d * (2 if c["norm"] == "layernorm" and c["bias"] else 1)
        per_layer = self._layer_matmul_params(c) + 2 * norm
        if c["bias"]:
            per_layer += c["n_heads"] * hd + 2 * c["n_kv_heads"] * hd + d  # q, k, v, o
            per_layer += c["d_ff"] * (2 if c["mlp"] == "swiglu" else 1) + d  # gate/up, down
        total = v * d + c["n_layers"] * per_layer + norm
        if c["position"] == "learned":
            total += c["max_positions"] * d
        if not c["tied_embeddings"]:
            total += d * v
        return total + self.adapter_params(c)

    def flops_per_token(self, cfg) -> float:
        """6·N + 12·L·T·d_attn: the PaLM convention (Chowdhery et al. 2022, appendix B).

        N counts the parameters that take part in a matmul for every token: the blocks' kernels
        and the output projection d·vocab (tied or not; as nanoGPT's and MaxText's MFU do). It
        leaves out the input embedding and position tables (lookups), biases and norm scales.
        Adapters count as the matmuls they are (x·A, then ·B); a frozen base weight is still
        counted at 6 FLOPs per use, as peers count LoRA runs (its input gradient is computed,
        its weight gradient is not: the true figure is nearer 4·N_frozen).
        The attention term counts QKᵀ and AV over the full T×T square (no causal halving), with
        d_attn = n_heads·head_dim and T = seq_len; forward + backward = 3 × forward.
        """
        c = self.normalize(cfg)
        n = c["n_layers"] * self._layer_matmul_params(c) + c["d_model"] * c["vocab_size"] + self.adapter_params(c)
        d_attn = c["n_heads"] * (c["d_model"] // c["n_heads"])
        return float(6 * n + 12 * c["n_layers"] * c["seq_len"] * d_attn)

    def activation_bytes_per_layer(self, cfg, micro_batch: int, compute_bytes: int, remat: str) -> int:
        """Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
        Models", eq. 1, no parallelism): s·b·h·(34 + 5·a·s/h) bytes per layer with 2-byte
        activations and 1-byte dropout masks (s = seq_len, b = micro_batch, h = d_model, a = n_heads).

        Generalised here by counting the same saved tensors for this block (c = compute_bytes,
        f = d_ff, k = n_kv_heads·head_dim):
            attention  c·sb·(3h + 2k)      norm output, q, k, v, input of o
                       c·as²b              softmax output
                       (c + 1)·as²b        attention-dropout mask and output   (dropout > 0 only)
                       sbh                 residual-dropout mask               (dropout > 0 only)
            MLP        c·sbh + c·sb·2f     input; GELU input and output
                       or c·sb·4f          SwiGLU: gate, silu(gate), up, their product
                       sbh                 residual-dropout mask               (dropout > 0 only)
            norms      2·c·sbh             the two norm inputs
        With gelu, f = 4h, k = h, dropout > 0 and c = 2 this is exactly sbh(34 + 5as/h).
        remat "full" keeps only the block input, c·sbh (Korthikanti's full recomputation).
        remat "dots" keeps the block input and the saved matmul outputs: q, k, v, o, the MLP's
        up (and gate) and down outputs, c·sb·(4h + 2k + (1 or 2)·f).
        """
        c = self.normalize(cfg)
        s, b, h, a, f = c["seq_len"], int(micro_batch), c["d_model"], c["n_heads"], c["d_ff"]
        k = c["n_kv_heads"] * (h // a)
        cb = int(compute_bytes)
        sb = s * b
        mlp_mats = 2 if c["mlp"] == "swiglu" else 1
        if remat == "full":
            return cb * sb * h
        if remat == "dots":
            return cb * sb * (h + 2 * h + 2 * k + mlp_mats * f + h)
        if remat != "none":
            _fail(f"remat must be none, full or dots, not {remat!r}", "remat")
        drop = c["dropout"] > 0.0
        attn = cb * sb * (3 * h + 2 * k) + cb * a * s * s * b
        if drop:
            attn += (cb + 1) * a * s * s * b + sb * h
        mlp = cb * sb * h + cb * sb * (4 * f if c["mlp"] == "swiglu" else 2 * f) + (sb * h if drop else 0)
        norms = 2 * cb * sb * h
        return attn + mlp + norms

    # -- running -------------------------------------------------------------------------------

    def predict(self, model, inputs):
        """Float32 logits [B, T, vocab] for token ids [B, T], deterministic, layers unrolled (plain graph)."""
        return model(inputs, deterministic=True, unroll=True)

    def loss(self, model, batch, *, deterministic: bool, rngs=None):
        """Next-token cross-entropy summed over tokens with mask > 0 (the mask weights each token)."""

        logits = model(batch["inputs"], deterministic=deterministic, rngs=rngs)
        targets = batch["targets"]
        mask = batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
        real = mask > 0  # padded positions may hold any target id: keep them out of the sums entirely
        loss_sum = jnp.sum(jnp.where(real, nll * mask, 0.0))
        return loss_sum, jnp.sum(mask), {"correct_sum": jnp.sum(jnp.where(real, correct * mask, 0.0))}
