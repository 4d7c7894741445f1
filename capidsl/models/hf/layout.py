"""Where each gpt parameter lives in a Hugging Face checkpoint, for GPT-2 and Llama.

A gpt parameter of the stacked blocks ("blocks.attn.q.kernel", [layers, d_in, d_out]) is one
checkpoint tensor per layer; GPT-2 keeps q, k and v side by side in one `c_attn` tensor (its
Conv1D stores [d_in, d_out], as gpt does), Llama stores nn.Linear weights as [d_out, d_in]
(transposed here). One table serves both directions: import reads a parameter's slice from the
tensors it names, export writes each tensor from the parameters it names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from capidsl.models.errors import ModelError

# Tensors a checkpoint may hold that are not weights: causal-mask and rope buffers of older versions.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


@dataclass(frozen=True)
class Part:
    """One gpt parameter (one layer of it when stacked) inside one checkpoint tensor."""

    path: str  # gpt parameter path
    layer: int | None  # index along the stacked "layers" axis, None for an unstacked parameter
    columns: tuple[int, int] | None  # its range along the tensor's last axis (GPT-2's fused q/k/v)


@dataclass(frozen=True)
class Tensor:
    """One checkpoint tensor: its name, shape, and the gpt parameters that make it."""

    name: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...]
    transpose: bool  # stored [d_out, d_in] (nn.Linear) where gpt stores [d_in, d_out]


def _gpt2(o: dict[str, Any], prefix: str) -> Iterator[Tensor]:
    d, f, v = o["d_model"], o["d_ff"], o["vocab_size"]
    yield Tensor(f"{prefix}wte.weight", (v, d), (Part("wte.embedding", None, None),), False)
    yield Tensor(f"{prefix}wpe.weight", (o["max_positions"], d), (Part("wpe.embedding", None, None),), False)
    for i in range(o["n_layers"]):
        h = f"{prefix}h.{i}."
        qkv = tuple(Part(f"blocks.attn.{n}.kernel", i, (j * d, (j + 1) * d)) for j, n in enumerate("qkv"))
        yield Tensor(h + "attn.c_attn.weight", (d, 3 * d), qkv, False)
        yield Tensor(h + "attn.c_attn.bias", (3 * d,),
                     tuple(Part(p.path.replace("kernel", "bias"), i, p.columns) for p in qkv), False)
        for name, path, shape in (("attn.c_proj.weight", "attn.o.kernel", (d, d)), ("attn.c_proj.bias", "attn.o.bias", (d,)),
                                  ("ln_1.weight", "attn_norm.scale", (d,)), ("ln_1.bias", "attn_norm.bias", (d,)),
                                  ("ln_2.weight", "mlp_norm.scale", (d,)), ("ln_2.bias", "mlp_norm.bias", (d,)),
                                  ("mlp.c_fc.weight", "mlp.up.kernel", (d, f)), ("mlp.c_fc.bias", "mlp.up.bias", (f,)),
                                  ("mlp.c_proj.weight", "mlp.down.kernel", (f, d)), ("mlp.c_proj.bias", "mlp.down.bias", (d,))):
            yield Tensor(h + name, shape, (Part(f"blocks.{path}", i, None),), False)
    yield Tensor(f"{prefix}ln_f.weight", (d,), (Part("final_norm.scale", None, None),), False)
    yield Tensor(f"{prefix}ln_f.bias", (d,), (Part("final_norm.bias", None, None),), False)
    if not o["tied_embeddings"]:
        yield Tensor("lm_head.weight", (v, d), (Part("lm_head.kernel", None, None),), True)


def _llama(o: dict[str, Any]) -> Iterator[Tensor]:
    d, f, v = o["d_model"], o["d_ff"], o["vocab_size"]
    hd = d // o["n_heads"]
    kv = o["n_kv_heads"] * hd
    yield Tensor("model.embed_tokens.weight", (v, d), (Part("wte.embedding", None, None),), False)
    for i in range(o["n_layers"]):
        h = f"model.layers.{i}."
        linear = (("self_attn.q_proj", "attn.q", d, d), ("self_attn.k_proj", "attn.k", kv, d),
                  ("self_attn.v_proj", "attn.v", kv, d), ("self_attn.o_proj", "attn.o", d, d),
                  ("mlp.gate_proj", "mlp.gate", f, d), ("mlp.up_proj", "mlp.up", f, d), ("mlp.down_proj", "mlp.down", d, f))
        for name, path, d_out, d_in in linear:
            yield Tensor(f"{h}{name}.weight", (d_out, d_in), (Part(f"blocks.{path}.kernel", i, None),), True)
            if o["bias"]:
                yield Tensor(f"{h}{name}.bias", (d_out,), (Part(f"blocks.{path}.bias", i, None),), False)
        yield Tensor(h + "input_layernorm.weight", (d,), (Part("blocks.attn_norm.scale", i, None),), False)
        yield Tensor(h + "post_attention_layernorm.weight", (d,), (Part("blocks.mlp_norm.scale", i, None),), False)
    yield Tensor("model.norm.weight", (d,), (Part("final_norm.scale", None, None),), False)
    if not o["tied_embeddings"]:
        yield Tensor("lm_head.weight", (v, d), (Part("lm_head.kernel", None, None),), True)


def tensors(architecture: str, options: dict[str, Any], names: set[str] | None = None) -> list[Tensor]:
    """The checkpoint tensors of a gpt model with these options, as `architecture` names them.
    `names` (a checkpoint's own) picks GPT-2's spelling: with or without the "transformer." prefix."""
    if architecture == "GPT2LMHeadModel":
        bare = names is not None and "wte.weight" in names and "transformer.wte.weight" not in names
        return list(_gpt2(options, "" if bare else "transformer."))
    if architecture == "LlamaForCausalLM":
        return list(_llama(options))
    raise ModelError(f"architecture {architecture!r} is not supported", subject="model.init.from")


def ignorable(name: str, options: dict[str, Any]) -> bool:
    """A tensor a checkpoint may hold beyond the weights: buffers, and a tied model's copy of wte."""
    return name.endswith(BUFFER_SUFFIXES) or (name == "lm_head.weight" and options["tied_embeddings"])


def mismatches(layout: list[Tensor], found: dict[str, tuple[str, tuple[int, ...]]], options: dict[str, Any]) -> list[str]:
    """Every difference between the tensors a model needs and a checkpoint's (name -> (dtype, shape)),
    one line each, all at once."""
    wanted = {t.name: t for t in layout}
    lines = [f"missing tensor {n} {list(t.shape)}" for n, t in wanted.items() if n not in found]
    lines += [f"unexpected tensor {n} {list(found[n][1])}" for n in found if n not in wanted and not ignorable(n, options)]
    lines += [f"tensor {n}: shape {list(found[n][1])} in the checkpoint, {list(t.shape)} in the model"
              for n, t in wanted.items() if n in found and tuple(found[n][1]) != t.shape]
    lines += [f"tensor {n}: dtype {found[n][0]}, not a floating-point type" for n in wanted
              if n in found and found[n][0] not in ("F32", "F16", "BF16", "F64")]
    return lines


def sources(layout: list[Tensor]) -> dict[str, list[tuple[Tensor, Part]]]:
    """gpt parameter path -> its (tensor, part) per layer, in layer order (one entry when unstacked)."""
    out: dict[str, list[tuple[Tensor, Part]]] = {}
    for t in layout:
        for p in t.parts:
            out.setdefault(p.path, []).append((t, p))
    for entries in out.values():
        entries.sort(key=lambda e: -1 if e[1].layer is None else e[1].layer)
    return out


def view(array: np.ndarray, tensor: Tensor, part: Part) -> np.ndarray:
    """The part of a checkpoint tensor that is one gpt parameter (one layer of it), in gpt's
    orientation; a view, so nothing is read until it is sliced and copied."""
    if part.columns is not None:
        array = array[..., part.columns[0]:part.columns[1]]
    return array.T if tensor.transpose else array
