"""recipes/capibara.yaml through `capidsl run`, shrunk: the carried state is in the checkpoint, so a run
in pieces ends with the same parameters and the same state as a straight one."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import runs

RECIPE = runs.ROOT / "recipes" / "capibara.yaml"
SMALL = {
    "model.d_model": "32", "model.d_state": "16", "model.n_layers": "2", "model.seq_len": "32",
    "training.batch_size": "8", "training.duration": "30 steps", "schedule": "constant(3e-3)",
    "eval.every": "every 15 steps", "eval.batches": "2", "checkpoint.every": "every 15 steps",
    "logging.every": "every 5 steps", "logging.progress": "plain", "logging.tensorboard": "false",
    "stop.restore_best": "false",
}


def capidsl(*args: str, environ, **changes: str) -> object:
    sets = [x for k, v in (SMALL | changes).items() for x in ("--set", f"{k}={v}")]
    return runs.run([sys.executable, "-m", "capidsl", *args, *sets], environ, timeout=300)


@pytest.fixture(scope="module")
def environ(tmp_path_factory):
    return runs.env(devices=1, cache=tmp_path_factory.mktemp("xla-cache"))


def final_state(run_dir: Path) -> dict:
    import orbax.checkpoint as ocp

    step = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": host arrays are what we want
        return ocp.PyTreeCheckpointer().restore(run_dir / "checkpoints" / str(step) / "state")


@pytest.mark.slow
def test_carried_state_resumes_exactly(tmp_path, environ):
    straight = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "a"), environ=environ)
    assert straight.returncode == 0, straight.stderr
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["hidden_state"]["shape"] == [8, 2, 16] and plan["data"]["streams"] == 8
    first = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "b"), "--steps", "7", environ=environ)
    assert first.returncode == 0, first.stderr
    rest = capidsl("run", str(RECIPE), "--run-dir", str(tmp_path / "b"), environ=environ)
    assert rest.returncode == 0 and "resuming" in rest.stdout, rest.stderr
    a, b = runs.summary(tmp_path / "a"), runs.summary(tmp_path / "b")
    assert a["steps"] == b["steps"] == 30 and a["params_sha256"] == b["params_sha256"]
    ha, hb = (np.asarray(final_state(tmp_path / d)["hidden"]) for d in ("a", "b"))
    assert ha.shape == (8, 2, 16) and np.abs(ha).max() > 1e-3 and np.array_equal(ha, hb)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5 and [r["step"] for r in rows if "val_loss" in r] == [15, 30]
