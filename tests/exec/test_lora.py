"""Low-rank adapters (model.lora): options, counts, a fresh adapter that changes nothing, the merge that
export uses, the plan (what trains, what it saves), and training that moves only the adapters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from plan_factory import make_batch, make_plan

from capidsl.exec.mesh import build_mesh, param_path
from capidsl.exec.state import init_state
from capidsl.exec.step import make_train_step
from capidsl.models import get_family
from capidsl.models.adapters import base_options, merge
from capidsl.models.errors import ModelError
from capidsl.models.family import is_adapter, param_table
from capidsl.plan.render import trainable_text

LLAMA = dict(vocab_size=64, seq_len=8, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, position="rope",
             norm="rmsnorm", mlp="swiglu", tied_embeddings=False, bias=False)
EVERY = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"]
FAM = get_family("gpt")


def build(cfg):
    return FAM.build(cfg, rngs=nnx.Rngs(3), param_dtype=jnp.float32, compute_dtype=jnp.float32)


def logits(model, rows: int = 2):
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (rows, 8)), jnp.int32)
    return np.asarray(FAM.predict(model, ids))


def test_options_normalise_to_flat_keys_only_when_there_are_adapters():
    plain = FAM.normalize(LLAMA)
    assert not any(k.startswith("lora") for k in plain)  # a model without adapters: its options as before
    cfg = FAM.normalize({**LLAMA, "lora": {"rank": 4, "targets": ["mlp.down", "attn.q"]}})
    assert {k: v for k, v in cfg.items() if k.startswith("lora")} == {
        "lora_rank": 4, "lora_alpha": 4.0, "lora_targets": ["attn.q", "mlp.down"], "lora_dropout": 0.0}
    assert FAM.normalize(cfg) == cfg and base_options(cfg) == plain  # idempotent; the base is the plain model
    assert FAM.normalize({**LLAMA, "lora": {"rank": 2}})["lora_targets"] == ["attn.q", "attn.v"]  # the paper's default
    assert FAM.normalize({**LLAMA, "lora": None}) == plain


@pytest.mark.parametrize("lora, key, words", [
    ({"rank": 0}, "model.lora.rank", "positive integer"),
    ({"alpha": 2}, "model.lora.rank", "positive integer"),
    ({"rank": 2, "alpha": -1}, "model.lora.alpha", "positive number"),
    ({"rank": 2, "dropout": 1.0}, "model.lora.dropout", "[0, 1)"),
    ({"rank": 2, "targets": ["attn.qq"]}, "model.lora.targets", "'attn.qq' is not a projection"),
    ({"rank": 2, "targets": []}, "model.lora.targets", "non-empty"),
    ({"rank": 2, "ranks": 3}, "model.lora", "unknown key ranks"),
])
def test_bad_adapters_are_named(lora, key, words):
    with pytest.raises(ModelError) as err:
        FAM.normalize({**LLAMA, "lora": lora})
    assert err.value.subject == key and words in err.value.message


def test_a_gate_adapter_needs_a_swiglu_mlp():
    with pytest.raises(ModelError, match="only a swiglu MLP has"):
        FAM.normalize({**LLAMA, "mlp": "gelu", "lora": {"rank": 2, "targets": ["mlp.gate"]}})


def test_counts_are_exact_and_new_adapters_change_nothing():
    plain = build(FAM.normalize(LLAMA))
    cfg = FAM.normalize({**LLAMA, "lora": {"rank": 3, "alpha": 6, "targets": EVERY, "dropout": 0.1}})
    adapted = build(cfg)
    table = param_table(adapted)
    assert FAM.param_count(cfg) == sum(p.size for p in table)
    extra = {p.path: p.shape for p in table if is_adapter(p.path)}
    assert len(extra) == 2 * len(EVERY) and extra["blocks.attn.k.lora_a"] == (2, 32, 3)
    assert extra["blocks.attn.k.lora_b"] == (2, 3, 16) and extra["blocks.mlp.down.lora_a"] == (2, FAM.normalize(LLAMA)["d_ff"], 3)
    # the base weights draw what they drew without adapters, and lora_b starts at zero
    base = {param_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(plain, nnx.Param))}
    for k, v in jax.tree_util.tree_leaves_with_path(nnx.state(adapted, nnx.Param)):
        if not is_adapter(param_path(k)):
            assert np.array_equal(np.asarray(v), np.asarray(base[param_path(k)])), param_path(k)
    np.testing.assert_array_equal(logits(adapted), logits(plain))


def test_the_merge_computes_what_the_adapters_compute():
    cfg = FAM.normalize({**LLAMA, "lora": {"rank": 3, "alpha": 6, "targets": EVERY}})
    adapted = build(cfg)
    graphdef, params = nnx.split(adapted, nnx.Param)
    rng = np.random.default_rng(1)
    params = jax.tree_util.tree_map_with_path(  # trained-looking adapters: lora_b no longer zero
        lambda k, v: jnp.asarray(rng.normal(0, 0.2, v.shape), v.dtype) if param_path(k).endswith("lora_b") else v, params)
    flat = {param_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    merged = merge(flat, cfg)
    assert set(merged) == {p for p in flat if not is_adapter(p)}
    plain_graphdef, plain = nnx.split(build(base_options(cfg)), nnx.Param)
    plain = jax.tree_util.tree_map_with_path(lambda k, _: merged[param_path(k)], plain)
    want = logits(nnx.merge(graphdef, params))
    got = logits(nnx.merge(plain_graphdef, plain))
    assert np.max(np.abs(want - logits(build(base_options(cfg))))) > 0.1  # the adapters do something
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert merge(flat, base_options(cfg)) is flat  # no adapters: nothing to merge


LORA = {"lora": {"rank": 2, "alpha": 4, "targets": ["attn.q", "attn.v", "mlp.down"]}}


def test_the_plan_trains_the_adapters_alone_unless_trainable_adds_base_parameters():
    plan = make_plan("gpt", **LORA)
    paths = [p.path for p in plan.sharding.params]
    assert set(plan.optimizer.frozen) == {p for p in paths if not is_adapter(p)}
    text = trainable_text(plan)
    assert "adapters rank 2 (scale 2) on attn.q, attn.v, mlp.down" in text and "freezing saves" in text
    plus = make_plan("gpt", recipe={"training": {"trainable": ["final_norm"]}}, **LORA)
    assert set(plus.optimizer.frozen) == {p for p in paths if not is_adapter(p) and not p.startswith("final_norm.")}
    assert plan.fingerprint != plus.fingerprint != make_plan("gpt").fingerprint


def test_training_moves_the_adapters_and_nothing_else():
    plan = make_plan("gpt", lr=1e-2, weight_decay=0.1, recipe={"model": {"lora": {"rank": 2, "dropout": 0.1}}})
    mesh = build_mesh(plan, jax.devices()[:1])
    graphdef, state = init_state(plan, mesh)
    before = {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    step = make_train_step(plan, mesh, graphdef)
    for s in range(3):
        state, metrics = step(state, make_batch(plan, seed=s))
    after = {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    assert np.isfinite(float(metrics["loss"]))
    for path in before:
        moved = before[path].tobytes() != after[path].tobytes()
        assert moved == is_adapter(path), path
