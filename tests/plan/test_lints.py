"""Each lint fires on the mistake it exists for, and none fires on the shipped base recipe."""

from pathlib import Path

import pytest

from capidsl.plan.compile import compile_plan
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def codes(plan):
    return {lint.code for lint in plan.lints}


def test_base_recipe_has_no_lints():
    assert codes(compile_plan(Recipe.from_yaml(ROOT / "recipes/base.yaml"), simulated("cpu", 1))) == set()


@pytest.mark.parametrize("overrides, code", [
    (("checkpoint.every=every 100 steps",), "checkpoint-never"),
    (("logging.every=every 100 steps",), "log-never"),
    (("stop.when=val_loss stalls for 5 evals",), "patience-too-long"),
    (("stop.when=val_loss < 1.0", "eval.every=every 100 steps"), "eval-never"),
    (("stop.when=val_loss < 1.0", "eval.every=null"), "eval-never"),
    (("stop.when=val_loss stalls for 5 steps",), "eval-too-rare"),
    (("checkpoint.keep_best={metric: val_loss, mode: min, n: 1}", "eval.every=every 100 steps"), "keep-best-never"),
])
def test_each_lint_fires(tiny, overrides, code):
    plan = compile_plan(tiny(*overrides), simulated("cpu", 1))
    assert code in codes(plan)
    lint = next(lint for lint in plan.lints if lint.code == code)
    assert lint.location  # file:line:col of the key (here inside the --set override)


def test_tensor_axis_across_hosts_warns(tiny):
    plan = compile_plan(tiny("mesh.data=1", "mesh.tensor=4", "model.d_ff=64"), simulated("h100", 4, processes=4))
    assert "tensor-crosses-hosts" in codes(plan)


def test_eval_null_means_no_evaluation(tiny):
    plan = compile_plan(tiny("eval.every=null"), simulated("cpu", 1))
    assert plan.cadence.eval_every is None and codes(plan) == set()
