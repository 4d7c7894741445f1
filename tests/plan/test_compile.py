"""The plan compiler: exact round trip, stable fingerprint, shipped recipes on simulated topologies, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import Plan
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
TINY_WITH_SCHEDULE = """model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64}
schedule: "linear(0 -> 1e-3, 500 steps) then constant(1e-3, rest)"
data: {source: synthetic, synthetic_examples: 512}
training: {batch_size: 16, duration: "40 steps"}
"""
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_json_round_trip_is_exact(tiny):
    plan = compile_plan(tiny(), simulated("cpu", 8))
    again = Plan.loads(plan.dumps())
    assert again == plan and again.dumps() == plan.dumps() and again.fingerprint == plan.fingerprint


def test_fingerprint_is_stable_across_processes():
    code = ("from capidsl.recipe import Recipe; from capidsl.plan.compile import compile_plan; "
            "from capidsl.plan.topology import simulated; "
            f"print(compile_plan(Recipe.from_yaml({str(ROOT / 'recipes/base.yaml')!r}), simulated('cpu', 4)).fingerprint)")
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
              for _ in range(2)}
    here = compile_plan(Recipe.from_yaml(ROOT / "recipes/base.yaml"), simulated("cpu", 4)).fingerprint
    assert prints == {here + "\n"}


def test_resume_safe_changes_keep_the_fingerprint(tiny):
    a = compile_plan(tiny(), simulated("cpu", 1))
    b = compile_plan(tiny("training.duration=80 steps", "eval.every=every 20 steps"), simulated("cpu", 1))
    c = compile_plan(tiny("model.d_model=64"), simulated("cpu", 1))
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_plans_on_a_simulated_cluster(path):
    devices = 1 if path.stem in ("base", "seed", "batching", "finetune", "finetune-lora") else 64  # batching: a token budget sized for one CPU; finetune*: a tiny fixture model
    plan = compile_plan(Recipe.from_yaml(path), simulated("h100", devices))
    assert plan.memory.fits, plan.memory
    assert Plan.loads(plan.dumps()) == plan


def test_gpt2_small_has_its_exact_parameter_count():
    plan = compile_plan(Recipe.from_yaml(ROOT / "recipes/gpt2-small.yaml"), simulated("a100-40g", 8))
    assert plan.model.param_count == 124_439_808
    assert sum(p.bytes_per_device for p in plan.sharding.params) == 124_439_808 * 4  # data parallel: replicated


def test_llama_70b_fits_1024_h100_and_not_8_cpus():
    recipe = Recipe.from_yaml(ROOT / "recipes/llama-70b-fsdp.yaml")
    big = compile_plan(recipe, simulated("h100", 1024))
    assert big.memory.fits and big.mesh.shape == (1, 128, 8)
    assert big.model.param_count == 68_976_648_192
    with pytest.raises(PlanError, match="micro-batch of 1 does not fit"):
        compile_plan(recipe, simulated("cpu", 8))


def test_sharded_bytes_are_the_shapes_divided_by_the_mesh(tiny):
    plan = compile_plan(tiny("mesh.data=1", "mesh.fsdp=2", "mesh.tensor=4"), simulated("cpu", 8))
    q = next(p for p in plan.sharding.params if p.path == "blocks.attn.q.kernel")
    assert q.shape == (2, 32, 32) and q.spec == ((), ("fsdp",), ("tensor",))
    assert q.bytes_per_device == 2 * 32 * 32 * 4 // 8
    assert plan.memory.opt_state == 2 * plan.memory.params  # adamw: two moments


def test_batching_is_derived_and_checked(tiny):
    plan = compile_plan(tiny("training.gradient_accumulation_steps=2"), simulated("cpu", 4))
    assert (plan.batch.micro_batch, plan.batch.accumulation, plan.batch.data_parallel) == (2, 2, 4)
    with pytest.raises(PlanError, match="does not divide the 4 rows") as err:
        compile_plan(tiny("training.gradient_accumulation_steps=3"), simulated("cpu", 4))
    assert err.value.render().startswith("<--set training.gradient_accumulation_steps=3>:1:")  # the override's own text
    with pytest.raises(PlanError, match="smaller than the data-parallel size"):
        compile_plan(tiny("training.batch_size=4"), simulated("cpu", 8))
    auto = compile_plan(tiny("training.micro_batch=auto"), simulated("cpu", 2))
    assert auto.batch.micro_batch * auto.batch.accumulation * 2 == 16


def test_an_unshardable_parameter_is_named(tiny):
    with pytest.raises(PlanError, match=r"blocks\.mlp\.\w+\.kernel .* does not divide over tensor=8"):
        compile_plan(tiny("model.d_ff=36", "mesh.data=1", "mesh.tensor=8"), simulated("cpu", 8))


def test_mesh_errors(tiny):
    with pytest.raises(PlanError, match="leaves 4 idle"):
        compile_plan(tiny("mesh.data=4"), simulated("cpu", 8))
    with pytest.raises(PlanError, match="only one mesh axis may be -1"):
        compile_plan(tiny("mesh.fsdp=-1"), simulated("cpu", 8))


def test_epochs_resolve_exactly_or_say_why(tiny):
    plan = compile_plan(tiny("training.duration=2 epochs"), simulated("cpu", 1))
    assert plan.cadence.total_steps == 2 * plan.cadence.steps_per_epoch
    with pytest.raises(PlanError, match="not a whole number of steps"):
        compile_plan(tiny("training.duration=1000 tokens"), simulated("cpu", 1))


def test_schedule_longer_than_training_points_into_the_recipe(tiny):
    recipe = Recipe.from_text(TINY_WITH_SCHEDULE, name="sched.yaml")
    with pytest.raises(PlanError) as err:
        compile_plan(recipe, simulated("cpu", 1))
    # the column of the offending piece inside the YAML string: `linear(` starts at column 12 of line 2 (after the opening quote)
    assert err.value.render().startswith("sched.yaml:2:12: schedule:"), err.value.render()


def test_plan_cli_json_and_diff(tmp_path):
    recipe = ROOT / "recipes/base.yaml"
    out = subprocess.run([sys.executable, "-m", "capidsl", "plan", str(recipe), "--devices", "4", "--json",
                          "--out", str(tmp_path / "p.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Plan.from_json(json.loads(out.stdout)).mesh.shape == (4, 1, 1)
    assert (tmp_path / "p.json").exists()
    diff = subprocess.run([sys.executable, "-m", "capidsl", "plan", str(recipe), "--devices", "4", "--diff",
                           str(ROOT / "recipes/seed.yaml")], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stderr
    assert "batch.accumulation: 1 → 8" in diff.stdout
