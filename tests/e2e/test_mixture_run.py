"""recipes/mixture.yaml through `capidsl run` (shrunk by --set): a run stopped before the stage boundary and
resumed across it ends with the parameters of a straight run, bit for bit."""

from __future__ import annotations

import json
import sys

import pytest

import runs

RECIPE = runs.ROOT / "recipes" / "mixture.yaml"
SMALL = {"model.d_model": "32", "model.n_layers": "1", "model.seq_len": "32", "training.batch_size": "8",
         "training.duration": "10 steps", "schedule": "constant(1e-3)", "eval.every": "every 5 steps",
         "eval.batches": "2", "checkpoint.every": "null", "logging.every": "every 5 steps", "logging.progress": "plain",
         "logging.tensorboard": "false"}


def capidsl_run(run_dir, *extra: str, environ):
    argv = [x for k, v in SMALL.items() for x in ("--set", f"{k}={v}")]
    done = runs.run([sys.executable, "-m", "capidsl", "run", str(RECIPE), "--run-dir", str(run_dir), *argv, *extra],
                    environ, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_run_resumed_across_the_stage_boundary_equals_a_straight_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixture")
    environ = runs.env(devices=1, cache=tmp / "xla-cache")
    first = capidsl_run(tmp / "pieces", "--steps", "6", environ=environ)  # the 80% stage starts at step 8
    assert "resumable" in first.stdout
    rest = capidsl_run(tmp / "pieces", environ=environ)
    assert "resuming" in rest.stdout and "completed" in rest.stdout
    capidsl_run(tmp / "straight", environ=environ)

    plan = json.loads((tmp / "straight" / "plan.json").read_text())["data"]
    assert [m["name"] for m in plan["mixture"]] == ["prose", "code"]
    assert [(s["start_step"], s["weights"]) for s in plan["mixture_stages"]] == [(0, [0.75, 0.25]), (8, [0.5, 0.5])]
    pieces, straight = runs.summary(tmp / "pieces"), runs.summary(tmp / "straight")
    assert pieces["steps"] == straight["steps"] == 10
    assert pieces["params_sha256"] == straight["params_sha256"]
    rows = [json.loads(x) for x in (tmp / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [5, 10]
