"""A carried recurrent state through the real plan, data streams and train step, on a 2×2 mesh."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from capidsl.data import train_loader
from capidsl.exec.mesh import build_mesh
from capidsl.exec.state import init_state, model_family
from capidsl.exec.step import make_train_step
from capidsl.plan.compile import compile_plan
from capidsl.plan.plan import Plan
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

RECIPE = """
model: {family: capibara, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, d_state: 16, hidden_state: carry}
data: {source: synthetic, synthetic_examples: 600}
training: {batch_size: 4, micro_batch: 1, duration: "4 steps", grad_clip: null}
schedule: "constant(0)"
mesh: {data: 2, tensor: 2}
"""


def plan(*overrides) -> Plan:
    return compile_plan(Recipe.from_text(RECIPE, overrides=list(overrides)), simulated("cpu", 4))


def test_the_plan_places_counts_and_feeds_the_state():
    p = plan()
    h = p.hidden_state
    assert h.shape == (4, 2, 16) and h.logical_axes == ("batch", "layers", "state")
    assert h.spec == (("data",), (), ("tensor",)) and h.bytes_per_device == 2 * 2 * 8 * 4
    assert p.memory.state == h.bytes_per_device and p.data.streams == 4 and p.batch.accumulation == 2
    tokens = 600 * 17 - round(600 * 17 * 0.05)
    assert p.cadence.steps_per_epoch == (tokens // 4 - 1) // 16
    assert Plan.loads(p.dumps()) == p
    reset = plan("model.hidden_state=reset")
    assert reset.hidden_state is None and reset.data.streams == 0 and reset.fingerprint != p.fingerprint


def test_the_step_carries_each_rows_state_to_its_next_segment():
    """lr 0 keeps the parameters: after two steps each row's carried state must be the model's state
    after reading that row's two segments in a row — through micro-batches, sharding and resets."""
    p = plan()
    mesh = build_mesh(p, jax.devices()[:4])
    graphdef, state = init_state(p, mesh)
    step = make_train_step(p, mesh, graphdef)
    loader = train_loader(p.data, global_batch=4)
    batches = [next(loader) for _ in range(2)]
    for b in batches:
        state, metrics = step(state, b)
    assert state.hidden.sharding.spec == jax.sharding.PartitionSpec("data", None, "tensor")
    assert np.isfinite(float(metrics["loss"]))

    fam, _ = model_family(p)
    params = jax.device_get(state.params)
    run = jax.jit(lambda x, s: fam.predict_with_state(nnx.merge(graphdef, params), x, s))
    expected = jnp.zeros((4, 2, 16))
    for b in batches:
        _, expected = run(b["inputs"], expected * (1 - b["reset"])[:, None, None])
    np.testing.assert_allclose(np.asarray(state.hidden), np.asarray(expected), atol=2e-5)
    assert batches[0]["reset"].all() and not batches[1]["reset"].any()
    assert np.abs(np.asarray(state.hidden)).max() > 1e-3


def test_reset_steps_from_a_zero_state_and_carries_nothing():
    p = plan("model.hidden_state=reset")
    mesh = build_mesh(p, jax.devices()[:4])
    graphdef, state = init_state(p, mesh)
    assert state.hidden == ()
    batch = next(train_loader(p.data, global_batch=4))
    assert "reset" not in batch
    state, metrics = make_train_step(p, mesh, graphdef)(state, batch)
    assert state.hidden == () and np.isfinite(float(metrics["loss"]))
