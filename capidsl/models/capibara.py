"""The "capibara" family: options, exact parameter count, cost model, loss and inference for `Capibara`.

Options (recipe `model:` keys) and their defaults:
    vocab_size, seq_len, d_model, n_layers   required (seq_len = the segment length of one step)
    d_state          d_model: width of each layer's recurrent state
    d_ff             4·d_model: hidden width of the GELU MLP
    hidden_state     reset: every batch starts from a zero state (segments are independent);
                     carry: a batch row's state at the end of a segment is where the next batch's
                     same row starts (each row is one contiguous stream of the data; gradients are
                     truncated at segment borders; the state is part of the train state and checkpoint)
    tied_embeddings  true
    dropout          0.0: residual dropout
    norm_eps         1e-5
Beyond `ModelFamily`, a stateful family answers `carried_state(cfg, batch)` (None when nothing is
carried), `loss_with_state`, and `predict_with_state` with `inference_state(cfg, batch)` — the
function an ONNX export traces, so that the exported graph takes and returns the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from capidsl.models.errors import ModelError
from capidsl.models.family import ModelFamily
from capidsl.models.recurrence import Capibara, CapibaraConfig
from capidsl.models.transformer import REMAT_POLICIES

DEFAULTS: dict[str, Any] = {
    "vocab_size": None, "seq_len": None, "d_model": None, "n_layers": None, "d_state": None, "d_ff": None,
    "hidden_state": "reset", "tied_embeddings": True, "dropout": 0.0, "norm_eps": 1e-5,
}
REQUIRED = ("vocab_size", "seq_len", "d_model", "n_layers")
INTS = ("vocab_size", "seq_len", "d_model", "n_layers", "d_state", "d_ff")
HIDDEN_STATE = ("reset", "carry")
STATE_AXES = ("batch", "layers", "state")


def _fail(message: str, key: str, hint: str | None = None):
    raise ModelError(message, subject=f"model.{key}", hint=hint)


def lm_sums(logits, batch):
    """Next-token cross-entropy and argmax hits summed over tokens with mask > 0 (the mask weights each)."""
    targets, mask = batch["targets"], batch["mask"].astype(jnp.float32)
    real = mask > 0
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return (jnp.sum(jnp.where(real, nll * mask, 0.0)), jnp.sum(mask),
            {"correct_sum": jnp.sum(jnp.where(real, correct * mask, 0.0))})


class CapibaraFamily(ModelFamily):
    """Recurrent language models with a hidden state per layer, reset or carried across batches."""

    name = "capibara"

    # -- configuration -------------------------------------------------------------------------

    def normalize(self, options: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.merge_options(options, DEFAULTS, REQUIRED)
        for k in INTS:
            if cfg[k] is not None and (isinstance(cfg[k], bool) or not isinstance(cfg[k], int) or cfg[k] < 1):
                _fail(f"must be a positive integer, not {cfg[k]!r}", k)
        for k in ("dropout", "norm_eps"):
            if isinstance(cfg[k], bool) or not isinstance(cfg[k], (int, float)):
                _fail(f"must be a number, not {cfg[k]!r}", k)
            cfg[k] = float(cfg[k])
        if not isinstance(cfg["tied_embeddings"], bool):
            _fail(f"must be true or false, not {cfg['tied_embeddings']!r}", "tied_embeddings")
        if cfg["hidden_state"] not in HIDDEN_STATE:
            _fail(f"must be reset or carry, not {cfg['hidden_state']!r}", "hidden_state")
        if not 0.0 <= cfg["dropout"] < 1.0:
            _fail(f"must be in [0, 1), not {cfg['dropout']}", "dropout")
        cfg["d_state"] = cfg["d_state"] or cfg["d_model"]
        cfg["d_ff"] = cfg["d_ff"] or 4 * cfg["d_model"]
        return cfg

    def config(self, cfg: Mapping[str, Any]) -> CapibaraConfig:
        return CapibaraConfig(**self.normalize(cfg))

    def build(self, cfg, *, rngs, param_dtype, compute_dtype, remat: str = "none"):
        if remat != "none" and remat not in REMAT_POLICIES:
            _fail(f"remat must be none, full or dots, not {remat!r}", "remat")
        return Capibara(self.config(cfg), rngs=rngs, param_dtype=param_dtype, compute_dtype=compute_dtype, remat=remat)

    def num_layers(self, cfg) -> int:
        return int(cfg["n_layers"])

    def batch_shapes(self, cfg, batch_size: int):
        b, t = int(batch_size), int(cfg["seq_len"])
        shapes = {"inputs": ((b, t), "int32"), "targets": ((b, t), "int32"), "mask": ((b, t), "float32")}
        if cfg["hidden_state"] == "carry":
            shapes["reset"] = ((b,), "float32")  # 1 where the row's stream starts (its state is zeroed)
        return shapes

    def carried_state(self, cfg, batch_size: int) -> dict[str, Any] | None:
        """The state carried from one batch to the next (None under `hidden_state: reset`)."""
        c = self.normalize(cfg)
        if c["hidden_state"] != "carry":
            return None
        return {"shape": self.inference_state(c, batch_size), "dtype": "float32", "logical_axes": STATE_AXES}

    def inference_state(self, cfg, batch_size: int) -> tuple[int, ...]:
        """The float32 state `predict_with_state` takes and returns for `batch_size` rows (whatever
        `hidden_state` says about training: a deployed model streams text either way)."""
        c = self.normalize(cfg)
        return (int(batch_size), c["n_layers"], c["d_state"])

    # -- counting ------------------------------------------------------------------------------

    def param_count(self, cfg) -> int:
        c = self.normalize(cfg)
        d, s, f, v = c["d_model"], c["d_state"], c["d_ff"], c["vocab_size"]
        per_layer = 2 * d + 4 * d * s + s + 2 * d * f  # two norms, forget/value/gate/out, forget bias, MLP
        return v * d + c["n_layers"] * per_layer + d + (0 if c["tied_embeddings"] else d * v)

    def flops_per_token(self, cfg) -> float:
        """6·N with N the scalars of every per-token matmul (forget, value, gate, out, the MLP, the
        output head); the recurrence's elementwise work (a few FLOPs per state channel) is left out."""
        c = self.normalize(cfg)
        d, s, f = c["d_model"], c["d_state"], c["d_ff"]
        return float(6 * (c["n_layers"] * (4 * d * s + 2 * d * f) + d * c["vocab_size"]))

    def activation_bytes_per_layer(self, cfg, micro_batch: int, compute_bytes: int, remat: str) -> int:
        """Saved tensors per token (c = compute_bytes, d = d_model, s = d_state, f = d_ff):
            c·(4d + 4s + 2f)   norm inputs and outputs; forget, value, gate pre-activations and the
                               input of `out`; MLP up and GELU outputs
            4·4s               float32 a, b, the scanned state and silu(gate)
            2d                 residual-dropout masks (dropout > 0 only)
        The associative scan's internal levels are not counted. remat "full": the block input, c·d;
        "dots": the input and the matmul outputs, c·(3d + 3s + f)."""
        c = self.normalize(cfg)
        d, s, f = c["d_model"], c["d_state"], c["d_ff"]
        tokens, cb = int(micro_batch) * c["seq_len"], int(compute_bytes)
        if remat == "full":
            return cb * tokens * d
        if remat == "dots":
            return cb * tokens * (3 * d + 3 * s + f)
        if remat != "none":
            _fail(f"remat must be none, full or dots, not {remat!r}", "remat")
        per_token = cb * (4 * d + 4 * s + 2 * f) + 16 * s + (2 * d if c["dropout"] > 0 else 0)
        return tokens * per_token

    # -- running -------------------------------------------------------------------------------

    def predict(self, model, inputs):
        """Float32 logits [B, T, vocab] of a segment from a zero state (layers unrolled: a plain graph)."""
        return model(inputs, deterministic=True, unroll=True)[0]

    def predict_with_state(self, model, inputs, state):
        """(logits, state): one segment from `state` [B, n_layers, d_state] — the stateful inference
        function (what an ONNX export of this family traces: the graph takes and returns the state)."""
        return model(inputs, state, deterministic=True, unroll=True)

    def loss(self, model, batch, *, deterministic: bool, rngs=None):
        """Each segment from a zero state (`hidden_state: reset`, and evaluation without a carried state)."""
        logits, _ = model(batch["inputs"], deterministic=deterministic, rngs=rngs)
        return lm_sums(logits, batch)

    def loss_with_state(self, model, batch, state, *, deterministic: bool, rngs=None):
        """(loss_sum, weight_sum, metrics, new_state) for one segment from `state`; no gradient flows
        into the incoming state (truncated backpropagation through time at the segment border)."""
        logits, new_state = model(batch["inputs"], jax.lax.stop_gradient(state), reset=batch.get("reset"),
                                  deterministic=deterministic, rngs=rngs)
        loss_sum, weight_sum, metrics = lm_sums(logits, batch)
        return loss_sum, weight_sum, metrics, new_state
