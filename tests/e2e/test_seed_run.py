"""The seed's two config blocks alone (recipes/seed.yaml: no model:, no data:) through every command: validate,
plan naming the defaults it took, one step of the default GPT on the stdlib corpus through `capidsl run`, and
`capidsl report` on a run that ended before its first log line."""

from __future__ import annotations

import json
import sys

import pytest

import runs

SEED = runs.ROOT / "recipes" / "seed.yaml"


def capidsl(*args: str, environ) -> object:
    return runs.run([sys.executable, "-m", "capidsl", *args], environ, timeout=300)


def test_the_seed_blocks_alone_validate_and_plan_with_the_defaults_named(capsys):
    from capidsl.cli.main import main

    assert main(["validate", str(SEED)]) == 0 and "all valid" in capsys.readouterr().out
    assert main(["plan", str(SEED), "--devices", "1"]) == 0
    out = capsys.readouterr().out
    assert ("info: model: not in the recipe; the default gpt (vocab_size 256, seq_len 128, d_model 128, n_layers 4, "
            "n_heads 4) was taken") in out
    assert "info: data: not in the recipe; the default stdlib corpus (byte tokenizer) was taken" in out
    assert "batch 32 = micro 4 × accumulation 8" in out  # the seed's own keys keep their meaning


@pytest.mark.slow
def test_the_seed_blocks_alone_train_and_report(tmp_path):
    """About 20 s on a 2-core CPU, most of it XLA compiling the default 4-layer GPT's step."""
    environ = runs.env(devices=1)
    # one step, with the seed's accumulation of 8 over a batch of 8 (micro-batches of 1) to keep it short
    run_dir = tmp_path / "run"
    done = capidsl("run", str(SEED), "--run-dir", str(run_dir), "--steps", "1", "--set", "training.batch_size=8",
                   "--set", "logging.tensorboard=false", environ=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = runs.summary(run_dir)
    assert summary["steps"] == 1 and summary["resumable"] and summary["checkpoint_steps"] == [1]
    recorded = json.loads((run_dir / "plan.json").read_text())
    assert recorded["model"]["family"] == "gpt" and recorded["data"]["source"] == "stdlib"
    config = dict(recorded["model"]["config"])
    assert (config["d_model"], config["n_layers"], config["n_heads"], config["seq_len"]) == (128, 4, 4, 128)

    # the run ended before its first log line (it logs every 10 steps): report says so, not "not a run"
    report = capidsl("report", str(run_dir), environ=environ)
    assert report.returncode == 1 and "Traceback" not in report.stderr, report.stderr
    assert f"{run_dir} is a run (plan.json) that has not logged yet: it logs every 10 steps, and it ended at step 1" \
        in report.stderr
