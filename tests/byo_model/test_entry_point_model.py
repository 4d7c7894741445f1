"""Bring your own model: a package outside capidsl registers a family by entry point, and trains.

The package next to this file (pyproject.toml, capidsl_byo_conv/) is installed into a temporary
site folder the way an installer lays it out: the package's sources plus a `*.dist-info` folder
whose `entry_points.txt` is generated from the pyproject's `[project.entry-points]` table. No
monkeypatching: `importlib.metadata` finds the entry point on the path, and `capidsl` runs in
subprocesses whose PYTHONPATH holds the site folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECIPE = HERE / "recipe.yaml"


def install(package: Path, site: Path) -> Path:
    """Lay `package` out in `site` as an installed distribution (sources + dist-info with entry points)."""
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    for name in tomllib.loads((package / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]:
        shutil.copytree(package / name, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install(HERE, tmp_path_factory.mktemp("site"))


def environ(*paths: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    e |= {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": os.pathsep.join(str(p) for p in (*paths, ROOT))}
    return e


def capidsl(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capidsl", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_without_the_package_the_family_is_unknown(tmp_path):
    out = capidsl("validate", str(RECIPE), env=environ())
    assert out.returncode == 1
    assert "unknown model family 'causal_conv' (not built in, no entry point in group capidsl.models)" in out.stdout


def test_the_entry_point_loads_the_family_and_its_count_is_exact(site, monkeypatch):
    from flax import nnx

    from capidsl.models import family_names, get_family, param_table, registry

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", {})
    assert "causal_conv" in family_names() and family_names()[:2] == ["gpt", "mlp"]
    fam = get_family("causal_conv")
    assert type(fam).__module__ == "capidsl_byo_conv.family" and fam.name == "causal_conv"
    cfg = fam.normalize({"vocab_size": 256, "seq_len": 32, "d_model": 32, "kernel": 4})
    import jax.numpy as jnp

    abstract = nnx.eval_shape(lambda: fam.build(cfg, rngs=nnx.Rngs(0), param_dtype=jnp.float32,
                                                compute_dtype=jnp.float32))
    assert sum(p.size for p in param_table(abstract)) == fam.param_count(cfg) == 256 * 32 + 4 * 32 + 3 * 32 + 2 * 32 * 128 + 128 + 32


def test_a_recipe_names_a_family_never_an_import_path(site, monkeypatch):
    from capidsl.recipe import Recipe, RecipeError

    monkeypatch.syspath_prepend(str(site))
    for family in ("capidsl_byo_conv.family:CausalConvFamily", "capidsl_byo_conv.family"):
        text = f"model: {{family: '{family}', options: {{vocab_size: 256, seq_len: 32, d_model: 32}}}}\n"
        with pytest.raises(RecipeError) as err:
            Recipe.from_text(text, name="r.yaml")
        assert "model.family" in err.value.render()
    ok = Recipe.from_yaml(RECIPE)
    assert ok.model.family == "causal_conv" and ok.model.options["kernel"] == 4


@pytest.mark.slow
def test_it_validates_plans_and_trains_through_capidsl_run(site, tmp_path):
    env = environ(site)
    assert capidsl("validate", str(RECIPE), env=env).returncode == 0
    plan = capidsl("plan", str(RECIPE), "--out", str(tmp_path / "plan.json"), env=env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads((tmp_path / "plan.json").read_text())["model"]["family"] == "causal_conv"
    run = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "run"), env=env)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["stop_reason"] == "completed"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses
    assert [r["step"] for r in rows if "val_loss" in r] == [20, 40]


def test_a_third_party_familys_error_points_at_its_option_in_the_recipe(site, monkeypatch):
    from capidsl.models import registry
    from capidsl.plan.compile import compile_plan
    from capidsl.plan.errors import PlanError
    from capidsl.plan.topology import simulated
    from capidsl.recipe import Recipe

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", {})
    text = RECIPE.read_text()
    for override, where in (("model.options.kernel=0", "<--set model.options.kernel=0>:1:22: model.options.kernel: "),
                            ("training.remat=full", "<--set training.remat=full>:1:16: training.remat: ")):
        with pytest.raises(PlanError) as err:
            compile_plan(Recipe.from_text(text, name="byo.yaml", overrides=[override]), simulated("cpu", 1))
        assert err.value.render().startswith(where), err.value.render()
