"""Resume on another layout, as plans see it: the mesh, micro-batch and accumulation are not the fingerprint, the
resume says what moved, and the global batch still may not change. The run itself, moved from 2 devices to 4,
is tests/e2e/test_resume_mesh_run.py."""

from __future__ import annotations

import dataclasses

import pytest
from plan_factory import make_plan

from capidsl.exec.errors import RunError
from capidsl.exec.resume import check_resume

TOTAL, MOVED_AT = 12, 6

HOME = {"mesh": {"data": 2}, "micro_batch": 4, "accumulation": 1}  # 2 devices, batch 8
AWAY = {"mesh": {"data": 2, "fsdp": 2, "tensor": 2}, "micro_batch": 1, "accumulation": 2}  # 8 devices, batch 8


def _plan(layout, **kw):
    plan = make_plan("gpt", total_steps=TOTAL, lr=3e-3, d_model=32, **layout, **kw)
    return dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=2, checkpoint_every=4))


def test_the_layout_is_not_the_fingerprint_and_resume_says_what_moved():
    home, away = _plan(HOME), _plan(AWAY)
    assert home.mesh != away.mesh and home.batch.global_batch == away.batch.global_batch == 8
    assert home.fingerprint == away.fingerprint  # the same run, laid out otherwise
    notes = check_resume(away, {"step": MOVED_AT, "fingerprint": home.fingerprint, "plan": home.to_json()})
    assert notes[:2] == ["layout: 2 → 8 devices, mesh data=2 × fsdp=1 × tensor=1 → data=2 × fsdp=2 × tensor=2 "
                         "(the state is restored into the new shardings)",
                         "batch 8 as micro 4 × accumulation 1 → micro 1 × accumulation 2"]
    bigger = _plan({**HOME, "micro_batch": 8})  # batch 16: another run
    assert bigger.fingerprint != home.fingerprint
    with pytest.raises(RunError, match=r"batch.global_batch: 8 → 16"):
        check_resume(bigger, {"step": MOVED_AT, "fingerprint": home.fingerprint, "plan": home.to_json()})


def test_a_plan_from_before_the_layer_loop_resumes_unrolled_and_says_so():
    """A checkpoint whose plan has no model.layer_loop (scanned, as every plan before the choice) resumes
    under an unrolled plan: the same numbers, the same fingerprint, one line saying what changed."""
    home = _plan(HOME)
    before = dataclasses.replace(home, model=dataclasses.replace(home.model, layer_loop="scanned"))
    unrolled = dataclasses.replace(home, model=dataclasses.replace(home.model, layer_loop="unrolled"))
    assert "layer_loop" not in before.to_json()["model"] and before.fingerprint == unrolled.fingerprint
    notes = check_resume(unrolled, {"step": MOVED_AT, "fingerprint": before.fingerprint, "plan": before.to_json()})
    assert notes == ["layers scanned → unrolled"]
