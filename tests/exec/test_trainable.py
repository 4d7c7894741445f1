"""Frozen parameters in the executor: bitwise unchanged, no optimizer state, no gradient, clipping on the trained
ones only, pruning beside them, and a resumed run identical to a straight one."""

from __future__ import annotations

import dataclasses

import fake_data
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jit_cache import compile_cache  # noqa: F401
from plan_factory import make_batch, make_plan

from capidsl.exec.loop import run
from capidsl.exec.mesh import build_mesh, param_path
from capidsl.exec.optimizer import make_optimizer, stop_frozen
from capidsl.exec.state import abstract_state, init_state, model_family
from capidsl.exec.step import make_train_step

ATTENTION = {"training": {"trainable": ["blocks.attn", "final_norm.*"]}}


def by_path(tree) -> dict[str, np.ndarray]:
    return {param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def train(plan, steps: int):
    """(parameters before, parameters after, the last step's metrics, the final state) on one device."""
    mesh = build_mesh(plan, jax.devices()[:1])
    graphdef, state = init_state(plan, mesh)
    before = by_path(state.params)
    step = make_train_step(plan, mesh, graphdef)
    for s in range(steps):
        state, metrics = step(state, make_batch(plan, seed=s))
    return before, by_path(state.params), {k: float(v) for k, v in metrics.items()}, state


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adafactor"])
def test_frozen_parameters_stay_bitwise_and_have_no_optimizer_state(optimizer):
    """With weight decay, momentum, clipping and accumulation: nothing reaches a frozen weight."""
    plan = make_plan("gpt", optimizer=optimizer, weight_decay=0.1, lr=1e-2, accumulation=2, recipe=ATTENTION)
    frozen = set(plan.optimizer.frozen)
    before, after, metrics, state = train(plan, 3)
    assert frozen and np.isfinite(metrics["loss"])
    for path in before:
        same = before[path].tobytes() == after[path].tobytes()
        assert same == (path in frozen), path
    in_state = {param_path(k) for k, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)} - {""}
    assert in_state and not in_state & frozen  # moments (and adafactor's factors) of trained parameters only
    assert in_state <= set(before) - frozen


def test_moments_keep_their_parameters_sharding():
    """The moments' paths are the parameters' own (no optimizer label in front), so fsdp splits them alike."""
    plan = make_plan("gpt", mesh={"fsdp": 2}, micro_batch=2, recipe=ATTENTION)
    _, abstract = abstract_state(plan, build_mesh(plan, jax.devices()[:2]))
    params = {param_path(k): a.sharding.spec for k, a in jax.tree_util.tree_leaves_with_path(abstract.params)}
    moments = [(param_path(k), a.sharding.spec) for k, a in jax.tree_util.tree_leaves_with_path(abstract.opt_state)
               if a.ndim]
    assert len(moments) == 2 * (len(params) - len(plan.optimizer.frozen))  # adamw: mu and nu of each trained one
    assert any("fsdp" in str(spec) for _, spec in moments)
    assert all(spec == params[path] for path, spec in moments)


def test_a_frozen_negative_zero_stays_negative():
    """Frozen updates are -0.0 (IEEE's additive identity): w + update is w bit for bit, -0.0 included."""
    plan = make_plan("gpt", optimizer="sgd", weight_decay=0.0, recipe=ATTENTION)
    _, state = init_state(plan, build_mesh(plan, jax.devices()[:1]))
    params = jax.tree_util.tree_map(lambda p: jnp.full_like(p, -0.0), state.params)
    tx = make_optimizer(plan)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = by_path(optax.apply_updates(params, updates))
    for path in plan.optimizer.frozen:
        assert np.all(np.signbit(new[path])), path


def test_clipping_bounds_the_trained_parameters_update_by_their_own_norm():
    plan = make_plan("gpt", optimizer="sgd", weight_decay=0.0, lr=1.0, grad_clip=0.5, recipe=ATTENTION)
    _, state = init_state(plan, build_mesh(plan, jax.devices()[:1]))
    params = state.params
    tx = make_optimizer(plan)
    huge = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 1e3, p.dtype), params)
    updates = by_path(tx.update(huge, tx.init(params), params)[0])
    trained = [u for path, u in updates.items() if path not in plan.optimizer.frozen]
    # sgd: the first update is -lr × the clipped gradient; the frozen gradients (most of them) do not shrink it
    assert np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in trained)) == pytest.approx(0.5, rel=1e-5)
    assert all(not np.any(updates[path]) for path in plan.optimizer.frozen)


def test_frozen_parameters_have_no_gradient_and_the_logged_norm_is_the_trained_ones():
    plan = make_plan("gpt", micro_batch=4, recipe=ATTENTION)
    mesh = build_mesh(plan, jax.devices()[:1])
    graphdef, state = init_state(plan, mesh)
    fam, _ = model_family(plan)
    batch = {k: jnp.asarray(v) for k, v in make_batch(plan).items()}

    def loss(params):
        loss_sum, weight_sum, _ = fam.loss(nnx.merge(graphdef, params), batch, deterministic=True)
        return loss_sum / weight_sum

    every = by_path(jax.grad(loss)(state.params))
    stopped = by_path(jax.grad(lambda p: loss(stop_frozen(plan)(p)))(state.params))
    frozen = set(plan.optimizer.frozen)
    for path in every:
        if path in frozen:
            assert not np.any(stopped[path]) and np.any(every[path]), path
        else:
            np.testing.assert_allclose(stopped[path], every[path], rtol=1e-6, atol=1e-9, err_msg=path)
    trained_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for p, g in every.items() if p not in frozen))
    _, metrics = make_train_step(plan, mesh, graphdef)(state, make_batch(plan))
    assert float(metrics["grad_norm"]) == pytest.approx(trained_norm, rel=1e-5)


def test_pruning_prunes_trained_weights_and_never_touches_frozen_ones():
    prune = {"pruning": {"schedule": "from 0% to 50% between 0 and 4 steps, every 2 steps"},
             "training": {"trainable": ["blocks.mlp"]}}
    plan = make_plan("gpt", micro_batch=4, total_steps=6, lr=1e-2, recipe=prune)
    assert plan.pruning.params == ("blocks.mlp.down.kernel", "blocks.mlp.up.kernel")
    before, after, metrics, _ = train(plan, 6)
    for path in plan.optimizer.frozen:
        assert before[path].tobytes() == after[path].tobytes(), path
    zeros = sum(int(np.sum(after[p] == 0)) for p in plan.pruning.params)
    assert zeros == plan.pruning.final_zeros and metrics["sparsity"] == pytest.approx(0.5)


def test_a_run_with_frozen_parameters_resumes_bitwise(tmp_path, monkeypatch):
    """The optimizer state's tree without frozen leaves goes through orbax and back exactly."""
    plan = make_plan("gpt", mesh={"data": 8}, total_steps=6, lr=3e-3, d_model=32, recipe=ATTENTION)
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=2, checkpoint_every=2))
    fake_data.install(monkeypatch, plan)
    straight = run(plan, tmp_path / "straight")
    first = run(plan, tmp_path / "pieces", max_steps=3)
    assert first.resumable
    second = run(plan, tmp_path / "pieces")
    assert second.resumed_from == 3 and second.steps == 6
    assert second.params_sha256 == straight.params_sha256
