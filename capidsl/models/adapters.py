"""Low-rank adapters (model.lora) folded into the weights they adapt: a plain gpt model that computes
what the adapted one computes, for export (Hugging Face, ONNX) and anything else that wants no adapters.

kernel' = kernel + (alpha / rank) · lora_a @ lora_b, per layer for the stacked blocks, in float32
(a merged kernel is float32 whatever the run's dtype); biases and every other parameter unchanged.
"""

from __future__ import annotations

from typing import Any

from capidsl.models.family import is_adapter


def base_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The gpt options without the adapters (the lora_* keys of a normalised config)."""
    return {k: v for k, v in cfg.items() if not k.startswith("lora_")}


def merge(flat: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """path -> array of a model with adapters → the same without them, each adapted kernel merged.
    A model without adapters comes back as it was (the same dict)."""
    import jax.numpy as jnp

    if "lora_rank" not in cfg:
        return flat
    scale = cfg["lora_alpha"] / cfg["lora_rank"]
    out = {}
    for path, value in flat.items():
        if is_adapter(path):
            continue
        module = path.removesuffix(".kernel")
        if path.endswith(".kernel") and f"{module}.lora_a" in flat:
            a, b = flat[f"{module}.lora_a"], flat[f"{module}.lora_b"]
            delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32),
                               precision="highest")
            value = value.astype(jnp.float32) + scale * delta  # kept in float32: a bfloat16 merge would round it
        out[path] = value
    return out
