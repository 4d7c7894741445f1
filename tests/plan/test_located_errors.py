"""Errors raised below the plan stage (a model family's, the data stage's) reach the user at the recipe key that caused them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

RECIPE = """name: located
model:
  family: gpt
  vocab_size: 256
  seq_len: 16
  d_model: 30
  n_layers: 2
  n_heads: 4
data:
  source: synthetic
  synthetic_examples: 512
training: {batch_size: 16, duration: "4 steps"}
"""
GOOD_MODEL = "model.d_model=32"


def _error(*overrides: str) -> PlanError:
    with pytest.raises(PlanError) as err:
        compile_plan(Recipe.from_text(RECIPE, name="located.yaml", overrides=overrides), simulated("cpu", 1))
    return err.value


def test_a_model_option_the_family_refuses_points_at_that_option():
    # the gpt family finds d_model 30 and n_heads 4 incompatible and names n_heads (line 8)
    err = _error()
    assert err.render().startswith("located.yaml:8:12: model.n_heads: d_model 30 is not a multiple of n_heads 4"), \
        err.render()


def test_a_missing_data_file_points_at_data_path(tmp_path):
    missing = tmp_path / "nowhere.txt"
    text = RECIPE.replace("d_model: 30", "d_model: 32").replace(
        "source: synthetic", f"source: text\n  path: {missing}")
    with pytest.raises(PlanError) as err:
        compile_plan(Recipe.from_text(text, name="located.yaml"), simulated("cpu", 1))
    assert err.value.render() == f"located.yaml:11:9: data.path: {missing} does not exist", err.value.render()


def test_a_missing_tokenizer_keeps_its_hint_and_points_at_data_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text " * 200)
    err = _error(GOOD_MODEL, "data.source=text", f"data.path={corpus}", f"data.tokenizer={tmp_path / 'tok.json'}")
    assert err.subject == "data.tokenizer" and "does not exist" in err.message
    assert str(err.location).startswith("<--set data.tokenizer="), err.location
    assert err.hint and "byte" in err.hint


@pytest.mark.parametrize("command", ["plan", "run"])
def test_the_cli_prints_the_located_error_and_fails_without_a_traceback(tmp_path, command):
    recipe = tmp_path / "located.yaml"
    recipe.write_text(RECIPE)
    extra = ["--devices", "1"] if command == "plan" else ["--run-dir", str(tmp_path / "run")]
    out = subprocess.run([sys.executable, "-m", "capidsl", command, str(recipe), *extra],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"{recipe}:8:12: model.n_heads: d_model 30 is not a multiple of n_heads 4"), out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["plan", "run"])
def test_the_cli_places_a_data_error(tmp_path, command):
    recipe = tmp_path / "located.yaml"
    recipe.write_text(RECIPE.replace("d_model: 30", "d_model: 32"))
    missing = tmp_path / "nowhere.txt"
    extra = ["--devices", "1"] if command == "plan" else ["--run-dir", str(tmp_path / "run")]
    out = subprocess.run([sys.executable, "-m", "capidsl", command, str(recipe), "--set", "data.source=text",
                          "--set", f"data.path={missing}", *extra], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("<--set data.path="), out.stderr
    assert f"data.path: {missing} does not exist" in out.stderr and "Traceback" not in out.stderr
