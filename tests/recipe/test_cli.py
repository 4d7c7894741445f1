"""`capidsl validate` and `capidsl schema`: outputs, exit codes, and no JAX import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capidsl.cli.main import main

REPO = Path(__file__).resolve().parents[2]
MODEL = "model: {family: gpt, vocab_size: 256, seq_len: 64, d_model: 64, n_layers: 2, n_heads: 2}\n"


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "good.yaml").write_text(MODEL)
    (tmp_path / "sub" / "bad.yml").write_text(MODEL + "training: {batch_size: x}\n")
    (tmp_path / "sub" / "deeper" / "worse.yaml").write_text(MODEL + "optimizer: {name: adamz, epsilon: -1}\n")
    (tmp_path / "notes.txt").write_text("not a recipe")
    return tmp_path


def test_valid_recipes_exit_0(capsys):
    assert main(["validate", str(REPO / "recipes")]) == 0
    assert "all valid" in capsys.readouterr().out


def test_folders_are_searched_recursively_and_every_problem_reported(tree, capsys):
    assert main(["validate", str(tree)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{tree}/sub/bad.yml:2:24: training.batch_size: expected an integer, got the string 'x'",
        f"{tree}/sub/deeper/worse.yaml:2:19: optimizer.name: 'adamz' is not one of: 'adamw', 'adam', 'sgd', 'adafactor', 'lion'; did you mean 'adam'?",
        f"{tree}/sub/deeper/worse.yaml:2:35: optimizer.epsilon: must be greater than 0, got -1",
        "3 recipes checked: 2 invalid, 3 problems",
    ]


def test_json_format(tree, capsys):
    assert main(["validate", "--format", "json", str(tree / "sub")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and [f["valid"] for f in doc["files"]] == [False, False]
    first = doc["files"][0]["problems"][0]
    assert first == {"file": f"{tree}/sub/bad.yml", "line": 2, "column": 24, "extends_chain": [],
                     "path": "training.batch_size", "message": "expected an integer, got the string 'x'", "hint": None}


def test_github_format(tree, capsys):
    assert main(["validate", "--format", "github", str(tree / "sub" / "bad.yml")]) == 1
    assert capsys.readouterr().out == (
        f"::error file={tree}/sub/bad.yml,line=2,col=24,title=capidsl validate::"
        "training.batch_size: expected an integer, got the string 'x'\n")


def test_overrides_apply_to_every_file(tree, capsys):
    assert main(["validate", str(tree / "good.yaml"), "--set", "training.batch_size=0"]) == 1
    assert "<--set training.batch_size=0>:1:21: training.batch_size: must be at least 1, got 0" in capsys.readouterr().out


def run_cli(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "capidsl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("args", [["validate", "does/not/exist.yaml"], ["validate"], ["validate", "--format", "xml", "recipes"],
                                  ["validate", "recipes", "--set", "no-equals-sign"]])
def test_usage_errors_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_folder_without_recipes_is_a_usage_error(tmp_path):
    proc = run_cli("validate", str(tmp_path))
    assert proc.returncode == 2 and "no *.yaml or *.yml files" in proc.stderr


def test_validate_never_imports_jax(tree):
    probe = (
        "import sys\n"
        "from capidsl.cli.main import main\n"
        f"rc = main(['validate', {str(REPO / 'recipes')!r}, {str(tree)!r}, {str(REPO / 'tests/recipes/invalid')!r}])\n"
        "heavy = sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'grain') if m in sys.modules)\n"
        "print('HEAVY', heavy, rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "HEAVY [] 1" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_schema_command_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((REPO / "schemas" / "recipe.schema.json").read_text())
    assert main(["schema", "--path"]) == 0
    assert capsys.readouterr().out.strip().endswith("recipe.schema.json")


def test_shipped_recipes_point_editors_at_the_schema():
    for path in (REPO / "recipes").glob("*.yaml"):
        first = path.read_text().splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/recipe.schema.json", path


def test_numbers_no_float_holds_are_located_errors_in_every_command(tmp_path):
    """validate, plan and run all stop at the recipe stage with file:line:col, never an OverflowError."""
    recipe = "tests/recipes/invalid/number_out_of_range.yaml"
    probe = (
        "import sys\n"
        "from capidsl.cli.main import main\n"
        f"for args in (['validate', {recipe!r}], ['plan', {recipe!r}], ['run', {recipe!r}, '--run-dir', {str(tmp_path / 'run')!r}]):\n"
        "    print('== %s %d' % (args[0], main(args)), file=sys.stderr, flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "Error:" not in proc.stderr, proc.stderr[-3000:]
    where = f"{recipe}:6:18: training.learning_rate: 1e400 is outside the range of numbers"
    assert where in proc.stdout, proc.stdout  # validate reports on stdout
    plan, run = proc.stderr.split("== validate 1\n")[1].split("== plan 1\n")
    assert where in plan and where in run and run.endswith("== run 1\n"), proc.stderr
    assert not (tmp_path / "run").exists()
