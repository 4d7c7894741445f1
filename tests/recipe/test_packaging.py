"""The built wheel (non-editable) carries the schema, grammar and recipes and works from anywhere."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, sys
from pathlib import Path
import capidsl
from capidsl.resources import resource_path
from capidsl.recipe import Recipe
from capidsl.lang import parse_schedule
target = Path(sys.argv[1]).resolve()
assert Path(capidsl.__file__).resolve().is_relative_to(target), capidsl.__file__
paths = [resource_path("schemas", "recipe.schema.json"), resource_path("grammar", "language.lark"),
         resource_path("recipes", "base.yaml")]
for p in paths:
    assert p.resolve().is_relative_to(target), p
    assert p.is_file(), p
json.loads(paths[0].read_text())
recipe = Recipe.from_yaml(paths[2])
assert recipe.model.family == "gpt"
parse_schedule("linear(0 -> 1e-3, 10 steps) then cosine(1e-3 -> 1e-4, rest)")
from capidsl.cli.main import main
assert main(["validate", str(resource_path("recipes", "base.yaml"))]) == 0
print("WHEEL OK")
"""


def run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_ships_the_resources(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheels, REPO]
    if importlib.util.find_spec("hatchling") is not None:
        build.insert(4, "--no-build-isolation")  # the backend is here: no download needed
    run(build)
    (wheel,) = wheels.glob("capidsl-*.whl")
    target = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", target, wheel])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = run([sys.executable, "-c", PROBE, target], cwd=outside, env=env)
    assert "WHEEL OK" in proc.stdout
