"""The same training on four meshes gives the same losses, with parameters placed as the plan says.

Issue 7's first promise, checked on 8 fake CPU devices: data, FSDP and tensor parallelism change
where numbers are computed, not which numbers, up to float32 reduction order.
"""

import jax
import numpy as np
import pytest

from capidsl.exec.mesh import build_mesh, to_partition_spec
from capidsl.exec.state import abstract_state, init_state
from capidsl.exec.step import make_train_step
from plan_factory import make_batch, make_plan

MESHES = [None, {"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}]
STEPS = 20
GLOBAL_BATCH = 16


def _plan(mesh):
    dp = (mesh or {}).get("data", 1) * (mesh or {}).get("fsdp", 1)
    return make_plan("gpt", mesh=mesh, micro_batch=GLOBAL_BATCH // dp // 2, accumulation=2, lr=3e-3, total_steps=STEPS)


def _train(mesh):
    plan = _plan(mesh)
    m = build_mesh(plan, jax.devices()[: plan.mesh.device_count])
    graphdef, state = init_state(plan, m)
    created = {_name(k): x.sharding.spec for k, x in jax.tree_util.tree_leaves_with_path(state.params)}
    step = make_train_step(plan, m, graphdef)
    losses = []
    for i in range(STEPS):
        state, metrics = step(state, make_batch(plan, seed=i))
        losses.append(metrics["loss"])
    return plan, state, np.array([float(x) for x in losses]), created


def _name(keypath):
    return ".".join(str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey))


@pytest.fixture(scope="module")
def runs():
    return [_train(mesh) for mesh in MESHES]


def test_losses_agree_across_meshes(runs):
    reference = runs[0][2]
    assert reference[-1] < reference[0]  # it trains
    for (plan, _, losses, _), mesh in zip(runs[1:], MESHES[1:]):
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(mesh))


def test_params_agree_across_meshes(runs):
    """Looser than the losses: Adam divides by √v, so near-zero gradients amplify reduction-order noise."""
    reference = jax.tree_util.tree_leaves(runs[0][1].params)
    for (_, state, _, _), mesh in zip(runs[1:], MESHES[1:]):
        for a, b in zip(reference, jax.tree_util.tree_leaves(state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4, err_msg=str(mesh))


def test_params_and_optimizer_state_are_sharded_as_planned(runs):
    for plan, state, _, created in runs:
        specs = {p.path: to_partition_spec(p.spec) for p in plan.sharding.params}
        assert created == specs, plan.mesh  # born sharded, not sharded after the fact
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        assert len(leaves) == len(specs)
        for path, x in leaves:
            assert x.sharding.spec == specs[_name(path)], (plan.mesh, _name(path))
        # adam's moments live exactly where their parameters do
        for path, x in jax.tree_util.tree_leaves_with_path(state.opt_state):
            name = _name(path)
            if name in specs:
                assert x.sharding.spec == specs[name], (plan.mesh, name)
    split = [p for p in runs[2][0].sharding.params if any(p.spec)]
    assert split, "the mixed mesh should split some parameters"


def test_abstract_state_matches_the_real_one(runs):
    plan, state, _, _ = runs[2]
    m = build_mesh(plan, jax.devices()[: plan.mesh.device_count])
    _, abstract = abstract_state(plan, m)
    real, ab = jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(abstract)
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(abstract)
    for x, a in zip(real, ab):
        assert (x.shape, x.dtype) == (a.shape, a.dtype)
        assert x.sharding.is_equivalent_to(a.sharding, x.ndim)
