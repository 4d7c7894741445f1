"""training.trainable at plan time: the frozen paths, what they save in memory, the output, and located errors."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from capidsl.cli.main import main
from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import Plan
from capidsl.plan.render import render
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe, RecipeError

ATTENTION = 'training.trainable=["blocks.attn", "final_norm.*"]'
# the tiny recipe of tests/plan/conftest.py with the key written in the file, for the errors' line:column
LISTED = """name: listed
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64}
data: {source: synthetic, synthetic_examples: 512}
training:
  batch_size: 16
  duration: "4 steps"
  trainable:
    - blocks.attn
    - blocks.atn.*
"""


def _plan(tiny, *overrides: str) -> Plan:
    return compile_plan(tiny(*overrides), simulated("cpu", 1))


def _bytes(plan: Plan, frozen: bool) -> int:
    return sum(p.bytes_per_device for p in plan.sharding.params if (p.path in plan.optimizer.frozen) == frozen)


def test_absent_or_all_matching_patterns_plan_exactly_what_the_recipe_did_before(tiny):
    before = _plan(tiny)
    everything = _plan(tiny, 'training.trainable=["*"]')
    assert before.optimizer.frozen == () and "frozen" not in before.to_json()["optimizer"]
    assert everything.dumps() == before.dumps() and everything.fingerprint == before.fingerprint
    frozen = _plan(tiny, ATTENTION)
    assert frozen.fingerprint != before.fingerprint  # a different run: no resume across it
    assert Plan.loads(frozen.dumps()) == frozen and Plan.loads(before.dumps()) == before


def test_patterns_glob_over_dotted_paths_and_name_modules(tiny):
    paths = [p.path for p in _plan(tiny).sharding.params]
    frozen = _plan(tiny, ATTENTION).optimizer.frozen
    # `blocks.attn` names a module (not blocks.attn_norm); `final_norm.*` crosses into the parameters
    assert set(frozen) == {p for p in paths if not p.startswith(("blocks.attn.", "final_norm."))}
    assert "blocks.attn_norm.scale" in frozen and "wte.embedding" in frozen
    assert list(frozen) == [p for p in paths if p in frozen]  # the table's order
    biases = _plan(tiny, 'training.trainable=["*.bias"]').optimizer.frozen  # `*` crosses dots
    assert set(paths) - set(biases) == {p for p in paths if p.endswith(".bias")}


def test_memory_counts_moments_and_gradients_of_trained_parameters_only(tiny):
    full, part = _plan(tiny).memory, _plan(tiny, ATTENTION)
    plan, m = part, part.memory
    frozen_bytes, trained_bytes = _bytes(plan, True), _bytes(plan, False)
    assert frozen_bytes > trained_bytes > 0
    assert m.params == full.params == frozen_bytes + trained_bytes  # frozen weights are still held
    assert (full.opt_state, m.opt_state) == (2 * (frozen_bytes + trained_bytes), 2 * trained_bytes)  # adamw: 2 moments
    assert (full.grads, m.grads) == (frozen_bytes + trained_bytes, trained_bytes)  # float32 parameters
    saved = dict(full.breakdown)["optimizer copy"] - dict(m.breakdown)["optimizer copy"]
    assert saved == 2 * frozen_bytes and full.total - m.total == 2 * frozen_bytes + frozen_bytes + saved


def _printed(plan: Plan) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(render(plan))
    return console.export_text()


def test_plan_output_shows_trainable_and_frozen_parameters(tiny):
    plan = _plan(tiny, ATTENTION)
    text = _printed(plan)
    sizes = {p.path: math.prod(p.shape) for p in plan.sharding.params}
    frozen = sum(n for path, n in sizes.items() if path in plan.optimizer.frozen)
    trained = sum(sizes.values()) - frozen
    assert (f"parameters {trained / 1e3:.2f}k trainable ({_kib(trained)}), {frozen / 1e3:.2f}k frozen "
            f"({_kib(frozen)}; {len(plan.optimizer.frozen)} of {len(sizes)} tensors") in text, text
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines() if line.split() and line.split()[0] in sizes}
    assert rows == {path: "frozen" if path in plan.optimizer.frozen else "yes" for path in sizes}, text
    assert "trainable" not in _printed(_plan(tiny))  # nothing frozen: the output of before


def _kib(params: int) -> str:
    return f"{params * np.dtype('float32').itemsize / 1024:.2f} KiB"


def test_pruning_leaves_frozen_weights_alone(tiny):
    prune = 'pruning.schedule=from 0% to 50% between 0 and 20 steps, every 10 steps'
    everything = _plan(tiny, prune).pruning.params
    plan = _plan(tiny, prune, ATTENTION)
    assert set(plan.pruning.params) == set(everything) - set(plan.optimizer.frozen)
    assert plan.pruning.params and all(p.startswith("blocks.attn.") for p in plan.pruning.params)
    masks = sum(p.bytes_per_device // 4 for p in plan.sharding.params if p.path in plan.pruning.params)
    assert plan.memory.state == masks  # one bool per pruned weight, trained weights only


def test_a_pattern_that_matches_nothing_is_an_error_at_its_list_item():
    with pytest.raises(PlanError) as err:
        compile_plan(Recipe.from_text(LISTED, name="listed.yaml"), simulated("cpu", 1))
    text = err.value.render()
    assert text.startswith("listed.yaml:9:7: training.trainable[1]: 'blocks.atn.*' matches no parameter of this model"), text
    assert "hint: did you mean 'blocks.attn.*'?" in text and "wte.embedding" in text  # a few paths to choose from


def test_an_empty_list_is_an_error_at_the_key(tiny):
    with pytest.raises(PlanError) as err:
        _plan(tiny, "training.trainable=[]")
    assert err.value.render().startswith("<--set training.trainable=[]>:1:") and "no parameter would train" in \
        err.value.render()


def test_a_pattern_must_be_a_string_list_at_validation(tiny):
    with pytest.raises(RecipeError) as err:
        tiny("training.trainable=blocks.attn")
    assert "training.trainable: expected a list or null, got the string 'blocks.attn'" in err.value.render()


def test_capidsl_plan_reports_a_bad_pattern_without_a_traceback(tmp_path, capsys):
    recipe = tmp_path / "listed.yaml"
    recipe.write_text(LISTED)
    assert main(["plan", str(recipe), "--devices", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{recipe}:9:7: training.trainable[1]: 'blocks.atn.*' matches no parameter"), err
    assert "Traceback" not in err
