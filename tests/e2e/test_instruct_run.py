"""recipes/instruct.yaml: instruction tuning as a recipe. `capidsl run` trains on the committed prompt /
completion examples and logs the loss per completion token; the executor's loss ignores prompt targets
(a hand computation over completion targets only, under gradient accumulation, and with an all-prompt
micro-batch)."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

import runs

RECIPE = runs.ROOT / "recipes" / "instruct.yaml"
DATA = runs.ROOT / "examples" / "data" / "instruct.jsonl"
TINY = {"model.d_model": "32", "model.n_layers": "1", "model.seq_len": "32", "data.path": str(DATA)}


@pytest.mark.slow
def test_capidsl_run_trains_on_completions_and_logs_the_loss_per_completion_token(tmp_path):
    sets = TINY | {"training.duration": "60 steps", "eval.every": "every 30 steps", "eval.batches": "2",
                   "checkpoint.every": "null", "logging.every": "every 10 steps", "logging.progress": "plain",
                   "logging.tensorboard": "false", "schedule": "constant(3e-3)"}
    argv = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    done = runs.run([sys.executable, "-m", "capidsl", "run", str(RECIPE), "--run-dir", str(tmp_path / "run"), *argv],
                    runs.env(devices=1), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed" in done.stdout
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["data"]["format"] == "supervised" and 0 < plan["data"]["loss_tokens"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert len(train) == 6 and all(0 < r["loss_tokens"] < 64 * 32 for r in train)  # completions: a share of a step
    assert train[-1]["loss"] < train[0]["loss"] - 1.0, [r["loss"] for r in train]
    assert [r["step"] for r in rows if "val_loss" in r] == [30, 60]


@pytest.mark.slow
def test_the_loss_is_the_mean_over_completion_targets_only():
    import jax.numpy as jnp
    from flax import nnx

    from capidsl.data import eval_batches
    from capidsl.exec.mesh import build_mesh
    from capidsl.exec.state import init_state, model_family
    from capidsl.exec.step import make_eval_step, make_train_step
    from capidsl.plan.compile import compile_plan
    from capidsl.plan.topology import simulated
    from capidsl.recipe import Recipe

    sets = TINY | {"training.batch_size": "8", "training.micro_batch": "2", "training.gradient_accumulation_steps": "4",
                   "optimizer.name": "sgd", "training.grad_clip": "null", "schedule": "constant(0.1)"}
    plan = compile_plan(Recipe.from_yaml(RECIPE, overrides=[f"{k}={v}" for k, v in sets.items()]),
                        simulated("cpu", 1, processes=1))
    assert plan.batch.accumulation == 4 and plan.data.format == "supervised"
    mesh = build_mesh(plan, jax.devices()[:1])
    graphdef, state = init_state(plan, mesh)
    batch = eval_batches(plan.data, global_batch=8, max_batches=1)[0]
    mask = batch["mask"].copy()
    assert 0 < mask.mean() < 0.5 and set(np.unique(mask)) == {0.0, 1.0}

    # by hand: the model's log-probabilities of the completion targets, and only those
    predict = jax.jit(lambda params, x: model_family(plan)[0].predict(nnx.merge(graphdef, params), x))
    logits = np.asarray(predict(state.params, jnp.asarray(batch["inputs"])), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    by_hand = float(nll[mask > 0].mean())

    evaluate = make_eval_step(plan, mesh, graphdef)
    sums = {k: float(v) for k, v in evaluate(state.params, batch).items()}
    assert sums["weight_sum"] == mask.sum()
    np.testing.assert_allclose(sums["loss_sum"] / sums["weight_sum"], by_hand, rtol=1e-5)
    other = dict(batch, targets=np.where(mask > 0, batch["targets"], (batch["targets"] + 7) % 256).astype(np.int32))
    assert {k: float(v) for k, v in evaluate(state.params, other).items()} == sums  # prompt targets do not count

    # the train step (4 micro-batches of 2 rows) divides by the batch's completion targets, and an
    # all-prompt micro-batch adds nothing to either sum
    silent = dict(batch, mask=np.concatenate([np.zeros_like(mask[:2]), mask[2:]]))
    step = make_train_step(plan, mesh, graphdef)
    for b in (batch, silent):
        m = {k: float(v) for k, v in step(jax.tree_util.tree_map(lambda x: x.copy(), state), b)[1].items()}
        real = b["mask"] > 0
        assert m["loss_tokens"] == m["weight_sum"] == real.sum()
        np.testing.assert_allclose(m["loss"], float(nll[real].mean()), rtol=1e-5)
