"""The loop's Judge: the stop rule and the best evaluation followed record by record, and what a
checkpoint keeps of them (the monitors' state, whose size does not grow with the run)."""

from __future__ import annotations

import dataclasses
import json

import fake_data
from jit_cache import compile_cache  # noqa: F401
from plan_factory import make_plan

from capidsl.exec.judge import Judge
from capidsl.exec.loop import run
from capidsl.lang import parse_stop_rule
from capidsl.lang.ast import Record
from capidsl.plan.plan import StopPlan


def _with_rule(plan, text, restore_best=False):
    rule = parse_stop_rule(text).resolve(plan.cadence.steps_per_epoch, plan.batch.tokens_per_step)
    return dataclasses.replace(plan, stop=StopPlan(rule=rule, restore_best=restore_best,
                                                   restore_metric="val_loss" if restore_best else None,
                                                   restore_mode="min"))


def _records():
    out = []
    for i in range(1, 41):
        out.append(Record(i, i * 0.1, "log", {"loss": 1 + (i * 37 % 11) / 10, "lr": 0.1, "grad_norm": 1.0}))
        if i % 3 == 0:
            out.append(Record(i, i * 0.1, "eval", {"val_loss": 1 + (i * 53 % 13) / 10}))
    return out


def test_the_judge_decides_and_ranks_as_a_replay_of_the_history_does():
    plan = _with_rule(make_plan("mlp", mesh={"data": 8}, total_steps=40),
                      "val_loss stalls for 4 evals by 0.05 or loss > 3", restore_best=True)
    judge, history = Judge(plan), []
    for record in _records():
        history.append(record)
        assert judge.observe(record) == plan.stop.rule.evaluate(history)
        evals = [r for r in history if r.kind == "eval"]
        assert judge.best() == plan.stop.rule.best(evals, "val_loss", "min")
    assert Judge.replay(plan, history).to_json() == judge.to_json()


def test_without_a_rule_best_is_the_plain_minimum_of_the_evaluations_first_on_ties():
    plan = dataclasses.replace(make_plan("mlp", mesh={"data": 8}, total_steps=40),
                               stop=StopPlan(rule=None, restore_best=True, restore_metric="val_loss", restore_mode="min"))
    judge = Judge(plan)
    for step, v in [(2, 3.0), (4, 1.5), (6, 1.5), (8, 2.0)]:
        assert not judge.observe(Record(step, 0.0, "eval", {"val_loss": v})).stop
    judge.observe(Record(9, 0.0, "log", {"val_loss": 0.1}))  # not an evaluation: not a candidate
    assert (judge.best().step, judge.best().value) == (4, 1.5)


def _meta(run_dir, step):
    folder = run_dir / "checkpoints" / str(step) / "meta"
    (path,) = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("_")]
    return json.loads(path.read_text())


def test_checkpoints_keep_the_judge_not_the_history_and_do_not_grow(tmp_path, monkeypatch):
    plan = _with_rule(make_plan("mlp", mesh={"data": 8}, total_steps=40), "val_loss stalls for 50 evals")
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=1, checkpoint_every=1,
                                                                   eval_every=2))
    fake_data.install(monkeypatch, plan)
    run(plan, tmp_path, max_steps=4)
    early = _meta(tmp_path, 4)
    s = run(plan, tmp_path)
    late = _meta(tmp_path, s.steps)
    assert s.steps == 40 and "history" not in late and late["judge"]["stop"]["records"] == 40 + 20
    assert len(json.dumps(late)) < 1.1 * len(json.dumps(early))  # 60 records vs 6: the same size
