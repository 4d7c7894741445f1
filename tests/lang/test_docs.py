"""The examples in docs/language.md parse, and their rendered errors match the text shown."""

from pathlib import Path

import pytest

from capidsl.lang import LangError, parse_duration, parse_schedule, parse_stop_rule

DOC = (Path(__file__).resolve().parents[2] / "docs" / "language.md").read_text()

SCHEDULES = [
    "linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)",
    "linear(0 -> 1e-3, 4k steps) then inverse_sqrt(1e-3, rest)",
    "wsd(3e-4, warmup 2k steps, decay 20%)",
    "linear(0 -> 1e-3, 1 epoch) then exponential(1e-3 -> 1e-5, 10 epochs) then constant(1e-5, rest)",
    "cosine(1e-3 -> 0, 1000 steps) then jump to cosine(1e-3 -> 0, 2000 steps) then jump to constant(1e-4, rest)",
]


@pytest.mark.parametrize("text", SCHEDULES)
def test_schedule_examples(text):
    assert text in DOC
    parse_schedule(text).resolve(100_000, steps_per_epoch=1000, tokens_per_step=1)


@pytest.mark.parametrize("make, shown", [
    (lambda: parse_duration("1.5 epochs").to_steps(steps_per_epoch=101), None),
    (lambda: parse_schedule("linear(0 -> 3e-4, 500 steps) then cosine(1e-4 -> 3e-5, rest)"), None),
    (lambda: parse_schedule("linear(0 -> 3e-4, 500 stps) then cosine(3e-4 -> 3e-5, rest)"), None),
])
def test_rendered_errors_are_the_ones_documented(make, shown):
    with pytest.raises(LangError) as err:
        make()
    assert err.value.render() in DOC


def test_stop_examples():
    for text in ("val_loss stalls for 5 evals by 1e-3 or not finite(loss)", "loss > 10 * best(loss)",
                 "time >= 6h", "steps >= 20k", "val_loss < 1.2"):
        assert text in DOC
        parse_stop_rule(text)
