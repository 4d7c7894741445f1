"""Small Plans for executor tests, made the one way plans are made: a recipe through the real compiler.

`make_plan("gpt", mesh={"data": 2, "fsdp": 2, "tensor": 2}, accumulation=4)` writes a recipe for a
tiny model (each keyword is one recipe key), loads it with the recipe loader and compiles it with
`compile_plan` for a simulated topology of as many CPU devices as the mesh uses, so parameter
placement, batching and cadences are the compiler's own. `make_batch(plan, ...)` makes a matching
global batch of random data.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from capidsl.plan.compile import compile_plan
from capidsl.plan.plan import Plan
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

TINY = {
    "gpt": dict(vocab_size=256, seq_len=8, d_model=16, n_layers=1, n_heads=2, dropout=0.0),
    "mlp": dict(input_dim=8, hidden=[32, 32], num_classes=4, dropout=0.0),
}

# the recipe's `precision:` for each policy a test names
PRECISIONS = {
    "float32": {"params": "float32", "compute": "float32", "output": "float32", "loss_scale": "none"},
    "bfloat16": {"params": "float32", "compute": "bfloat16", "output": "float32", "loss_scale": "none"},
    "float16": {"params": "float32", "compute": "float16", "output": "float32", "loss_scale": "dynamic"},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_recipe(
    family: str = "gpt",
    *,
    mesh: dict[str, int] | None = None,
    micro_batch: int = 1,
    accumulation: int = 1,
    precision: str = "float32",
    optimizer: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    grad_clip: float | None = 1.0,
    total_steps: int = 20,
    seed: int = 0,
    remat: str = "none",
    schedule: str | None = None,
    rules: dict | None = None,
    recipe: dict | None = None,
    **model_options: Any,
) -> dict:
    """The recipe (as data) for a tiny `family` model; `recipe` adds or replaces any other keys."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1} | dict(mesh or {})
    return _merge({
        "name": f"test-{family}",
        "run_dir": "runs/test",
        "model": {"family": family, **TINY[family], **model_options},
        "data": {"source": "synthetic", "synthetic_examples": 256, "validation_fraction": 0.1, "shuffle": True,
                 "workers": 0, "prefetch": 2},
        "training": {"batch_size": micro_batch * accumulation * sizes["data"] * sizes["fsdp"],
                     "micro_batch": micro_batch, "gradient_accumulation_steps": accumulation,
                     "duration": f"{total_steps} steps", "seed": seed, "grad_clip": grad_clip, "remat": remat},
        "optimizer": {"name": optimizer, "weight_decay": weight_decay, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8,
                      "momentum": 0.9},
        "schedule": schedule or f"constant({lr!r}, rest)",
        "precision": PRECISIONS[precision],
        "eval": {"every": None, "batches": 2},
        "stop": {"restore_best": False},
        "checkpoint": {"every": None, "keep": 2, "async": False},
        "logging": {"every": "every 1 steps", "tensorboard": False, "progress": "none"},
        "mesh": {**sizes, "rules": dict(rules or {})},
    }, recipe or {})


def make_plan(family: str = "gpt", *, devices: int | None = None, **keys: Any) -> Plan:
    """The compiled Plan of `tiny_recipe(family, **keys)` on `devices` simulated CPU devices
    (default: the mesh's) in one process, as the tests' fake CPU devices are."""
    data = tiny_recipe(family, **keys)
    n = devices or data["mesh"]["data"] * data["mesh"]["fsdp"] * data["mesh"]["tensor"]
    # JSON is YAML: the text goes through the same loader, schema and desugaring as a recipe file
    return compile_plan(Recipe.from_text(json.dumps(data), name=f"test-{family}.yaml"), simulated("cpu", n, processes=1))


def make_batch(plan: Plan, seed: int = 0, *, real_tokens=None) -> dict[str, np.ndarray]:
    """A random global batch for `plan` as numpy. `real_tokens`: per row, how many leading positions
    (gpt) or whether the row (mlp, 0/1) count; default all."""
    rng = np.random.default_rng(seed)
    b = plan.batch.global_batch
    if plan.data.kind == "lm":  # counting sequences from random starts: the next token is learnable
        t = plan.batch.seq_len
        start = rng.integers(0, plan.data.vocab_size, size=(b, 1))
        toks = ((start + np.arange(t + 1)[None, :]) % plan.data.vocab_size).astype(np.int32)
        mask = np.ones((b, t), np.float32)
        if real_tokens is not None:
            mask = (np.arange(t)[None, :] < np.asarray(real_tokens)[:, None]).astype(np.float32)
        return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "mask": mask}
    x = rng.standard_normal((b, plan.data.input_dim)).astype(np.float32)
    y = np.argmax(x[:, : plan.data.num_classes], axis=1).astype(np.int32)  # learnable: the largest of the first features
    mask = np.ones((b,), np.float32) if real_tokens is None else np.asarray(real_tokens, np.float32)
    return {"x": x, "y": y, "mask": mask}
