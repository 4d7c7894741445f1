"""`capidsl explain`: words for every kind of expression, and a plot for schedules."""

import pytest

from capidsl.cli.main import main
from capidsl.lang import LangError
from capidsl.lang.explain import explain


@pytest.mark.parametrize("text, kind, words", [
    ("500 steps", "duration", "500 optimizer steps"),
    ("3 epochs", "duration", "passes over the training data"),
    ("every 1000 steps", "cadence", "once every 1000 optimizer steps"),
    ("linear(0 -> 3e-4, 500 steps) then cosine(3e-4 -> 3e-5, rest)", "schedule", "half cosine from 3e-4 down to 3e-5"),
    ("val_loss stalls for 5 evals by 1e-3", "stop_rule", "val_loss has not decreased by more than 1e-3 for 5 evaluations"),
    ("not finite(loss) or loss > 10 * best(loss)", "stop_rule", "the latest loss is above 10 × the lowest loss so far"),
])
def test_words(text, kind, words):
    e = explain(text)
    assert e.kind == kind
    assert words in e.text


def test_explain_reports_the_furthest_error():
    with pytest.raises(LangError) as err:
        explain("val_loss stals for 5 evals")
    assert err.value.hint == "did you mean stalls?"


def test_cli_plots_a_schedule(capsys):
    assert main(["explain", "linear(0 -> 1e-3, 100 steps) then constant(1e-3, rest)", "--steps", "400", "--width", "40"]) == 0
    out = capsys.readouterr().out
    assert "straight line from 0 to 1e-3 over 100 steps" in out
    assert "1e-3 ┤" in out and "█" in out
    assert "piece boundaries at steps 100" in out


def test_cli_error_exit_code(capsys):
    assert main(["explain", "linear(0 -> 1e-3, 500 steps) then constant(1e-3, rest)", "--steps", "100"]) == 1
    err = capsys.readouterr().err
    assert "would end at step 500" in err and "^" in err
