"""The MLP family: counts, axes, shapes, loss sums, and a few optax steps that lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from capidsl.models import get_family, param_table

MLP = get_family("mlp")
OPTIONS = dict(input_dim=8, hidden=[32, 16], num_classes=3)


def build(options=OPTIONS, remat="none"):
    cfg = MLP.normalize(options)
    return cfg, MLP.build(cfg, rngs=nnx.Rngs(params=0), param_dtype=jnp.float32, compute_dtype=jnp.float32, remat=remat)


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)  # learnable labels in {0, 1, 2}
    return {"x": jnp.asarray(x), "y": jnp.asarray(y), "mask": jnp.ones((n,), jnp.float32)}


def test_count_axes_shapes():
    cfg, model = build()
    table = param_table(model)
    assert MLP.param_count(cfg) == 8 * 32 + 32 + 32 * 16 + 16 + 16 * 3 + 3 == sum(p.size for p in table)
    assert {p.path: p.logical_axes for p in table}["hidden.0.kernel"] == ("input", "hidden")
    assert {p.path: p.logical_axes for p in table}["out.kernel"] == ("hidden", "classes")
    assert MLP.batch_shapes(cfg, 5) == {"x": ((5, 8), "float32"), "y": ((5,), "int32"), "mask": ((5,), "float32")}
    assert MLP.predict(model, jnp.ones((5, 8))).shape == (5, 3)
    assert MLP.num_layers(cfg) == 3
    assert MLP.flops_per_token(cfg) == 6 * (8 * 32 + 32 * 16 + 16 * 3)


def test_no_hidden_layers():
    cfg, model = build(OPTIONS | {"hidden": [], "bias": False})
    assert [p.logical_axes for p in param_table(model)] == [("input", "classes")]
    assert MLP.param_count(cfg) == 24


def test_masked_rows_contribute_nothing():
    _, model = build()
    batch = data(8)
    masked = batch | {"mask": batch["mask"].at[4:].set(0.0), "y": batch["y"].at[4:].set(-5)}
    s, w, m = MLP.loss(model, masked, deterministic=True)
    s4, w4, _ = MLP.loss(model, {k: v[:4] for k, v in batch.items()}, deterministic=True)
    assert float(w) == 4.0 == float(w4)
    assert float(s) == pytest.approx(float(s4), rel=1e-6)
    assert "correct_sum" in m


@pytest.mark.parametrize("remat", ["none", "full"])
def test_trains_with_optax(remat):
    _, model = build(OPTIONS | {"dropout": 0.1}, remat=remat)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    batch = data()

    def mean_loss(p, key):
        s, w, _ = MLP.loss(nnx.merge(graphdef, p), batch, deterministic=False, rngs=nnx.Rngs(dropout=key))
        return s / w

    @jax.jit
    def step(p, o, key):
        loss, g = jax.value_and_grad(mean_loss)(p, key)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    losses = []
    for i in range(30):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]


def test_activation_bytes():
    cfg = MLP.normalize(OPTIONS)
    inputs = 4 * 10 * (8 + 32 + 16)
    pre = 4 * 10 * (32 + 16)
    assert MLP.activation_bytes_per_layer(cfg, 10, 4, "none") == -(-(inputs + pre) // 3)
    assert MLP.activation_bytes_per_layer(cfg, 10, 4, "full") == -(-inputs // 3)
