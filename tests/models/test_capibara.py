"""The capibara family: exact parameter count, a carried state equals one long segment, resets, truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capidsl.models import ModelError, get_family, param_table

BASE = dict(vocab_size=64, seq_len=16, d_model=32, n_layers=2)


def build(**options):
    """(family, cfg, model as a jitted function (inputs, state=None, reset=None) -> (logits, state))."""
    fam = get_family("capibara")
    cfg = fam.normalize(BASE | options)
    model = fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, compute_dtype=jnp.float32)
    graphdef, params = nnx.split(model)
    run = jax.jit(lambda p, x, s, r: nnx.merge(graphdef, p)(x, s, reset=r))
    return fam, cfg, lambda x, s=None, reset=None: run(params, x, s, reset)


@pytest.mark.parametrize("options", [{}, {"d_state": 24, "tied_embeddings": False}, {"d_ff": 48, "n_layers": 3}])
def test_param_count_is_exact(options):
    fam = get_family("capibara")
    cfg = fam.normalize(BASE | options)
    abstract = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, compute_dtype=jnp.float32))
    table = param_table(abstract)
    assert sum(p.size for p in table) == fam.param_count(cfg)
    assert all(p.logical_axes[0] == "layers" for p in table if p.path.startswith("blocks."))


def test_options_are_checked_and_normalize_is_idempotent():
    fam = get_family("capibara")
    cfg = fam.normalize(BASE)
    assert fam.normalize(cfg) == cfg and cfg["d_state"] == 32 and cfg["d_ff"] == 128 and cfg["hidden_state"] == "reset"
    with pytest.raises(ModelError, match="reset or carry"):
        fam.normalize(BASE | {"hidden_state": "keep"})
    with pytest.raises(ModelError, match="n_heads"):
        fam.normalize(BASE | {"n_heads": 2})
    assert fam.carried_state(cfg, 8) is None and "reset" not in fam.batch_shapes(cfg, 8)
    carry = fam.normalize(BASE | {"hidden_state": "carry", "d_state": 24})
    assert fam.carried_state(carry, 8) == {"shape": (8, 2, 24), "dtype": "float32", "logical_axes": ("batch", "layers", "state")}
    assert fam.batch_shapes(carry, 8)["reset"] == ((8,), "float32")


def test_two_carried_segments_equal_one_long_segment():
    """The recurrence is exact across segment borders: what `hidden_state: carry` relies on."""
    fam, cfg, model = build(d_state=24, hidden_state="carry")
    _, _, long_model = build(d_state=24, hidden_state="carry", seq_len=32)  # the same parameters (same seed)
    real = fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32, compute_dtype=jnp.float32)
    x = jax.random.randint(jax.random.key(1), (3, 32), 0, 64)
    first, state = model(x[:, :16])
    second, state2 = model(x[:, 16:], state)
    whole, whole_state = long_model(x)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=2e-6)
    np.testing.assert_allclose(state2, whole_state, atol=2e-6)
    assert state.shape == (3, 2, 24) and np.any(np.asarray(state) != 0)
    assert np.array_equal(real.init_hidden_state(3), np.zeros((3, 2, 24), np.float32))
    graphdef, params = nnx.split(real)
    stateful = jax.jit(lambda p, x, s: fam.predict_with_state(nnx.merge(graphdef, p), x, s))  # what export traces
    logits, out = stateful(params, x[:, 16:], state)
    np.testing.assert_allclose(logits, second, atol=1e-6)
    np.testing.assert_allclose(out, state2, atol=1e-6)
    plain = jax.jit(lambda p, x: fam.predict(nnx.merge(graphdef, p), x))
    np.testing.assert_allclose(plain(params, x[:, :16]), first, atol=1e-6)  # predict: from a zero state


def test_reset_zeroes_only_the_rows_that_start_a_stream():
    _, _, model = build(hidden_state="carry")
    x = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
    _, state = model(x)
    with_reset, _ = model(x, state, reset=jnp.array([1.0, 0.0]))
    fresh, _ = model(x)
    carried, _ = model(x, state)
    np.testing.assert_allclose(with_reset[0], fresh[0], atol=1e-6)
    np.testing.assert_allclose(with_reset[1], carried[1], atol=1e-6)
    assert not np.allclose(carried[0], fresh[0], atol=1e-4)


def test_no_gradient_crosses_the_segment_border():
    fam = get_family("capibara")
    model = fam.build(fam.normalize(BASE | {"hidden_state": "carry"}), rngs=nnx.Rngs(0), param_dtype=jnp.float32,
                      compute_dtype=jnp.float32)
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.random.randint(jax.random.key(3), (2, 17), 0, 64)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "mask": jnp.ones((2, 16)), "reset": jnp.zeros(2)}
    state = jnp.ones((2, 2, 32))

    def loss(state, params):
        return fam.loss_with_state(nnx.merge(graphdef, params), batch, state, deterministic=True)[0]

    to_state, to_params = jax.jit(jax.grad(loss, argnums=(0, 1)))(state, params)
    assert float(jnp.abs(to_state).max()) == 0.0
    assert float(optax_norm(to_params)) > 0


def optax_norm(tree):
    import optax

    return optax.tree.norm(tree)
