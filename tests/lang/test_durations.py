"""Numbers, durations and cadences: parsing, canonical printing, exact conversion to steps."""

import pytest

from capidsl.lang import LangError, parse_cadence, parse_duration
from capidsl.lang.ast import Cadence, Duration
from capidsl.lang.numbers import format_number, read_number


@pytest.mark.parametrize("literal, value", [
    ("3e-4", 3e-4), ("1_000", 1000), ("20k", 20_000), ("1.5M", 1_500_000), ("2B", 2_000_000_000),
    ("0.5", 0.5), ("1e3", 1000), ("-2", -2), ("2.5e-5", 2.5e-5),
])
def test_read_number(literal, value):
    got = read_number(literal)
    assert got == value
    assert isinstance(got, int) == float(value).is_integer()


@pytest.mark.parametrize("value, text", [
    (20_000, "20k"), (2_500_000, "2.5M"), (1000, "1000"), (12_345, "12345"), (3e-4, "3e-4"),
    (3e-5, "3e-5"), (0.5, "0.5"), (1.5e-3, "1.5e-3"), (0, "0"), (5.0, "5"), (0.01, "0.01"),
])
def test_format_number(value, text):
    assert format_number(value) == text
    assert read_number(text) == value


@pytest.mark.parametrize("text, value, unit, canonical", [
    ("500 steps", 500, "steps", "500 steps"),
    ("1 step", 1, "steps", "1 step"),
    ("3 epochs", 3, "epochs", "3 epochs"),
    ("0.5 epoch", 0.5, "epochs", "0.5 epochs"),
    ("2.5M tokens", 2_500_000, "tokens", "2.5M tokens"),
    ("20k steps", 20_000, "steps", "20k steps"),
    ("1_000 steps", 1000, "steps", "1000 steps"),
    ("90m", 5400, "seconds", "90m"),
    ("90 minutes", 5400, "seconds", "90m"),
    ("2h", 7200, "seconds", "2h"),
    ("1.5h", 5400, "seconds", "90m"),
    ("30s", 30, "seconds", "30s"),
    ("90s", 90, "seconds", "90s"),
])
def test_parse_duration(text, value, unit, canonical):
    d = parse_duration(text)
    assert d == Duration(value, unit)
    assert str(d) == canonical
    assert parse_duration(str(d)) == d
    assert Duration.from_json(d.to_json()) == d


def test_duration_to_steps_is_exact():
    assert parse_duration("500 steps").to_steps() == 500
    assert parse_duration("3 epochs").to_steps(steps_per_epoch=100) == 300
    assert parse_duration("0.5 epochs").to_steps(steps_per_epoch=100) == 50
    assert parse_duration("2.5M tokens").to_steps(tokens_per_step=2500) == 1000
    assert parse_duration("0.1 epochs").to_steps(steps_per_epoch=30) == 3  # not 3.0000000000000004


def test_fractional_steps_name_floor_and_ceil():
    with pytest.raises(LangError) as err:
        parse_duration("1.5 epochs").to_steps(steps_per_epoch=101)
    e = err.value
    assert "151.5 steps" in e.message and "101 steps per epoch" in e.message
    assert "151 steps" in e.hint and "152 steps" in e.hint
    assert e.column == 1 and e.text == "1.5 epochs"

    with pytest.raises(LangError) as err:
        parse_duration("1M tokens").to_steps(tokens_per_step=4096)
    assert "244 steps" in err.value.hint and "245 steps" in err.value.hint


def test_to_steps_needs_the_run():
    with pytest.raises(LangError, match="steps per epoch"):
        parse_duration("3 epochs").to_steps()
    with pytest.raises(LangError, match="tokens per step"):
        parse_duration("3 tokens").to_steps(steps_per_epoch=4)
    with pytest.raises(LangError, match="wall-clock"):
        parse_duration("2h").to_steps(100, 100)


@pytest.mark.parametrize("text, message, column", [
    ("2.5 steps", "whole numbers", 1),
    ("0 steps", "positive", 1),
    ("5", "unexpected end of the duration", 2),
    ("5 stps", "unexpected `stps`", 3),
    ("five steps", "unexpected `five`", 1),
])
def test_duration_errors(text, message, column):
    with pytest.raises(LangError) as err:
        parse_duration(text)
    assert message in err.value.message
    assert err.value.column == column


def test_unit_typo_suggests_the_unit():
    with pytest.raises(LangError) as err:
        parse_duration("5 stps")
    assert err.value.hint == "did you mean steps?"
    assert "a unit" in err.value.expected


@pytest.mark.parametrize("text, every, canonical", [
    ("every 1000 steps", Duration(1000, "steps"), "every 1000 steps"),
    ("every 1 epoch", Duration(1, "epochs"), "every 1 epoch"),
    ("every epoch", Duration(1, "epochs"), "every 1 epoch"),
    ("every 10 epochs", Duration(10, "epochs"), "every 10 epochs"),
    ("every 30m", Duration(1800, "seconds"), "every 30m"),
    ("every hour", Duration(3600, "seconds"), "every 1h"),
])
def test_parse_cadence(text, every, canonical):
    c = parse_cadence(text)
    assert c == Cadence(every)
    assert str(c) == canonical
    assert parse_cadence(str(c)) == c
    assert Cadence.from_json(c.to_json()) == c


def test_cadence_to_steps():
    assert parse_cadence("every 2 epochs").to_steps(steps_per_epoch=50) == 100
    with pytest.raises(LangError) as err:
        parse_cadence("every 0.3 epochs").to_steps(steps_per_epoch=5)
    assert err.value.column == 7  # the duration inside "every 0.3 epochs"
    assert "1 steps or 2 steps" in err.value.hint
