"""Magnitude pruning in the train step: exact counts per group, masked weights stay zero, sharding."""

import dataclasses

import jax
import numpy as np
import pytest

from capidsl.exec.mesh import build_mesh, param_path
from capidsl.exec.pruning import PruningState, count_table
from capidsl.exec.state import init_state
from capidsl.exec.step import make_train_step
from capidsl.lang import parse_pruning
from capidsl.lang.pruning import pruned_count
from capidsl.plan.pruning import plan_pruning
from capidsl.recipe.sections import PruningConfig
from plan_factory import make_batch, make_plan

SCHEDULE = "from 0% to 80% between 0 and 8 steps, every 2 steps"


def pruned(plan, text=SCHEDULE, scope="per_layer", embeddings=False):
    config = PruningConfig(schedule=parse_pruning(text), scope=scope, embeddings=embeddings)
    prune = plan_pruning(config, plan.sharding, plan.cadence.total_steps, plan.cadence.steps_per_epoch,
                         plan.batch.tokens_per_step, lambda *a: None)
    return dataclasses.replace(plan, pruning=prune)


def train(plan, steps):
    """(params after each step as host arrays by path, metrics per step, final state)."""
    mesh = build_mesh(plan, jax.devices()[: plan.mesh.device_count])
    graphdef, state = init_state(plan, mesh)
    step = make_train_step(plan, mesh, graphdef)
    history, metrics = [], []
    for s in range(steps):
        state, m = step(state, make_batch(plan, seed=s))
        history.append({param_path(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)})
        metrics.append({k: float(v) for k, v in m.items()})
    return history, metrics, state


def zeros_per_group(plan, params):
    out = []
    for path in plan.pruning.params:
        w = params[path]
        out.extend(int(np.sum(layer == 0)) for layer in w.reshape(w.shape[0], -1)) if w.ndim == 3 else out.append(int(np.sum(w == 0)))
    return out


def test_per_layer_target_is_reached_exactly_and_pruned_weights_stay_zero():
    """adamw with momentum and weight decay: its update of a pruned weight is not zero, the result is."""
    plan = pruned(make_plan("gpt", micro_batch=4, optimizer="adamw", weight_decay=0.1, total_steps=14,
                            n_layers=2, lr=1e-2))
    history, metrics, state = train(plan, 14)
    events, table = count_table(plan)
    assert list(events) == [2, 4, 6, 8]
    for e, counts in zip(events, table):
        assert zeros_per_group(plan, history[e - 1]) == list(counts)  # exactly round(s(e)·n) in every group
    final = history[7]
    assert sum(zeros_per_group(plan, final)) == plan.pruning.final_zeros
    masks = {path: final[path] == 0 for path in plan.pruning.params}
    for later in history[8:]:  # six more updates with momentum and weight decay: the zeros stay exactly zero
        for path, m in masks.items():
            assert np.all(later[path][m] == 0)
            assert np.all(later[path][~m] != 0)
    moved = sum(np.sum(history[-1][p][~masks[p]] != final[p][~masks[p]]) for p in masks)
    assert moved > 0.9 * sum(np.sum(~m) for m in masks.values())  # the kept weights keep training
    assert metrics[7]["sparsity"] == pytest.approx(plan.pruning.final_zeros / plan.pruning.weights, abs=1e-7)
    assert metrics[0]["sparsity"] == 0.0
    (prune_state,) = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda x: isinstance(x, PruningState))
                      if isinstance(s, PruningState)]
    assert int(prune_state.count) == 14
    assert embeddings_untouched(plan, history[-1])


def embeddings_untouched(plan, params):
    return "wte.embedding" not in plan.pruning.params and np.count_nonzero(params["wte.embedding"] == 0) == 0


def test_global_ranking_reaches_the_total_exactly_and_ranks_across_matrices():
    """sgd with momentum and (L2) weight decay, one ranking over every matrix and the embeddings."""
    plan = pruned(make_plan("gpt", micro_batch=4, optimizer="sgd", weight_decay=0.1, lr=0.1, total_steps=11),
                  scope="global", embeddings=True)
    history, _, _ = train(plan, 11)
    weights = plan.pruning.weights
    assert "wte.embedding" in plan.pruning.params
    zeros = sum(int(np.sum(history[7][p] == 0)) for p in plan.pruning.params)
    assert zeros == pruned_count(parse_pruning(SCHEDULE).resolve(9).sparsity_at(8), weights) == plan.pruning.final_zeros
    per = [np.mean(history[7][p] == 0) for p in plan.pruning.params]
    assert max(per) - min(per) > 0.1  # one ranking over all of them: matrices end at different sparsities
    for later in history[8:]:
        for p in plan.pruning.params:
            assert np.all(later[p][history[7][p] == 0] == 0)


@pytest.mark.slow
def test_pruning_under_fsdp_and_tensor_sharding():
    """fsdp × tensor: the masks are sharded like their parameters, and every group's count is exact."""
    plan = pruned(make_plan("gpt", mesh={"fsdp": 2, "tensor": 2}, micro_batch=2, total_steps=8))
    history, _, state = train(plan, 8)
    assert zeros_per_group(plan, history[-1]) == list(count_table(plan)[1][-1])
    masks = [s for s in jax.tree_util.tree_leaves(state.opt_state, is_leaf=lambda x: isinstance(x, PruningState))
             if isinstance(s, PruningState)][0].masks
    specs = {param_path(k): v.sharding.spec for k, v in jax.tree_util.tree_leaves_with_path(masks) if v.ndim}
    params = {param_path(k): v.sharding.spec for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
    assert set(specs) == set(plan.pruning.params) and all(specs[p] == params[p] for p in specs)
    assert any(len(spec) and any(spec) for spec in specs.values())  # actually split, not replicated
