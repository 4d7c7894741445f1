"""The attention kernel: which one the plan chooses (capidsl/plan/kernels.py), what the plan shows and
estimates for it, and that the implementations agree where both run.

The cuDNN kernel itself runs only on an NVIDIA GPU with cuDNN (tracing it elsewhere raises `RuntimeError:
cuDNN is not detected`): here it is checked against XLA only when such a GPU is present; a separate GPU
script runs it. Everything else runs on a CPU: the selection is a pure function, a GPU plan made on a CPU
counts the fused kernel's residuals through the "recompute" stand-in, and the einsum formulation agrees
with `jax.nn.dot_product_attention(implementation="xla")`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rich.console import Console

from capidsl.models import get_family
from capidsl.models.errors import ModelError
from capidsl.models.transformer import fused_attention
from capidsl.plan import kernels
from capidsl.plan.activations import saved_residuals
from capidsl.plan.compile import compile_plan
from capidsl.plan.kernels import CUDNN, XLA, choose_attention, plan_attention
from capidsl.plan.plan import ModelPlan, Plan
from capidsl.plan.render import render
from capidsl.plan.topology import DEVICE_KINDS, simulated
from capidsl.recipe import Recipe

GPT = get_family("gpt")
ROOT = Path(__file__).resolve().parents[2]
SEQ, LAYERS, HEADS = 32, 2, 4
RECIPE = f"""
name: attn
model: {{family: gpt, vocab_size: 256, seq_len: {SEQ}, d_model: 64, n_layers: {LAYERS}, n_heads: {HEADS},
        n_kv_heads: 2, d_ff: 128, position: rope}}
data: {{source: synthetic, synthetic_examples: 256, validation_fraction: 0.25}}
training: {{batch_size: 8, micro_batch: 8, duration: "10 steps", seed: 1, mixed_precision: true}}
"""
GQA = dict(vocab_size=61, seq_len=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, norm="rmsnorm",
           mlp="swiglu", position="rope", tied_embeddings=False, bias=False)


def recipe(*overrides: str) -> Recipe:
    return Recipe.from_text(RECIPE, name="attn.yaml", overrides=overrides)


def shown(plan: Plan) -> str:
    console = Console(record=True, width=400)
    console.print(render(plan))
    return console.export_text()


# -- the choice ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, dtype, head_dim, dropout, expected", [
    ("h100", "bfloat16", 64, 0.0, CUDNN),
    ("h100", "float16", 128, 0.0, CUDNN),
    ("h200", "bfloat16", 128, 0.0, CUDNN),
    ("h100", "bfloat16", 256, 0.0, CUDNN),  # Hopper takes head dims up to 256
    ("h100", "bfloat16", 264, 0.0, XLA),
    ("a100-40g", "bfloat16", 128, 0.0, CUDNN),
    ("a100-80g", "float16", 64, 0.0, CUDNN),
    ("a100-80g", "bfloat16", 256, 0.0, XLA),  # before Hopper: at most 128
    ("l4", "bfloat16", 128, 0.0, CUDNN),
    ("l4", "bfloat16", 160, 0.0, XLA),
    ("h100", "bfloat16", 60, 0.0, XLA),  # not a multiple of 8
    ("h100", "bfloat16", 4, 0.0, XLA),
    ("h100", "float32", 64, 0.0, XLA),  # cuDNN takes half precision only
    ("h100", "bfloat16", 64, 0.1, XLA),  # attention dropout: the fused call takes none
    ("a100-40g", "float16", 64, 0.5, XLA),
    ("cpu", "bfloat16", 64, 0.0, XLA),
    ("tpu-v5p", "bfloat16", 128, 0.0, XLA),
])
def test_the_kernel_by_device_kind_dtype_head_dim_and_dropout(kind, dtype, head_dim, dropout, expected):
    assert choose_attention(kind, dtype, head_dim, dropout) == expected


@pytest.mark.parametrize("kind", sorted(DEVICE_KINDS))
def test_only_nvidia_kinds_get_cudnn(kind):
    nvidia = kind.startswith(("a100", "h100", "h200", "l4"))
    assert (choose_attention(kind, "bfloat16", 64, 0.0) == CUDNN) == nvidia
    assert choose_attention(kind, "float32", 64, 0.0) == XLA


def test_only_the_gpt_family_has_a_fused_path():
    cfg = GPT.normalize(GQA)  # head_dim 8
    assert plan_attention("gpt", cfg, "h100", "bfloat16") == CUDNN
    assert plan_attention("gpt", {**cfg, "dropout": 0.1}, "h100", "bfloat16") == XLA
    assert plan_attention("mlp", {"d_model": 64, "n_heads": 8, "dropout": 0.0}, "h100", "bfloat16") == XLA


# -- the plan ------------------------------------------------------------------------------------


def test_a_gpu_plan_made_on_a_cpu_chooses_cudnn_shows_it_and_counts_no_scores():
    fused = compile_plan(recipe(), simulated("h100", 1))
    dropped = compile_plan(recipe("model.dropout=0.1"), simulated("h100", 1))
    assert fused.model.attention == CUDNN and dropped.model.attention == XLA
    assert fused.to_json()["model"]["attention"] == CUDNN and Plan.loads(fused.dumps()) == fused
    assert "attention cudnn (fused" in shown(fused) and "attention xla" in shown(dropped)
    # traced (the stand-in), not the family's fallback formula: cuDNN was never traced on this CPU
    assert "cudnn attention" in fused.memory.activation_formula
    assert "could not be traced" not in fused.memory.activation_formula
    assert fused.memory.activations < dropped.memory.activations


def test_the_fused_estimate_leaves_out_the_score_matrices(monkeypatch):
    fused = compile_plan(recipe(), simulated("h100", 1))
    monkeypatch.setattr(kernels, "plan_attention", lambda *a: XLA)
    plain = compile_plan(recipe(), simulated("h100", 1))
    assert plain.model.attention == XLA and "attention" not in plain.to_json()["model"]
    # the kernel follows the device kind: resume-safe like the topology, so not fingerprinted
    assert plain.fingerprint == fused.fingerprint and plain.batch == fused.batch
    scores = HEADS * SEQ * SEQ * 8 * LAYERS * 2  # a·s²·b bfloat16 probabilities per layer, at the least
    assert plain.memory.activations - fused.memory.activations >= scores


def test_cpu_plans_are_the_plans_without_the_field():
    """An existing recipe on a CPU: the JSON (and fingerprint) is byte-identical to the same plan with a
    ModelPlan made without the attention argument, i.e. as before the field existed."""
    plan = compile_plan(Recipe.from_yaml(ROOT / "recipes/instruct.yaml"), simulated("cpu", 1))
    m = plan.model
    before = dataclasses.replace(plan, model=ModelPlan(family=m.family, config=m.config, param_count=m.param_count,
                                                       remat=m.remat, init=m.init, layer_loop=m.layer_loop))
    assert plan.model.attention == XLA and "attention" not in plan.to_json()["model"]
    assert plan.dumps() == before.dumps() and plan.fingerprint == before.fingerprint
    assert "attention xla" in shown(plan)


def test_the_stand_in_keeps_what_cudnn_keeps():
    """q, k and v (k/v with their own n_kv_heads), a float32 logsumexp per row and head, no T×T tensor."""
    plan = compile_plan(recipe(), simulated("h100", 1))
    cfg = GPT.normalize(plan.model.options)
    kw = dict(rows=2, sharding=plan.sharding, mesh=plan.mesh, param_dtype="float32", compute_dtype="bfloat16",
              remat="none")
    fused = saved_residuals(GPT, cfg, attention=CUDNN, **kw)
    plain = saved_residuals(GPT, cfg, **kw)
    square = lambda rs: [r for r in rs if r.shape[-2:] == (SEQ, SEQ)]  # noqa: E731
    assert square(plain) and not square(fused)
    assert any(r.shape == (LAYERS, 2, SEQ, HEADS) and r.dtype == "float32" for r in fused)  # the logsumexp
    assert any(r.shape == (LAYERS, 2, SEQ, 2, 16) for r in fused)  # k, v unrepeated


# -- the implementations -------------------------------------------------------------------------


def _model(attention: str, **options):
    cfg = GPT.normalize(GQA | options)
    kernel = {} if attention == XLA else {"attention": attention}
    return GPT.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, compute_dtype=jnp.float32, **kernel)


def test_einsum_attention_matches_dot_product_attention_xla_in_the_model():
    """Today's einsum formulation against `jax.nn.dot_product_attention(implementation="xla", is_causal=True)`
    (what "recompute" runs forward) in the grouped-query model, float32: logits and gradients."""
    x = jnp.asarray(np.random.default_rng(0).integers(0, 61, (3, 16)), jnp.int32)
    batch = {"inputs": x, "targets": jnp.roll(x, -1, axis=1), "mask": jnp.ones((3, 16))}
    out = {}
    for attention in ("xla", "recompute"):
        graphdef, params = nnx.split(_model(attention), nnx.Param)
        loss = lambda p: GPT.loss(nnx.merge(graphdef, p), batch, deterministic=True)[0]  # noqa: E731
        out[attention] = jax.jit(lambda p: (nnx.merge(graphdef, p)(x), jax.grad(loss)(p)))(params)
    np.testing.assert_allclose(out["xla"][0], out["recompute"][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out["xla"][1]), jax.tree.leaves(out["recompute"][1])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def _einsum_attention(q, k, v):
    """The gpt's "xla" formulation (capidsl/models/transformer.py, Attention.__call__) without dropout."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    t, hd = q.shape[1], q.shape[3]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(hd)
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


@pytest.mark.parametrize("kv_heads", [6, 2, 1], ids=["mha", "gqa", "mqa"])
def test_random_qkv(kv_heads):
    rng = np.random.default_rng(kv_heads)
    q = jnp.asarray(rng.standard_normal((2, 12, 6, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, 12, kv_heads, 8)), jnp.float32) for _ in range(2))
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    @jax.jit
    def outputs_and_grads(q, k, v):
        ref = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
        fns = (_einsum_attention, lambda *a: fused_attention(*a, "recompute"))
        return ref, [f(q, k, v) for f in fns], [jax.vjp(f, q, k, v)[1](cot) for f in fns]

    ref, (mine, stand_in), (g_mine, g_stand_in) = outputs_and_grads(q, k, v)
    np.testing.assert_allclose(mine, ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(stand_in, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_mine, g_stand_in):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_the_kernel_is_a_build_argument_checked_by_the_family():
    assert _model(XLA).config.attention == XLA and _model("recompute").config.attention == "recompute"
    with pytest.raises(ModelError, match="unknown attention kernel"):
        _model("flash")
    with pytest.raises(ModelError, match="needs the xla attention"):
        _model(CUDNN, dropout=0.1)


def test_the_executor_builds_the_plans_kernel():
    from capidsl.exec.state import build_model, model_family

    plan = compile_plan(recipe(), simulated("h100", 1))
    fam, cfg = model_family(plan)
    model = nnx.eval_shape(lambda: build_model(plan, fam, cfg, nnx.Rngs(0)))  # builds; traces no attention
    assert model.config.attention == CUDNN
    cpu = compile_plan(recipe(), simulated("cpu", 1))
    assert nnx.eval_shape(lambda: build_model(cpu, fam, cfg, nnx.Rngs(0))).config.attention == XLA


def test_cudnn_off_a_gpu_is_a_clear_error():
    """(The kernel against XLA's on a GPU: benchmarks/accelerator.py checks it where it runs.)"""
    if jax.default_backend() == "gpu":  # the suite runs on CPUs; there this test has nothing to refuse
        return
    q = jnp.zeros((1, 8, 2, 8), jnp.bfloat16)
    with pytest.raises(ModelError, match="runs only on an NVIDIA GPU"):
        jax.eval_shape(lambda q: fused_attention(q, q, q, CUDNN), q)
