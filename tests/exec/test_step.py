"""The train step: accumulation equals the large batch, precision policies, non-finite steps skipped."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capidsl.exec.mesh import build_mesh
from capidsl.exec.precision import LossScale, next_loss_scale
from capidsl.exec.state import init_state
from capidsl.exec.step import make_eval_step, make_train_step
from plan_factory import make_batch, make_plan


def _setup(plan):
    mesh = build_mesh(plan, jax.devices()[: plan.mesh.device_count])
    graphdef, state = init_state(plan, mesh)
    return mesh, graphdef, state, make_train_step(plan, mesh, graphdef)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _run(plan, batches):
    _, _, state, step = _setup(plan)
    metrics = []
    for b in batches:
        state, m = step(state, b)
        metrics.append(_host(m))
    return _host(state.params), metrics


@pytest.mark.parametrize("mesh", [None, {"data": 2}])
def test_accumulation_equals_one_large_batch(mesh):
    """micro 2 × accum 4 == micro 8 × accum 1, with rows of very unequal real-token counts (Axolotl #3196)."""
    dp = 1 if mesh is None else mesh["data"]
    common = dict(mesh=mesh, optimizer="sgd", weight_decay=0.0, grad_clip=None, lr=0.5)
    big = make_plan("gpt", micro_batch=8 // dp, accumulation=1, **common)
    acc = make_plan("gpt", micro_batch=2 // dp, accumulation=4, **common)
    assert big.batch.global_batch == acc.batch.global_batch
    t = big.batch.seq_len
    real = [t, 1, t // 2, 3, t, 2, 1, t - 1][: big.batch.global_batch]
    batches = [make_batch(big, seed=s, real_tokens=real) for s in range(2)]
    p_big, m_big = _run(big, batches)
    p_acc, m_acc = _run(acc, batches)
    for a, b in zip(m_big, m_acc):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
        assert a["weight_sum"] == b["weight_sum"] == sum(real)
    for x, y in zip(jax.tree_util.tree_leaves(p_big), jax.tree_util.tree_leaves(p_acc)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def accumulating():
    """One compiled step (micro 2 × accumulation 2) and a fresh-state maker, shared by the tests below."""
    plan = make_plan("gpt", micro_batch=2, accumulation=2)
    mesh, graphdef, state, step = _setup(plan)
    return plan, mesh, graphdef, step, lambda: jax.tree_util.tree_map(lambda x: x.copy(), state)


def test_loss_is_the_mean_over_real_tokens(accumulating):
    plan, mesh, graphdef, step, fresh = accumulating
    state = fresh()
    batch = make_batch(plan, real_tokens=[1, 8, 4, 7])
    sums = _host(make_eval_step(plan, mesh, graphdef)(state.params, batch))
    _, m = step(state, batch)
    assert sums["weight_sum"] == 20 == float(m["weight_sum"])
    np.testing.assert_allclose(float(m["loss"]), sums["loss_sum"] / sums["weight_sum"], rtol=1e-6)


def test_bf16_policy_keeps_f32_master_params_and_computes_in_bf16():
    plan = make_plan("gpt", precision="bfloat16")
    _, _, state, step = _setup(plan)
    batch = make_batch(plan)
    lowered = step.lower(state, batch)
    assert "bf16" in lowered.as_text()  # the model's matmuls run in bfloat16
    before = _host(state.params)
    state, m = lowered.compile()(state, batch)
    assert {x.dtype for x in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype("float32")}
    assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
    assert any(np.any(a != b) for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(_host(state.params))))


@pytest.fixture(scope="module")
def fp16():
    plan = make_plan("gpt", precision="float16")
    _, _, state, step = _setup(plan)
    return plan, state, step


def _scaled(state, value):
    """A copy of `state` with the loss scale set to `value` (the step reads the scale from the state)."""
    fresh = jax.tree_util.tree_map(lambda x: x.copy(), state)
    scale = jax.device_put(jnp.float32(value), state.loss_scale.scale.sharding)
    return dataclasses.replace(fresh, loss_scale=LossScale(scale, fresh.loss_scale.good_steps))


def test_fp16_overflow_skips_the_step_and_halves_the_scale(fp16):
    plan, state0, step = fp16
    state = _scaled(state0, 2.0**40)  # 2^40 × gradients overflow float16
    before = _host(state.params)
    state, m = step(state, make_batch(plan))
    assert not np.isfinite(float(m["grad_norm"])) and np.isfinite(float(m["loss"]))
    assert float(m["loss_scale"]) == 2.0**40
    assert float(state.loss_scale.scale) == 2.0**39 and int(state.loss_scale.good_steps) == 0
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(_host(state.params))):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 1


def test_fp16_finite_step_updates_and_counts(fp16):
    plan, state0, step = fp16
    state = _scaled(state0, 2.0**8)
    before = _host(state.params)
    state, m = step(state, make_batch(plan))
    assert np.isfinite(float(m["grad_norm"]))
    assert float(state.loss_scale.scale) == 2.0**8 and int(state.loss_scale.good_steps) == 1
    assert any(np.any(a != b) for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(_host(state.params))))


def test_dynamic_scale_grows_after_a_run_of_finite_steps():
    p = make_plan("gpt", precision="float16").precision
    ls = LossScale(jnp.float32(4.0), jnp.int32(0))
    ls = next_loss_scale(p, ls, jnp.bool_(True), growth_interval=2)
    assert (float(ls.scale), int(ls.good_steps)) == (4.0, 1)
    ls = next_loss_scale(p, ls, jnp.bool_(True), growth_interval=2)
    assert (float(ls.scale), int(ls.good_steps)) == (8.0, 0)
    ls = next_loss_scale(p, ls, jnp.bool_(False), growth_interval=2)
    assert (float(ls.scale), int(ls.good_steps)) == (4.0, 0)


def test_nan_batch_leaves_the_state_unchanged(accumulating):
    plan, _, _, step, fresh = accumulating
    state, _ = step(fresh(), make_batch(plan, seed=1))  # a real step first: optimizer moments non-zero
    before_p, before_o = _host(state.params), _host(state.opt_state)
    bad = make_batch(plan, seed=2)
    bad["mask"][1, 3] = np.nan
    state, m = step(state, bad)
    assert not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree_util.tree_leaves((before_p, before_o)), jax.tree_util.tree_leaves(_host((state.params, state.opt_state)))):
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(b))
    assert int(state.step) == 2


def test_a_step_is_a_pure_function_of_state_and_batch():
    """Dropout on: the same (state, batch) gives bitwise the same result; the RNG comes from (seed, step)."""
    plan = make_plan("gpt", dropout=0.5, micro_batch=2, accumulation=2)
    _, _, state0, step = _setup(plan)
    batch = make_batch(plan)
    outs = []
    for _ in range(2):
        state, m = step(jax.tree_util.tree_map(lambda x: x.copy(), state0), batch)
        outs.append((_host(state.params), float(m["loss"])))
    assert outs[0][1] == outs[1][1]
    for a, b in zip(jax.tree_util.tree_leaves(outs[0][0]), jax.tree_util.tree_leaves(outs[1][0])):
        np.testing.assert_array_equal(a, b)
