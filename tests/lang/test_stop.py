"""Stop rules: parsing, directions, Keras/Lightning early-stopping semantics, reasons, best."""

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from capidsl.lang import LangError, parse_stop_rule
from capidsl.lang.ast import (
    AllOf, AnyOf, Best, BestOf, Compare, Const, Decision, Finite, Latest, Not, Progress, Record,
    Stalls, StopRule, from_json,
)


def evals(values, every=100, metric="val_loss", start=None):
    """Eval records at steps every, 2*every, ... (time: one second per step)."""
    return tuple(Record(every * (i + 1), float(every * (i + 1)), "eval", {metric: v}) for i, v in enumerate(values))


def test_seed_patience_sugar_is_the_same_object():
    a = parse_stop_rule("val_loss stalls for 5 evals")
    assert a == parse_stop_rule(f"val_loss stalls for {5} evals")
    assert a == StopRule(Stalls("val_loss", 5, "evals", 0, None, "min"))
    assert a == parse_stop_rule(str(a)) and hash(a) == hash(parse_stop_rule(str(a)))
    assert a == parse_stop_rule("val_loss  stalls  for 5 eval")
    assert a == from_json(a.to_json()) == StopRule.from_json(a.to_json())


def test_parses_the_issue_examples():
    r = parse_stop_rule("val_loss stalls for 5 evals by 1e-3 or not finite(loss)")
    assert r.expr == AnyOf((Stalls("val_loss", 5, "evals", 1e-3, None, "min"), Not(Finite("loss"))))
    assert parse_stop_rule("loss > 10 * best(loss)").expr == Compare(Latest("loss"), ">", BestOf("loss", "min", 10))
    assert parse_stop_rule("steps >= 20k and time >= 6h").expr == AllOf(
        (Progress("steps", ">=", 20_000), Progress("time", ">=", 21_600)))
    assert parse_stop_rule("val_loss < 1.2").expr == Compare(Latest("val_loss"), "<", Const(1.2))
    assert parse_stop_rule("epochs >= 3").expr == Progress("epochs", ">=", 3)
    assert parse_stop_rule("val_loss stalls for 2000 steps").expr == Stalls("val_loss", 2000, "steps")
    assert parse_stop_rule("val_loss stalls for 5 evals by 1e-3 from 2.0").expr == Stalls(
        "val_loss", 5, "evals", 1e-3, 2.0, "min")


def test_precedence_not_and_or():
    r = parse_stop_rule("not a < 1 and b < 2 or c < 3", directions=None)
    a, b, c = (Compare(Latest(m), "<", Const(v)) for m, v in (("a", 1), ("b", 2), ("c", 3)))
    assert r.expr == AnyOf((AllOf((Not(a), b)), c))
    r2 = parse_stop_rule("not (a < 1 and (b < 2 or c < 3))")
    assert r2.expr == Not(AllOf((a, AnyOf((b, c)))))
    assert str(r2) == "not (a < 1 and (b < 2 or c < 3))"
    assert parse_stop_rule("(a < 1 or b < 2) or c < 3") == parse_stop_rule("a < 1 or b < 2 or c < 3")


def test_directions():
    assert parse_stop_rule("val_accuracy stalls for 3 evals").expr.mode == "max"
    with pytest.raises(LangError) as err:
        parse_stop_rule("loss < 1 or score stalls for 3 evals")
    assert err.value.column == 13 and "higher or a lower score" in err.value.message
    assert "did you mean" not in (err.value.hint or "")
    with pytest.raises(LangError) as err:  # a misspelt metric is most likely a typo, not a new metric
        parse_stop_rule("val_los stalls for 3 evals")
    assert err.value.hint.startswith("did you mean val_loss?")
    r = parse_stop_rule("score stalls for 3 evals", directions={"score": "max"})
    assert r.expr.mode == "max"
    assert str(r) == "score stalls for 3 evals mode max"
    assert parse_stop_rule(str(r)) == r
    # an explicit mode against the table is printed, and kept
    r = parse_stop_rule("val_loss stalls for 3 evals mode max")
    assert r.expr.mode == "max" and str(r) == "val_loss stalls for 3 evals mode max"
    assert str(parse_stop_rule("val_loss stalls for 3 evals mode min")) == "val_loss stalls for 3 evals"


def test_unknown_metric_suggests_the_nearest():
    with pytest.raises(LangError) as err:
        parse_stop_rule("val_loss stalls for 5 evals or not finite(los)", metrics=("loss", "val_loss"))
    e = err.value
    assert e.column == 43 and e.hint == "did you mean loss?" and "loss, val_loss" in e.expected
    assert "^" in e.render()


@pytest.mark.parametrize("text, column, expected", [
    ("val_loss < ", 11, "a number, a metric name"),
    ("val_loss stalls for 5", 22, "a patience unit"),
    ("val_loss stalls 5 evals", 17, "`for`"),
    ("val_loss < 1.2 an loss > 3", 16, "`and`"),
    ("(val_loss < 1.2", 16, "`)`"),
    ("time >= 6", 9, "wall-clock"),
])
def test_syntax_errors(text, column, expected):
    with pytest.raises(LangError) as err:
        parse_stop_rule(text)
    e = err.value
    assert e.column == column, e.render()
    assert expected in (e.expected or "") + e.message, e.render()


# ---- evaluation ---------------------------------------------------------------------------


def test_stall_reason_names_the_clause_and_the_best():
    rule = parse_stop_rule("val_loss stalls for 5 evals")
    values = [3.0, 2.5, 2.2, 2.0, 1.9, 1.873, 1.9, 1.88, 1.875, 1.874, 1.95]
    history = evals(values, every=150)
    assert rule.evaluate(history[:10]) == Decision(False, "")
    d = rule.evaluate(history[:11])
    assert d.stop
    assert d.reason == "stopped at step 1650: val_loss stalled for 5 evals (best 1.873 at step 900)"


def test_min_delta_must_be_beaten_strictly():
    rule = parse_stop_rule("val_loss stalls for 2 evals by 0.1")
    # 1.9 is only 0.1 better than 2.0: not an improvement (Keras: current < best - min_delta)
    assert rule.evaluate(evals([2.0, 1.9, 1.95])).stop
    assert not rule.evaluate(evals([2.0, 1.89, 1.95])).stop


def test_baseline_must_be_beaten():
    rule = parse_stop_rule("val_loss stalls for 3 evals from 2.0")
    assert not rule.evaluate(evals([2.5, 2.4])).stop
    d = rule.evaluate(evals([2.5, 2.4, 2.3]))
    assert d.stop and "never beat the baseline 2" in d.reason
    assert not rule.evaluate(evals([2.5, 2.4, 1.9])).stop


def test_patience_counts_evals_not_logs():
    rule = parse_stop_rule("val_loss stalls for 2 evals")
    history = (
        Record(10, 1.0, "eval", {"val_loss": 1.0}),
        Record(20, 2.0, "log", {"loss": 1.0}),
        Record(30, 3.0, "log", {"loss": 1.0}),
        Record(40, 4.0, "eval", {"val_loss": 1.0}),
    )
    assert not rule.evaluate(history).stop
    assert rule.evaluate(history + (Record(50, 5.0, "eval", {"val_loss": 1.5}),)).stop


def test_patience_in_steps():
    rule = parse_stop_rule("val_loss stalls for 300 steps")
    h = evals([2.0, 1.0, 1.5, 1.5], every=100)  # best at step 200; last eval at 400
    assert not rule.evaluate(h).stop
    d = rule.evaluate(h + evals([1.5], every=500))
    assert d.stop and "stalled for 300 steps (best 1 at step 200)" in d.reason


def test_patience_in_epochs_needs_resolution():
    rule = parse_stop_rule("val_loss stalls for 2 epochs")
    h = evals([2.0, 2.0, 2.0], every=100)
    with pytest.raises(LangError, match="resolve"):
        rule.evaluate(h)
    assert rule.resolve(steps_per_epoch=100).evaluate(h).stop
    assert not rule.resolve(steps_per_epoch=150).evaluate(h).stop


def test_mode_max():
    rule = parse_stop_rule("val_accuracy stalls for 2 evals by 0.01")
    assert not rule.evaluate(evals([0.5, 0.6, 0.605], metric="val_accuracy")).stop
    assert rule.evaluate(evals([0.5, 0.6, 0.605, 0.609], metric="val_accuracy")).stop


def test_divergence_and_finite():
    rule = parse_stop_rule("not finite(loss) or loss > 10 * best(loss)")
    logs = lambda vs: tuple(Record(i + 1, 0.0, "log", {"loss": v}) for i, v in enumerate(vs))
    assert not rule.evaluate(logs([5.0, 2.0, 19.0])).stop
    d = rule.evaluate(logs([5.0, 2.0, 21.0]))
    assert d.reason == "stopped at step 3: loss > 10 * best(loss) (loss = 21 at step 3, best loss 2 at step 2)"
    d = rule.evaluate(logs([5.0, math.nan]))
    assert d.stop and d.reason == "stopped at step 2: loss is not finite (nan at step 2)"


def test_threshold_and_progress():
    rule = parse_stop_rule("val_loss < 1.2 or steps >= 20k or time >= 6h")
    assert not rule.evaluate(evals([1.5])).stop
    assert rule.evaluate(evals([1.5, 1.1])).reason == "stopped at step 200: val_loss < 1.2 (val_loss = 1.1 at step 200)"
    assert rule.evaluate((Record(20_000, 10.0, "log", {}),)).reason == "stopped at step 20000: steps >= 20k (step 20000)"
    assert rule.evaluate((Record(7, 21_600.0, "log", {}),)).stop


def test_epochs_and_tokens_progress():
    rule = parse_stop_rule("epochs >= 2.5 or tokens >= 1M").resolve(steps_per_epoch=100, tokens_per_step=4096)
    assert not rule.evaluate((Record(244, 0.0, "log", {}),)).stop
    assert rule.evaluate((Record(245, 0.0, "log", {}),)).reason.startswith("stopped at step 245: tokens >= 1M")
    rule = parse_stop_rule("epochs >= 2.5").resolve(steps_per_epoch=100)
    assert rule.evaluate((Record(250, 0.0, "log", {}),)).stop
    assert rule != parse_stop_rule("epochs >= 2.5")  # resolution is part of the value
    assert from_json(rule.to_json()) == rule


def test_and_reason_names_every_clause():
    rule = parse_stop_rule("val_loss < 2 and steps >= 200")
    assert rule.evaluate(evals([1.5, 1.5])).reason == (
        "stopped at step 200: val_loss < 2 (val_loss = 1.5 at step 200) and steps >= 200 (step 200)")


def test_empty_history_never_stops():
    assert parse_stop_rule("not finite(loss)").evaluate(()) == Decision(False, "")
    assert not parse_stop_rule("not finite(loss)").evaluate(evals([1.0])).stop  # loss not measured yet


def test_best_follows_the_stalls_clause():
    rule = parse_stop_rule("val_loss stalls for 5 evals by 0.1 or not finite(loss)")
    h = evals([2.0, 1.5, 1.45, 1.42])
    assert rule.best(h, "val_loss") == Best("val_loss", 200, 1.5)  # 1.45, 1.42: not by more than 0.1
    assert rule.best(h, "val_loss", mode="min") == Best("val_loss", 200, 1.5)
    plain = parse_stop_rule("steps >= 10")
    assert plain.best(h, "val_loss") == Best("val_loss", 400, 1.42)
    assert plain.best((), "val_loss") is None
    with pytest.raises(LangError):
        plain.best(h, "score")


# ---- the same decisions as Keras' EarlyStopping -------------------------------------------


def keras_stop_epoch(values, patience, min_delta, baseline, mode):
    """A transcription of keras.callbacks.EarlyStopping (Keras 2: best starts at the baseline)."""
    sign = 1 if mode == "max" else -1
    md = min_delta * sign
    better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
    best = baseline if baseline is not None else (-math.inf if mode == "max" else math.inf)
    wait = 0
    for epoch, current in enumerate(values):
        wait += 1
        if better(current - md, best):
            best, wait = current, 0
        if wait >= patience:
            return epoch
    return None


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(0, 3, allow_nan=False).map(lambda x: round(x, 2)), min_size=1, max_size=25),
    patience=st.integers(1, 6),
    min_delta=st.sampled_from([0, 0.01, 0.1, 0.25]),
    baseline=st.none() | st.sampled_from([1.0, 2.0]),
    mode=st.sampled_from(["min", "max"]),
)
@example(values=[0.26, 1.0, 1.0, 0.01], patience=3, min_delta=0.25, baseline=None, mode="min")  # a rounding boundary
def test_matches_keras_early_stopping(values, patience, min_delta, baseline, mode):
    rule = StopRule(Stalls("m", patience, "evals", min_delta, baseline, mode))
    history = evals(values, metric="m")
    ours = next((i for i in range(len(values)) if rule.evaluate(history[: i + 1]).stop), None)
    assert ours == keras_stop_epoch(values, patience, min_delta, baseline, mode)


# ---- the incremental monitor agrees with the pure evaluation ------------------------------

from .strategies import stop_rules  # noqa: E402

_records = st.builds(
    lambda dt, kind, metrics: (dt, kind, metrics),
    st.integers(1, 50),
    st.sampled_from(["eval", "log"]),
    st.dictionaries(st.sampled_from(["loss", "val_loss", "val_accuracy", "perplexity", "score", "train/ce", "acc_top5"]),
                    st.floats(-5, 5) | st.just(math.nan) | st.just(math.inf), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(stop_rules, st.lists(_records, max_size=30))
def test_monitor_agrees_with_evaluate(rule, raw):
    rule = rule.resolve(steps_per_epoch=7, tokens_per_step=3)
    history, step = [], 0
    for dt, kind, metrics in raw:
        step += dt
        history.append(Record(step, step * 0.5, kind, metrics))
    monitor = rule.monitor()
    for i, record in enumerate(history):
        assert monitor.observe(record) == rule.evaluate(tuple(history[: i + 1]))


def test_columns_count_the_whole_text_across_lines():
    text = "val_loss < 1 and\n  loss > 2 an"
    with pytest.raises(LangError) as err:
        parse_stop_rule(text)
    assert text[err.value.column - 1:].startswith("an")
    assert err.value.render().splitlines()[1:3] == ["    loss > 2 an", "             ^"]


@settings(max_examples=150, deadline=None)
@given(stop_rules, st.lists(_records, max_size=30), st.data())
def test_a_monitor_saved_and_restored_anywhere_decides_as_one_that_never_stopped(rule, raw, data):
    """What a checkpoint keeps is the monitor's JSON: restored at any record, through a JSON text,
    it gives every later decision and best value exactly as the monitor that ran straight through."""
    import json

    from capidsl.lang.monitor import StopMonitor

    rule = rule.resolve(steps_per_epoch=7, tokens_per_step=3)
    history, step = [], 0
    for dt, kind, metrics in raw:
        step += dt
        history.append(Record(step, step * 0.5, kind, metrics))
    cut = data.draw(st.integers(0, len(history)))
    straight, saved = rule.monitor(), rule.monitor()
    for record in history[:cut]:
        straight.add(record)
        saved.add(record)
    resumed, notes = StopMonitor.from_json(rule, json.loads(json.dumps(saved.to_json(), allow_nan=False)))
    assert notes == []
    for record in history[cut:]:
        assert resumed.observe(record) == straight.observe(record)
    for metric in rule.metrics():
        for mode in ("min", "max"):
            assert resumed.best(metric, mode) == straight.best(metric, mode)


def test_the_saved_state_does_not_grow_with_the_history():
    rule = parse_stop_rule("val_loss stalls for 5 evals by 0.001 or not finite(loss)").resolve(10, 1)
    sizes = []
    for n in (10, 10_000):
        monitor = rule.monitor()
        for i in range(n):
            monitor.add(Record(i, float(i), "log", {"loss": 1.0 / (i + 1), "lr": 0.1, "grad_norm": 2.0}))
            monitor.add(Record(i, float(i), "eval", {"val_loss": 1.0 / (i + 1)}))
        sizes.append(len(str(monitor.to_json())))
    assert sizes[1] < 1.2 * sizes[0]  # longer step numbers and floats; nothing per record (1,000× the records)


def test_a_changed_rule_keeps_the_clauses_it_shares_and_says_which_start_counting_now():
    from capidsl.lang.monitor import StopMonitor

    old = parse_stop_rule("val_loss stalls for 3 evals").resolve(10, 1)
    new = parse_stop_rule("val_loss stalls for 3 evals or val_accuracy stalls for 2 evals").resolve(10, 1)
    monitor = old.monitor()
    for i, v in enumerate([3.0, 2.0, 2.5, 2.6]):
        monitor.add(Record(i + 1, float(i), "eval", {"val_loss": v, "val_accuracy": 0.5}))
    resumed, notes = StopMonitor.from_json(new, monitor.to_json())
    assert notes == ["`val_accuracy stalls for 2 evals` is new: its patience and its best value count from this resume"]
    assert not resumed.decide().stop
    decision = resumed.observe(Record(5, 5.0, "eval", {"val_loss": 2.7, "val_accuracy": 0.6}))
    assert decision.stop and "val_loss stalled for 3 evals" in decision.reason  # the carried count: 3 evals since step 2


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 3, allow_nan=False).map(lambda x: round(x, 2)), min_size=1, max_size=20),
       st.integers(1, 6), st.integers(1, 6), st.sampled_from([0, 0.1]), st.data())
def test_a_changed_patience_resumes_exactly_as_a_replay_under_the_new_rule(values, before, after, by, data):
    """Patience is not part of a clause's bookkeeping: changing it on resume loses nothing, the
    decisions and the best value are those of the whole history replayed under the new rule."""
    from capidsl.lang.monitor import StopMonitor

    old = StopRule(Stalls("val_loss", before, "evals", by))
    new = StopRule(Stalls("val_loss", after, "evals", by))
    history = evals(values)
    cut = data.draw(st.integers(0, len(history)))
    monitor = old.monitor()
    for record in history[:cut]:
        monitor.add(record)
    resumed, notes = StopMonitor.from_json(new, monitor.to_json())
    assert notes == []
    for i in range(cut, len(history)):
        assert resumed.observe(history[i]) == new.evaluate(history[: i + 1])
    assert resumed.best("val_loss") == new.best(history, "val_loss")
