"""The GPT family: exact parameter counts, logical axes, forward semantics, loss sums, remat, scan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capidsl.models import LOGICAL_AXES, get_family, param_table

GPT = get_family("gpt")
GPT2_SMALL = dict(vocab_size=50257, seq_len=1024, d_model=768, n_layers=12, n_heads=12)
LLAMA2_7B = dict(vocab_size=32000, seq_len=4096, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                 norm="rmsnorm", mlp="swiglu", position="rope", tied_embeddings=False, bias=False)
# GQA + rope + swiglu + rmsnorm + untied, small enough to build for real.
TINY_LLAMA = dict(vocab_size=61, seq_len=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                  norm="rmsnorm", mlp="swiglu", position="rope", tied_embeddings=False, bias=False)
TINY_GPT2 = dict(vocab_size=61, seq_len=16, d_model=32, n_layers=2, n_heads=4)


def build(options, *, compute=jnp.float32, remat="none", seed=0):
    cfg = GPT.normalize(options)
    return cfg, GPT.build(cfg, rngs=nnx.Rngs(params=seed), param_dtype=jnp.float32, compute_dtype=compute, remat=remat)


def abstract(options):
    cfg = GPT.normalize(options)
    return cfg, nnx.eval_shape(lambda: GPT.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32,
                                                 compute_dtype=jnp.bfloat16, remat="none"))


def tokens(b, t, vocab=61, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, t)), jnp.int32)


@pytest.fixture(scope="module")
def tiny():
    cfg, model = build(TINY_LLAMA)
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    return cfg, model, graphdef, params, forward


def test_gpt2_small_count_via_eval_shape():
    cfg, model = abstract(GPT2_SMALL)
    table = param_table(model)
    assert GPT.param_count(cfg) == 124_439_808
    assert sum(p.size for p in table) == 124_439_808


def test_llama2_7b_count_is_analytic():
    assert GPT.param_count(GPT.normalize(LLAMA2_7B)) == 6_738_415_616


@pytest.mark.parametrize("variant", [{}, {"bias": False}, {"tied_embeddings": False}, {"n_kv_heads": 1, "mlp": "swiglu"},
                                     {"position": "rope", "norm": "rmsnorm", "d_ff": 40}])
def test_count_matches_the_abstract_model(variant):
    cfg, model = abstract(TINY_GPT2 | variant)
    assert sum(p.size for p in param_table(model)) == GPT.param_count(cfg)


def test_tiny_built_for_real_matches_analytic(tiny):
    cfg, model, *_ = tiny
    real = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert real == GPT.param_count(cfg) == sum(p.size for p in param_table(model))


def test_every_param_has_logical_axes_and_a_layers_axis():
    _, model = abstract(TINY_GPT2 | {"tied_embeddings": False})
    table = param_table(model)
    assert [p.path for p in table] == sorted(p.path for p in table)
    for p in table:
        assert len(p.logical_axes) == len(p.shape)
        assert all(a is None or a in LOGICAL_AXES for a in p.logical_axes), p
        assert (p.logical_axes[0] == "layers") == p.path.startswith("blocks."), p
        if p.path.startswith("blocks."):
            assert p.shape[0] == 2
    axes = {p.path: p.logical_axes for p in table}
    assert axes["blocks.attn.q.kernel"] == ("layers", "embed", "heads")
    assert axes["blocks.attn.k.kernel"] == ("layers", "embed", "kv_heads")
    assert axes["blocks.mlp.down.kernel"] == ("layers", "mlp", "embed")
    assert axes["wte.embedding"] == ("vocab", "embed")
    assert axes["lm_head.kernel"] == ("embed", "vocab")


def test_table_paths_are_the_executor_leaf_names(tiny):
    _, model, _, params, _ = tiny
    leaf_names = {".".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
                  for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert leaf_names == {p.path for p in param_table(model)}
    _, _, rest = nnx.split(model, nnx.Param, ...)
    assert jax.tree_util.tree_leaves(rest) == []  # nothing but parameters


def test_batch_shapes():
    assert GPT.batch_shapes(GPT.normalize(TINY_GPT2), 3) == {
        "inputs": ((3, 16), "int32"), "targets": ((3, 16), "int32"), "mask": ((3, 16), "float32")}


def test_forward_shape_and_dtype(tiny):
    cfg, _, _, params, forward = tiny
    logits = forward(params, tokens(3, 16))
    assert logits.shape == (3, 16, cfg["vocab_size"]) and logits.dtype == jnp.float32
    assert forward(params, tokens(2, 5)).shape == (2, 5, cfg["vocab_size"])  # shorter than seq_len


@pytest.mark.parametrize("options", [TINY_LLAMA, TINY_GPT2])
def test_causal(options):
    _, model = build(options)
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    x = tokens(2, 16)
    y = x.at[:, 10].set((x[:, 10] + 1) % 61)
    a, b = forward(params, x), forward(params, y)
    np.testing.assert_array_equal(np.asarray(a[:, :10]), np.asarray(b[:, :10]))
    assert not np.allclose(np.asarray(a[:, 10:]), np.asarray(b[:, 10:]))


def test_scan_equals_unrolled_reference(tiny):
    """The scanned stack equals running the layers one by one (predict unrolls)."""
    _, model, graphdef, params, forward = tiny
    x = tokens(2, 16)
    unrolled = jax.jit(lambda p, x: GPT.predict(nnx.merge(graphdef, p), x))
    np.testing.assert_allclose(np.asarray(forward(params, x)), np.asarray(unrolled(params, x)), rtol=1e-5, atol=1e-5)


def test_an_unrolled_layer_loop_computes_the_scanned_loss_and_gradients(tiny):
    """layer_loop "unrolled" (the plan's choice for shallow models without remat) is the same program
    straight-line: the loss and its gradients are those of the looping scan."""
    cfg, model, graphdef, params, _ = tiny
    assert not model.config.unroll_layers  # build's default: the loop
    unrolled = GPT.build(cfg, rngs=nnx.Rngs(params=0), param_dtype=jnp.float32, compute_dtype=jnp.float32,
                         layer_loop="unrolled")
    assert unrolled.config.unroll_layers
    unrolled_graphdef, _ = nnx.split(unrolled, nnx.Param)
    x = tokens(2, 16)
    batch = {"inputs": x, "targets": tokens(2, 16, seed=1), "mask": jnp.ones((2, 16))}

    def loss(g):
        return jax.jit(jax.value_and_grad(lambda p: GPT.loss(nnx.merge(g, p), batch, deterministic=True)[0]))(params)

    (a, ga), (b, gb) = loss(unrolled_graphdef), loss(graphdef)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)

    def loops(g):  # while loops in the compiled forward: the scan's, unless unrolled
        return jax.jit(lambda p: nnx.merge(g, p)(x)).lower(params).compile().as_text().count(" while(")

    assert loops(unrolled_graphdef) == 0 < loops(graphdef)
    from capidsl.models.errors import ModelError

    with pytest.raises(ModelError, match="unknown layer loop"):
        GPT.build(cfg, rngs=nnx.Rngs(params=0), param_dtype=jnp.float32, compute_dtype=jnp.float32, layer_loop="x")


def test_causal_softmax_matches_a_masked_jax_softmax_and_keeps_one_tensor():
    """The attention's softmax with its derivative written from the output: the values and gradients of
    jax.nn.softmax over scores masked with jnp.where, and one [.., T, T] residual for the backward
    where differentiating the masked softmax as written keeps several."""
    from capidsl.models.transformer import causal_softmax

    scores = jax.random.normal(jax.random.key(0), (2, 3, 8, 8), jnp.float32) * 3
    cot = jax.random.normal(jax.random.key(1), scores.shape, jnp.float32)

    def reference(s):
        return jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((8, 8), bool)), s, jnp.finfo(jnp.float32).min), axis=-1)

    y, vjp = jax.vjp(causal_softmax, scores)
    y_ref, vjp_ref = jax.vjp(reference, scores)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(vjp(cot)[0]), np.asarray(vjp_ref(cot)[0]), rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(jnp.triu(y, k=1)))) == 0.0  # no weight on a future key

    def square_residuals(f):
        leaves = jax.tree_util.tree_leaves(jax.vjp(f, scores)[1])
        return sum(1 for r in leaves if getattr(r, "shape", ())[-2:] == (8, 8))

    assert square_residuals(causal_softmax) == 1 < square_residuals(reference)


def test_loss_is_a_sum_over_real_tokens(tiny):
    _, _, graphdef, params, _ = tiny
    loss = jax.jit(lambda p, b: GPT.loss(nnx.merge(graphdef, p), b, deterministic=True))
    x, t = tokens(2, 16, seed=1), tokens(2, 16, seed=2)
    mask = jnp.ones((2, 16)).at[1, 8:].set(0.0)
    full_sum, full_w, _ = loss(params, {"inputs": x, "targets": t, "mask": mask})
    assert float(full_w) == 24.0
    # Garbage targets under the mask change nothing.
    t2 = t.at[1, 8:].set(-1)
    assert float(loss(params, {"inputs": x, "targets": t2, "mask": mask})[0]) == pytest.approx(float(full_sum), rel=1e-6)
    # Row by row, the sums add up.
    one = lambda r: loss(params, {"inputs": x[r:r + 1], "targets": t[r:r + 1], "mask": mask[r:r + 1]})  # noqa: E731
    (s0, w0, m0), (s1, w1, m1) = one(0), one(1)
    assert float(s0 + s1) == pytest.approx(float(full_sum), rel=1e-5)
    assert float(w0 + w1) == float(full_w)
    assert 0.0 <= float(m0["correct_sum"]) <= 16.0


@functools.cache
def _grads(remat):
    _, model = build(TINY_LLAMA, remat=remat)
    graphdef, params = nnx.split(model, nnx.Param)
    batch = {"inputs": tokens(2, 16), "targets": tokens(2, 16, seed=3), "mask": jnp.ones((2, 16))}

    def f(p):
        return GPT.loss(nnx.merge(graphdef, p), batch, deterministic=False, rngs=nnx.Rngs(dropout=7))[0]

    return jax.jit(jax.value_and_grad(f))(params)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_gradients(remat):
    # Without dropout: compiling threefry's dropout bits under grad costs ~10 s per variant on CPU, and
    # dropout keys are explicit arrays, so recomputation draws the same bits by construction.
    (l0, g0), (l1, g1) = _grads("none"), _grads(remat)
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_dropout_needs_rngs_and_changes_the_output():
    _, model = build(TINY_GPT2 | {"dropout": 0.5})
    x = tokens(1, 8)
    with pytest.raises(ValueError, match="rngs"):
        model(x, deterministic=False)
    graphdef, params = nnx.split(model, nnx.Param)
    run = jax.jit(lambda p, k: nnx.merge(graphdef, p)(x, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(k))))
    assert not np.allclose(np.asarray(run(params, 0)), np.asarray(run(params, 1)))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg, model = abstract(TINY_LLAMA)
    assert {p.dtype for p in param_table(model)} == {"float32"}
    _, model = build(TINY_LLAMA, compute=jnp.bfloat16)
    graphdef, params = nnx.split(model, nnx.Param)
    logits = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, tokens(1, 16))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_flops_per_token_palm_convention():
    cfg = GPT.normalize(GPT2_SMALL)
    n = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50257
    assert GPT.flops_per_token(cfg) == 6 * n + 12 * 12 * 1024 * 768


def test_activation_formula_reduces_to_korthikanti():
    s, b, h, a = 1024, 4, 768, 12
    cfg = GPT.normalize(GPT2_SMALL | {"dropout": 0.1})
    assert GPT.activation_bytes_per_layer(cfg, b, 2, "none") == s * b * h * 34 + 5 * a * s * s * b
    assert GPT.activation_bytes_per_layer(cfg, b, 2, "full") == 2 * s * b * h
    no_drop = GPT.normalize(GPT2_SMALL)
    assert GPT.activation_bytes_per_layer(no_drop, b, 2, "none") == s * b * h * 32 + 2 * a * s * s * b
    full = GPT.activation_bytes_per_layer(no_drop, b, 2, "full")
    assert full < GPT.activation_bytes_per_layer(no_drop, b, 2, "dots") < GPT.activation_bytes_per_layer(no_drop, b, 2, "none")
    assert GPT.num_layers(cfg) == 12
