"""One plan difference, named by the Plan's fields: the same names in `capidsl plan --diff` and in resume's refusal."""

from __future__ import annotations

import pytest

from capidsl.exec.errors import RunError
from capidsl.exec.resume import check_resume
from capidsl.plan.compile import compile_plan
from capidsl.plan.diff import json_diff, plan_diff
from capidsl.plan.topology import simulated


def test_changes_are_named_by_option_key_and_parameter_path(tiny):
    a = compile_plan(tiny(), simulated("cpu", 4))
    b = compile_plan(tiny("model.d_model=64", "mesh.data=2", "mesh.tensor=2"), simulated("cpu", 4))
    changes = {path: (x, y) for path, x, y in plan_diff(a, b)}
    assert changes["model.config.d_model"] == (32, 64)
    assert changes["mesh.shape"] == ([4, 1, 1], [2, 1, 2])  # a list of plain values: whole
    assert changes["sharding.params[blocks.attn.q.kernel].shape"] == ([2, 32, 32], [2, 64, 64])
    assert plan_diff(a, a) == []


def test_pair_tables_are_keyed_but_a_mesh_spec_is_not():
    old = {"model": {"config": [["d_model", 32], ["n_heads", 4]]},
           "sharding": {"params": [{"path": "w", "spec": [["data", "fsdp"]]}]}}
    new = {"model": {"config": [["d_model", 32], ["n_heads", 8], ["n_kv_heads", 2]]},
           "sharding": {"params": [{"path": "w", "spec": [["data"]]}, {"path": "v", "spec": [[]]}]}}
    assert json_diff(old, new) == [
        ("model.config.n_heads", 4, 8),
        ("model.config.n_kv_heads", None, 2),
        ("sharding.params[w].spec[0]", ["data", "fsdp"], ["data"]),
        ("sharding.params[v]", None, {"spec": [[]]}),
    ]


def test_resume_names_the_change_as_plan_diff_does(tiny):
    a = compile_plan(tiny(), simulated("cpu", 1))
    b = compile_plan(tiny("model.d_model=64"), simulated("cpu", 1))
    with pytest.raises(RunError) as err:
        check_resume(b, {"plan": a.to_json(), "fingerprint": a.fingerprint, "step": 4})
    assert "model.config.d_model: 32 → 64" in err.value.message
    assert ("model.config.d_model", 32, 64) in plan_diff(a, b)
