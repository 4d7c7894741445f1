"""Pruning schedules: parsing, canonical text, the checks, resolution to steps and exact sparsities."""

import json
from fractions import Fraction

import pytest

from capidsl.lang import LangError, parse_pruning
from capidsl.lang.ast import Cadence, Duration, PruningSchedule, ResolvedPruning, from_json
from capidsl.plan.frozen import from_jsonable, to_jsonable

ISSUE = "from 0% to 80% between 1k and 5k steps, every 100 steps"


def test_the_issue_example_parses_to_its_ast():
    p = parse_pruning(ISSUE)
    assert p == PruningSchedule(0, 80, Duration(1000, "steps"), Duration(5000, "steps"),
                                Cadence(Duration(100, "steps")), "cubic")
    assert str(p) == "from 0% to 80% between 1000 and 5000 steps, every 100 steps"
    assert parse_pruning(str(p)) == p and from_json(p.to_json()) == p


@pytest.mark.parametrize("text, canonical", [
    ("from 0% to 80% between 1k steps and 5k steps, every 100 steps", "from 0% to 80% between 1000 and 5000 steps, every 100 steps"),
    ("from 10% to 90% between 10% and 50%, every epoch, linear", "from 10% to 90% between 10% and 50%, every 1 epoch, linear"),
    ("from 10% to 90% between 10 and 50%", "from 10% to 90% between 10% and 50%, every 1 step"),
    ("from 0% to 50% between 0 and 2 epochs, every 20 steps, cubic", "from 0% to 50% between 0 and 2 epochs, every 20 steps"),
    ("from 0% to 50% between 100 steps and 2 epochs, every 1M tokens", "from 0% to 50% between 100 steps and 2 epochs, every 1M tokens"),
])
def test_spellings_print_one_way(text, canonical):
    p = parse_pruning(text)
    assert str(p) == canonical and parse_pruning(canonical) == p


@pytest.mark.parametrize("text, column, words", [
    ("from 0% to 100% between 1k and 5k steps", 12, "below 100%"),
    ("from 50% to 20% between 1k and 5k steps", 13, "pruning only grows"),
    ("from 0% to 80% between 5k and 1k steps", 31, "must end after it starts"),
    ("from 0% to 80% between 1k and 5k", 33, "needs a unit"),
    ("from 0% to 80% between 1k and 2h", 24, "not wall-clock time"),
    ("from 0% to 80% between 1.5 and 5 steps", 24, "not a whole number of steps"),
    ("from 0% to 80% between 1k and 5k steps, every 30s", 41, "not 30s"),
    ("from 0% to 80% btween 1k and 5k steps", 16, "unexpected `btween`"),
])
def test_errors_point_at_the_part(text, column, words):
    with pytest.raises(LangError) as err:
        parse_pruning(text)
    assert err.value.column == column and words in err.value.message, err.value.render()


def test_a_misspelt_keyword_gets_a_suggestion():
    with pytest.raises(LangError) as err:
        parse_pruning("from 0% to 80% btween 1k and 5k steps")
    assert err.value.hint == "did you mean between?"


def test_resolution_gives_events_and_exact_sparsities():
    r = parse_pruning(ISSUE).resolve(6000)
    assert r == ResolvedPruning(str(parse_pruning(ISSUE)), 0, 80, 1000, 5000, 100, "cubic")
    assert r.events() == tuple(range(1000, 5001, 100))
    assert r.sparsity_at(999) == 0 and r.sparsity_at(5000) == r.sparsity_at(5999) == Fraction(4, 5)
    assert r.sparsity_at(3000) == Fraction(4, 5) - Fraction(4, 5) / 8  # half way: 1 - (1/2)³ of the way
    linear = parse_pruning("from 20% to 60% between 0 and 300 steps, every 70 steps, linear").resolve(300)
    assert linear.events() == (70, 140, 210, 280, 300)  # never step 0; the end always
    assert linear.sparsity_at(150) == Fraction(2, 5)


def test_resolution_is_exact_or_an_error():
    assert parse_pruning("from 0% to 50% between 1 and 2 epochs, every 1 epoch").resolve(40, steps_per_epoch=10).events() == (10, 20)
    assert parse_pruning("from 0% to 50% between 10% and 50%, every 10 steps").resolve(200).events() == (20, 30, 40, 50, 60, 70, 80, 90, 100)
    with pytest.raises(LangError, match="pruning would end at step 5000, but training has only 4000 steps") as err:
        parse_pruning(ISSUE).resolve(4000)
    assert err.value.column == ISSUE.index("5k") + 1
    with pytest.raises(LangError, match="not a whole number of steps") as err:
        parse_pruning("from 0% to 50% between 0 and 1.5 epochs").resolve(100, steps_per_epoch=7)
    assert err.value.hint == "write 10 steps or 11 steps (no silent rounding)"


def test_resolved_through_the_plan_json():
    r = parse_pruning(ISSUE).resolve(6000)
    assert from_jsonable(ResolvedPruning, json.loads(json.dumps(to_jsonable(r)))) == r
    assert from_json(json.loads(json.dumps(r.to_json()))) == r


def test_explain_says_what_it_means():
    from capidsl.lang.explain import explain

    e = explain(ISSUE)
    assert e.kind == "pruning" and "growing to 80% at 5000 steps" in e.text and "every 100 steps" in e.text


def test_the_documented_examples_parse_and_the_documented_error_is_the_real_one():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()
    for text in (ISSUE, "from 0% to 90% between 10% and 50%, every 1 epoch, linear",
                 "from 0% to 50% between 0 and 2 epochs, every 20 steps"):
        assert text in doc
        parse_pruning(text).resolve(100_000, steps_per_epoch=1000)
    with pytest.raises(LangError) as err:
        parse_pruning(ISSUE).resolve(4000)
    assert err.value.render() in doc
