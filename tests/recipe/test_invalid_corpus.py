"""The broken-recipe corpus: each tests/recipes/invalid/NAME.yaml fails with exactly NAME.expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capidsl.recipe import Recipe, RecipeError

CORPUS = Path(__file__).resolve().parents[1] / "recipes" / "invalid"
CASES = sorted(p.stem for p in CORPUS.glob("*.yaml"))


def test_every_case_has_an_expected_file():
    assert CASES, "the corpus is empty"
    assert sorted(p.stem for p in CORPUS.glob("*.expected")) == CASES


@pytest.mark.parametrize("name", CASES)
def test_case_reports_exactly_the_expected_lines(name, monkeypatch):
    monkeypatch.chdir(CORPUS)  # messages name files as given: relative to the corpus folder
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(f"{name}.yaml")
    expected = (CORPUS / f"{name}.expected").read_text(encoding="utf-8").splitlines()
    assert info.value.render().splitlines() == expected
    assert all(p.location is not None for p in info.value.problems)


def _from_repo(line: str) -> str:
    """A corpus line as seen from the repository root: the file and its extends chain prefixed."""
    prefix = "tests/recipes/invalid/"
    line = (prefix + line).replace("no such file: ", "no such file: " + prefix)
    head, sep, chain = line.partition(" (extends chain: ")
    if sep:
        chain = " -> ".join(prefix + name for name in chain.rstrip(")").split(" -> ")) + ")"
    return head + sep + chain


def test_validate_reports_every_case_and_exits_1():
    repo = CORPUS.parents[2]
    proc = subprocess.run([sys.executable, "-m", "capidsl", "validate", "tests/recipes/invalid/"],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for name in CASES:
        # each case's problems are reported, with the file:line:col of the file they are in
        for line in (CORPUS / f"{name}.expected").read_text(encoding="utf-8").splitlines():
            assert _from_repo(line) in proc.stdout, line
    assert f"{len(CASES)} recipes checked: {len(CASES)} invalid" in proc.stdout
