"""A NaN in a batch: that step changes nothing, the stop rule acts on it, and no checkpoint ever holds a
non-finite number (each kept checkpoint is restored and checked)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from fault_runs import fault_plan

import runs
from capidsl.exec.checkpoint import Checkpoints
from capidsl.exec.mesh import build_mesh
from capidsl.exec.state import abstract_state
from capidsl.lang import parse_stop_rule
from capidsl.plan.plan import StopPlan

NAN_AT = 23


def _plan(tmp_path, stop: str | None):
    rule = parse_stop_rule(stop).resolve(300, 1) if stop else None
    plan = fault_plan(stop=StopPlan(rule=rule, restore_best=False, restore_metric=None, restore_mode="min"))
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=1, checkpoint_every=5,
                                                                   eval_every=None))
    path = tmp_path / "plan.json"
    path.write_text(plan.dumps())
    return plan, path


def _all_checkpoints_finite(plan, run_dir) -> list[int]:
    mesh = build_mesh(plan, jax.devices()[: plan.mesh.device_count])
    _, abstract = abstract_state(plan, mesh)
    ckpts = Checkpoints(run_dir, plan.checkpoint)
    steps = ckpts.steps()
    try:
        for step in steps:
            state = ckpts.restore_state(step, abstract)
            for leaf in jax.tree_util.tree_leaves(state):
                assert np.isfinite(np.asarray(leaf)).all(), f"checkpoint {step} holds a non-finite value"
    finally:
        ckpts.close()
    return steps


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_stop_rule_stops_at_the_nan_step_and_no_checkpoint_holds_it(tmp_path, cache):
    plan, path = _plan(tmp_path, "not finite(loss)")
    done = runs.run(runs.driver_cmd(path, tmp_path / "run", "--fake-data", "--nan-at", str(NAN_AT)), runs.env(cache=cache))
    assert done.returncode == 0, done.stderr
    s = runs.summary(tmp_path / "run")
    assert s["steps"] == NAN_AT and "not finite" in s["stop_reason"] and not s["resumable"]
    assert f"no checkpoint at step {NAN_AT}" in done.stderr
    assert _all_checkpoints_finite(plan, tmp_path / "run") == [15, 20]  # keep 2; none at the NaN step
    assert _lines(tmp_path / "run")[-1]["loss"] == "nan"


@pytest.mark.slow
def test_without_a_rule_the_nan_step_is_skipped_and_training_goes_on(tmp_path, cache):
    plan, path = _plan(tmp_path, None)
    done = runs.run(runs.driver_cmd(path, tmp_path / "run", "--fake-data", "--nan-at", str(NAN_AT), "--steps", "40"),
                    runs.env(cache=cache))
    assert done.returncode == 0, done.stderr
    lines = {x["step"]: x for x in _lines(tmp_path / "run")}
    assert lines[NAN_AT]["loss"] == "nan" and lines[NAN_AT]["grad_norm"] == "nan"
    assert all(isinstance(lines[k]["loss"], float) for k in range(NAN_AT + 1, 41))  # the weights stayed finite
    assert lines[40]["loss"] < lines[NAN_AT - 1]["loss"]  # and kept learning
    assert _all_checkpoints_finite(plan, tmp_path / "run") == [35, 40]
