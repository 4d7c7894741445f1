"""recipes/pruning.yaml through `capidsl run`, shrunk: the logged sparsity reaches the plan's exactly,
the pruned weights in the final checkpoint are exactly zero, and a run in pieces equals a straight one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import runs

RECIPE = runs.ROOT / "recipes" / "pruning.yaml"
SMALL = {
    "model.d_model": "32", "training.batch_size": "8", "training.duration": "40 steps", "schedule": "constant(3e-3)",
    "pruning.schedule": "from 0% to 80% between 0 and 20 steps, every 5 steps",
    "eval.every": "every 20 steps", "eval.batches": "2", "checkpoint.every": "every 20 steps",
    "logging.every": "every 5 steps", "logging.progress": "plain", "logging.tensorboard": "false",
}


def capidsl(*args: str, environ) -> object:
    sets = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    return runs.run([sys.executable, "-m", "capidsl", *args, *sets], environ, timeout=300)


@pytest.fixture(scope="module")
def environ(tmp_path_factory):
    return runs.env(devices=1, cache=tmp_path_factory.mktemp("xla-cache"))


def final_params(run_dir: Path) -> dict[str, np.ndarray]:
    """The parameters of the newest checkpoint, read by orbax as plain numpy (no plan, no mesh)."""
    import warnings

    import orbax.checkpoint as ocp

    step = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": host arrays are what we want
        tree = ocp.PyTreeCheckpointer().restore(run_dir / "checkpoints" / str(step) / "state")

    def flat(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from flat(v, f"{prefix}.{k}" if prefix and k != "value" else (prefix or k))
        else:
            yield prefix, np.asarray(node)

    return dict(flat(tree["params"]))


@pytest.mark.slow
def test_pruning_recipe_reaches_its_sparsity_and_resumes_exactly(tmp_path, environ):
    straight = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "a"), environ=environ)
    assert straight.returncode == 0, straight.stderr
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())["pruning"]
    assert plan["schedule"]["end_step"] == 20 and plan["scope"] == "per_layer"
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    sparsity = {r["step"]: r["sparsity"] for r in rows if "sparsity" in r}
    assert sparsity[5] < sparsity[10] < sparsity[15] < sparsity[20]
    target = plan["final_zeros"] / plan["weights"]
    assert all(sparsity[s] == pytest.approx(target, abs=1e-7) for s in (20, 25, 30, 35, 40))

    params = final_params(tmp_path / "a")
    zeros = sum(int(np.sum(params[p] == 0)) for p in plan["params"])
    assert zeros == plan["final_zeros"]
    assert not np.any(params["wte.embedding"] == 0)  # embeddings: false

    first = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "b"), "--steps", "12", environ=environ)
    assert first.returncode == 0, first.stderr
    rest = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "b"), environ=environ)
    assert rest.returncode == 0 and "resuming" in rest.stdout, rest.stderr
    assert runs.summary(tmp_path / "b")["params_sha256"] == runs.summary(tmp_path / "a")["params_sha256"]
