"""The layer loop the plan chooses (plan/kernels.py choose_layer_loop): unrolled for shallow models
without remat, scanned otherwise; shown, recorded as layout, overridable, refused where it cannot run."""

import pytest

from flax import nnx

from capidsl.exec.state import build_model, model_family
from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.kernels import SCANNED, UNROLL_LAYERS, UNROLLED, LoopError, choose_layer_loop
from capidsl.plan.plan import Plan
from capidsl.plan.render import render
from capidsl.plan.topology import simulated


@pytest.mark.parametrize("family, layers, remat, requested, expected", [
    ("gpt", 2, "none", "auto", UNROLLED),
    ("gpt", UNROLL_LAYERS, "none", "auto", UNROLLED),
    ("gpt", UNROLL_LAYERS + 1, "none", "auto", SCANNED),  # compile time grows with depth
    ("gpt", 2, "full", "auto", SCANNED),  # remat keeps its savings only in a loop
    ("gpt", 2, "dots", "auto", SCANNED),
    ("gpt", 2, "none", "scanned", SCANNED),
    ("gpt", 48, "none", "unrolled", UNROLLED),
    ("mlp", 2, "none", "auto", SCANNED),  # the plan chooses for gpt only
])
def test_the_choice(family, layers, remat, requested, expected):
    assert choose_layer_loop(family, layers, remat, requested, "cpu") == expected


@pytest.mark.parametrize("kind", ["h100", "a100-80g", "tpu-v5p", "tpu-v6e"])
def test_accelerators_keep_the_loop_unless_asked(kind):
    """Unrolling is measured faster on CPUs only; elsewhere auto keeps the program the estimate is validated on."""
    assert choose_layer_loop("gpt", 2, "none", "auto", kind) == SCANNED
    assert choose_layer_loop("gpt", 2, "none", "unrolled", kind) == UNROLLED


def test_an_accelerator_the_table_lacks_is_not_taken_for_a_cpu():
    from capidsl.plan.topology import _kind_of

    assert _kind_of("NVIDIA H100 80GB HBM3", "gpu") == "h100"
    assert _kind_of("NVIDIA B200", "gpu") == "unknown-gpu"
    assert choose_layer_loop("gpt", 2, "none", "auto", "unknown-gpu") == SCANNED


@pytest.mark.parametrize("family, remat, match", [
    ("gpt", "full", "cannot keep remat full's savings"),
    ("mlp", "none", "cannot unroll its layers"),
])
def test_what_cannot_run_is_refused(family, remat, match):
    with pytest.raises(LoopError, match=match):
        choose_layer_loop(family, 2, remat, "unrolled")


def shown(plan) -> str:
    from rich.console import Console

    console = Console(record=True, width=400)
    console.print(render(plan))
    return console.export_text()


def test_the_plan_shows_records_and_builds_it_as_layout(tiny):
    unrolled = compile_plan(tiny(), simulated("cpu", 1))
    scanned = compile_plan(tiny("training.layer_loop=scanned"), simulated("cpu", 1))
    assert (unrolled.model.layer_loop, scanned.model.layer_loop) == (UNROLLED, SCANNED)
    assert "layers unrolled" in shown(unrolled) and "layers scanned" in shown(scanned)
    assert unrolled.to_json()["model"]["layer_loop"] == UNROLLED and Plan.loads(unrolled.dumps()) == unrolled
    assert "layer_loop" not in scanned.to_json()["model"]  # a plan from before the field reads as scanned
    assert unrolled.fingerprint == scanned.fingerprint  # the same numbers: a resume may switch
    # a looping scan reads the largest layer tensor out of its stack as well: 3× it, where unrolled holds 2×
    work = [dict(p.memory.breakdown)["backward working set"] for p in (unrolled, scanned)]
    assert work[1] * 2 == work[0] * 3 and scanned.memory.temp > unrolled.memory.temp
    for plan, flag in ((unrolled, True), (scanned, False)):
        fam, cfg = model_family(plan)
        model = nnx.eval_shape(lambda: build_model(plan, fam, cfg, nnx.Rngs(0)))
        assert model.config.unroll_layers is flag


def test_an_impossible_request_names_its_recipe_key(tiny):
    with pytest.raises(PlanError) as err:
        compile_plan(tiny("training.remat=full", "training.layer_loop=unrolled"), simulated("cpu", 1))
    assert err.value.subject == "training.layer_loop" and "remat full" in err.value.message
