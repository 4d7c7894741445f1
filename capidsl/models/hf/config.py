"""A Hugging Face model directory's config.json as options of the "gpt" family, and back.

Two architectures map onto `gpt` exactly: GPT2LMHeadModel (learned positions, LayerNorm, tanh-GELU
MLP, biases, tied output) and LlamaForCausalLM (rotary positions, RMSNorm, SwiGLU, no biases,
grouped-query attention, tied or untied output, Llama 3.1's "llama3" rope scaling). Whatever
config.json says that `gpt` cannot compute is refused by name, never ignored: a model that loads
but computes something else would be worse than one that does not load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capidsl.models.errors import ModelError

ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM")
# The options config.json decides (a recipe may repeat them, never change them); seq_len may be shorter.
SHAPE_KEYS = ("vocab_size", "max_positions", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "position",
              "norm", "mlp", "tied_embeddings", "bias", "rope_theta", "norm_eps", "rope_scaling",
              "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len")


@dataclass(frozen=True)
class HFModel:
    """What config.json says, as the gpt family's options."""

    architecture: str
    options: dict[str, Any]  # gpt options, seq_len = the model's context length
    tokenizer: str | None  # tokenizer.json beside it, when there is one


def _fail(directory: Path, message: str, hint: str | None = None):
    raise ModelError(f"{directory}: {message}", subject="model.init.from", hint=hint)


def read_config(directory: Path) -> HFModel:
    """The directory's config.json as gpt options; a clear error for anything else."""
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        _fail(directory, "no such directory", "model.init.from names a local Hugging Face model directory "
                                              "(config.json + *.safetensors) or a capidsl run directory")
    if not path.is_file():
        _fail(directory, "has no config.json", "a Hugging Face model directory holds config.json and *.safetensors")
    try:
        c = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        _fail(directory, f"config.json is not JSON ({err})")
    arch = (c.get("architectures") or [None])[0]
    if arch not in ARCHITECTURES:
        _fail(directory, f"architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})",
              "capidsl maps these onto its gpt family exactly; another architecture needs its own mapping")
    options = _gpt2(directory, c) if arch == "GPT2LMHeadModel" else _llama(directory, c)
    tok = directory / "tokenizer.json"
    return HFModel(arch, options, str(tok) if tok.is_file() else None)


def _require(directory: Path, c: dict, key: str, wanted, why: str) -> None:
    if c.get(key, wanted) != wanted:
        _fail(directory, f"config.json has {key} = {c[key]!r}, which capidsl's gpt family does not compute ({why})",
              f"supported: {key} = {wanted!r}")


def _gpt2(directory: Path, c: dict) -> dict[str, Any]:
    _require(directory, c, "activation_function", "gelu_new", "the MLP uses tanh-approximated GELU")
    _require(directory, c, "scale_attn_by_inverse_layer_idx", False, "attention is scaled by 1/sqrt(head_dim) only")
    _require(directory, c, "reorder_and_upcast_attn", False, "one attention formulation")
    _require(directory, c, "scale_attn_weights", True, "attention is scaled by 1/sqrt(head_dim)")
    d = int(c["n_embd"])
    return {"vocab_size": int(c["vocab_size"]), "seq_len": int(c["n_positions"]), "max_positions": int(c["n_positions"]),
            "d_model": d, "n_layers": int(c["n_layer"]), "n_heads": int(c["n_head"]), "n_kv_heads": int(c["n_head"]),
            "d_ff": int(c.get("n_inner") or 4 * d), "position": "learned", "norm": "layernorm", "mlp": "gelu",
            "tied_embeddings": bool(c.get("tie_word_embeddings", True)), "bias": True,
            "norm_eps": float(c.get("layer_norm_epsilon", 1e-5))}


def _rope(directory: Path, c: dict) -> dict[str, Any]:
    """rope_theta and rope_scaling (transformers 4) or rope_parameters (transformers 5)."""
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or params
    theta = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return {"rope_theta": theta, "rope_scaling": "none"}
    if kind != "llama3":
        _fail(directory, f"rope scaling {kind!r} is not supported", "supported: none (default) and llama3")
    return {"rope_theta": theta, "rope_scaling": "llama3", "rope_scaling_factor": float(scaling["factor"]),
            "rope_low_freq_factor": float(scaling["low_freq_factor"]),
            "rope_high_freq_factor": float(scaling["high_freq_factor"]),
            "rope_original_max_len": int(scaling["original_max_position_embeddings"])}


def _llama(directory: Path, c: dict) -> dict[str, Any]:
    _require(directory, c, "hidden_act", "silu", "the MLP is SwiGLU")
    _require(directory, c, "pretraining_tp", 1, "no tensor-parallel slicing of the linear layers")
    if bool(c.get("attention_bias", False)) != bool(c.get("mlp_bias", False)):
        _fail(directory, "config.json has attention_bias != mlp_bias", "supported: biases everywhere or nowhere")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    if c.get("head_dim") not in (None, d // heads):
        _fail(directory, f"config.json has head_dim = {c['head_dim']}, not hidden_size / num_attention_heads = {d // heads}",
              "supported: head_dim = hidden_size / num_attention_heads")
    context = int(c.get("max_position_embeddings", 2048))
    return {"vocab_size": int(c["vocab_size"]), "seq_len": context, "max_positions": context, "d_model": d,
            "n_layers": int(c["num_hidden_layers"]), "n_heads": heads,
            "n_kv_heads": int(c.get("num_key_value_heads") or heads), "d_ff": int(c["intermediate_size"]),
            "position": "rope", "norm": "rmsnorm", "mlp": "swiglu",
            "tied_embeddings": bool(c.get("tie_word_embeddings", False)), "bias": bool(c.get("attention_bias", False)),
            "norm_eps": float(c.get("rms_norm_eps", 1e-6)), **_rope(directory, c)}


def to_config(options: dict[str, Any], architecture: str) -> dict[str, Any]:
    """config.json for a gpt model of `architecture`, as transformers' save_pretrained writes it."""
    o = options
    if architecture == "GPT2LMHeadModel":
        return {"architectures": [architecture], "model_type": "gpt2", "vocab_size": o["vocab_size"],
                "n_positions": o["max_positions"], "n_embd": o["d_model"], "n_layer": o["n_layers"],
                "n_head": o["n_heads"], "n_inner": o["d_ff"], "activation_function": "gelu_new",
                "layer_norm_epsilon": o["norm_eps"], "tie_word_embeddings": o["tied_embeddings"],
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "torch_dtype": "float32"}
    rope_scaling = None if o["rope_scaling"] == "none" else {
        "rope_type": "llama3", "factor": o["rope_scaling_factor"], "low_freq_factor": o["rope_low_freq_factor"],
        "high_freq_factor": o["rope_high_freq_factor"], "original_max_position_embeddings": o["rope_original_max_len"]}
    return {"architectures": [architecture], "model_type": "llama", "vocab_size": o["vocab_size"],
            "hidden_size": o["d_model"], "intermediate_size": o["d_ff"], "num_hidden_layers": o["n_layers"],
            "num_attention_heads": o["n_heads"], "num_key_value_heads": o["n_kv_heads"],
            "max_position_embeddings": o["max_positions"], "hidden_act": "silu", "rms_norm_eps": o["norm_eps"],
            "rope_theta": o["rope_theta"], "rope_scaling": rope_scaling, "tie_word_embeddings": o["tied_embeddings"],
            "attention_bias": o["bias"], "mlp_bias": o["bias"], "torch_dtype": "float32"}


def architecture_of(options: dict[str, Any]) -> str:
    """The Hugging Face architecture that computes what a gpt model with these options computes."""
    o = options
    if (o["position"], o["norm"], o["mlp"], o["bias"]) == ("learned", "layernorm", "gelu", True) \
            and o["n_kv_heads"] == o["n_heads"]:
        return "GPT2LMHeadModel"
    if (o["position"], o["norm"], o["mlp"]) == ("rope", "rmsnorm", "swiglu"):
        return "LlamaForCausalLM"
    raise ModelError(f"a gpt model with position {o['position']}, norm {o['norm']}, mlp {o['mlp']}, bias {o['bias']} "
                     "has no Hugging Face architecture that computes the same", subject="export.format",
                     hint="GPT2LMHeadModel: learned + layernorm + gelu + bias; LlamaForCausalLM: rope + rmsnorm + swiglu")
