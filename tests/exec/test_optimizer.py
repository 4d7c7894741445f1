"""The optimizer the plan names, with weight decay only on matrices (never biases or norms)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from capidsl.exec.errors import RunError
from capidsl.exec.mesh import build_mesh, param_path
from capidsl.exec.optimizer import decay_mask, make_optimizer
from capidsl.exec.state import init_state
from plan_factory import make_plan


@pytest.fixture(scope="module")
def params():
    """The tiny gpt's parameters (the same tree whatever the optimizer): initialised once."""
    plan = make_plan("gpt")
    _, state = init_state(plan, build_mesh(plan, jax.devices()[:1]))
    return state.params


def test_decay_mask_is_matrices_only(params):
    plan = make_plan("gpt")
    mask = {param_path(k): v for k, v in jax.tree_util.tree_leaves_with_path(decay_mask(plan)(params))}
    table = {p.path: p for p in plan.sharding.params}
    assert set(mask) == set(table)
    for path, decays in mask.items():
        dims = [a for a in table[path].logical_axes if a != "layers"]
        assert decays == (len(dims) >= 2), path
        if path.split(".")[-1] in ("bias", "scale"):
            assert not decays, path
    assert any(mask.values()) and not all(mask.values())


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion", "adafactor"])
def test_decay_touches_matrices_only(name, params):
    """With zero gradients the only change is weight decay: matrices shrink, biases and norms stay."""
    plan = make_plan("gpt", optimizer=name, weight_decay=0.1, lr=0.1, grad_clip=1.0)
    tx = make_optimizer(plan)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    mask = decay_mask(plan)(params)
    for (k, u), m, p in zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree_util.tree_leaves(mask),
                            jax.tree_util.tree_leaves(params)):
        u = np.asarray(u)
        assert np.all(np.isfinite(u)), param_path(k)
        if not m:
            assert np.all(u == 0), param_path(k)
        elif np.any(np.asarray(p) != 0):
            assert np.any(u != 0), param_path(k)


@pytest.mark.parametrize("name", ["adamw", "sgd", "lion", "adafactor"])
def test_the_compiler_plans_decay_on_matrices_whatever_the_optimizer(name):
    # a plan decays matrices only; "all" exists only in a hand-edited plan.json, so it is not built here
    assert make_plan("gpt", optimizer=name).optimizer.decay_mask == "matrices"


def test_unknown_optimizer_is_a_run_error():
    plan = make_plan("gpt", optimizer="adamw")
    bad = dataclasses.replace(plan, optimizer=dataclasses.replace(plan.optimizer, name="rmsprop"))
    with pytest.raises(RunError):
        make_optimizer(bad)


def test_clipping_bounds_the_update(params):
    plan = make_plan("gpt", optimizer="sgd", weight_decay=0.0, lr=1.0, grad_clip=0.5)
    tx = make_optimizer(plan)
    huge = jax.tree_util.tree_map(lambda p: jnp.full(p.shape, 1e3, p.dtype), params)
    updates, _ = tx.update(huge, tx.init(params), params)
    # sgd with momentum: the first update is -lr × clipped gradient
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
