"""Every AST prints to a canonical text that parses back to it, and survives JSON (and the Plan's JSON)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capidsl.lang import parse_cadence, parse_duration, parse_pruning, parse_schedule, parse_stop_rule
from capidsl.lang.ast import ResolvedSchedule, Rest, StopRule, from_json
from capidsl.plan.frozen import from_jsonable, to_jsonable

from .strategies import cadences, durations, pruning_schedules, schedules, short_lengths, stop_rules


def _json(x):
    return from_json(json.loads(json.dumps(x.to_json(), allow_nan=False)))


@settings(deadline=None)
@given(durations)
def test_duration_roundtrip(d):
    assert parse_duration(str(d)) == d
    assert _json(d) == d


@settings(deadline=None)
@given(cadences)
def test_cadence_roundtrip(c):
    assert parse_cadence(str(c)) == c
    assert _json(c) == c


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_schedule_roundtrip(s):
    text = str(s)
    again = parse_schedule(text)
    assert again == s, text
    assert str(again) == text  # canonical: printing is a fixed point
    assert _json(s) == s


@settings(max_examples=300, deadline=None)
@given(stop_rules)
def test_stop_rule_roundtrip(rule):
    text = str(rule)
    again = parse_stop_rule(text)
    assert again == rule, text
    assert str(again) == text
    assert _json(rule) == rule


@settings(max_examples=300, deadline=None)
@given(pruning_schedules())
def test_pruning_schedule_roundtrip(p):
    text = str(p)
    again = parse_pruning(text)
    assert again == p, text
    assert str(again) == text
    assert _json(p) == p


@settings(max_examples=100, deadline=None)
@given(schedules(max_pieces=4, lengths=short_lengths), st.integers(1, 50))
def test_resolved_schedule_roundtrip_and_continuity(s, spare):
    # a run long enough for the fixed pieces, with 1 step per epoch and per token
    fixed = 0
    for p in s.pieces:
        for d in ([p.warmup, p.decay] if hasattr(p, "warmup") else [p.length]):
            if hasattr(d, "unit"):
                fixed += d.value if d.unit != "epochs" else d.value * 8
    open_ended = isinstance(s.pieces[-1].length, Rest)
    r = s.resolve(int(fixed) + (spare if open_ended else 0), steps_per_epoch=8, tokens_per_step=1)
    assert _json(r) == r
    assert from_jsonable(ResolvedSchedule, json.loads(json.dumps(to_jsonable(r)))) == r
    assert r.pieces[0].start_step == 0 and r.pieces[-1].end_step == r.total_steps
    breaks = 0
    for a, b in zip(r.pieces, r.pieces[1:]):
        assert a.end_step == b.start_step
        breaks += b.init_value != pytest.approx(a.end_value, rel=1e-9)
    assert breaks <= sum(s.jumps)  # every discontinuity was written `then jump to`


def test_stop_rule_through_the_plan_json():
    from capidsl.plan.plan import StopPlan

    plan = StopPlan(rule=parse_stop_rule("val_loss stalls for 5 evals or not finite(loss)"),
                    restore_best=True, restore_metric="val_loss", restore_mode="min")
    again = from_jsonable(StopPlan, json.loads(json.dumps(to_jsonable(plan))))
    assert again == plan and isinstance(again.rule, StopRule)
