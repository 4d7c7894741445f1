"""`capidsl run` and `capidsl sample` on tiny real recipes, in subprocesses with one CPU device.

The whole chain: YAML → Recipe → Plan → grain input → train → checkpoints → metrics → sample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import runs

TINY = """
name: tiny
run_dir: runs/tiny
model: {{family: gpt, vocab_size: 256, seq_len: 32, d_model: 32, n_layers: 1, n_heads: 2}}
data: {{source: {source}, tokenizer: byte, validation_fraction: 0.1}}
training: {{batch_size: 8, duration: "{steps} steps", seed: 3, mixed_precision: false}}
optimizer: {{name: adamw, beta1: 0.9, beta2: 0.95, epsilon: 1e-8, weight_decay: 0.0}}
schedule: "constant(3e-3, rest)"
stop: {{when: "{stop}", restore_best: false}}
eval: {{every: "every 20 steps", batches: 2}}
checkpoint: {{every: "every 20 steps", keep: 2}}
logging: {{every: "every 10 steps", progress: plain, tensorboard: false}}
"""


def recipe(tmp_path: Path, name: str = "tiny.yaml", *, steps: int = 60, stop: str = "not finite(loss)",
           source: str = "stdlib") -> Path:
    path = tmp_path / name
    path.write_text(TINY.format(steps=steps, stop=stop, source=source))
    return path


def capidsl(*args: str, environ) -> object:
    return runs.run([sys.executable, "-m", "capidsl", *args], environ, timeout=300)


@pytest.fixture(scope="module")
def environ(tmp_path_factory):
    return runs.env(devices=1, cache=tmp_path_factory.mktemp("xla-cache"))


def test_run_in_pieces_then_sample(tmp_path, environ):
    r = recipe(tmp_path)
    first = capidsl("run", str(r), "--run-dir", str(tmp_path / "a"), "--steps", "30", environ=environ)
    assert first.returncode == 0, first.stderr
    assert "resumable" in first.stdout
    rest = capidsl("run", str(r), "--run-dir", str(tmp_path / "a"), environ=environ)
    assert rest.returncode == 0, rest.stderr
    assert "resuming" in rest.stdout and "completed" in rest.stdout
    straight = capidsl("run", str(r), "--run-dir", str(tmp_path / "b"), environ=environ)
    assert straight.returncode == 0, straight.stderr
    a, b = runs.summary(tmp_path / "a"), runs.summary(tmp_path / "b")
    assert a["steps"] == b["steps"] == 60 and a["params_sha256"] == b["params_sha256"]

    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert train[-1]["loss"] < train[0]["loss"]
    assert [x["step"] for x in lines if "val_loss" in x] == [20, 40, 60]
    assert (tmp_path / "b" / "plan.json").exists()

    text = capidsl("sample", str(tmp_path / "b"), "--prompt", "def ", "--tokens", "20", "--seed", "1",
                   environ=environ)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("def ") and len(text.stdout) > 10

    report = capidsl("report", str(tmp_path / "a"), environ=environ)  # the run made in two pieces
    assert report.returncode == 0, report.stderr
    assert "steps 60" in report.stdout and "completed" in report.stdout
    assert (tmp_path / "a" / "report.png").stat().st_size > 20_000


def test_early_stopping_fires_with_its_reason(tmp_path, environ):
    r = recipe(tmp_path, steps=200, stop="val_loss stalls for 1 evals by 100 or not finite(loss)")
    done = capidsl("run", str(r), "--run-dir", str(tmp_path / "run"), environ=environ)
    assert done.returncode == 0, done.stderr
    s = runs.summary(tmp_path / "run")
    assert s["steps"] == 40 and s["stop_reason"].startswith("stopped at step 40: val_loss stalled for 1 eval (best ")
    assert s["stop_reason"] in done.stdout and not s["resumable"]


def test_a_changed_shape_is_refused_and_a_plan_json_runs_as_is(tmp_path, environ):
    r = recipe(tmp_path)
    ok = capidsl("run", str(r), "--run-dir", str(tmp_path / "run"), "--steps", "20", environ=environ)
    assert ok.returncode == 0, ok.stderr
    wider = capidsl("run", str(r), "--run-dir", str(tmp_path / "run"), "--set", "model.d_model=64",
                    environ=environ)
    assert wider.returncode == 1
    assert "model.config.d_model: 32 → 64" in wider.stderr and "another --run-dir" in wider.stderr
    plan_json = tmp_path / "run" / "plan.json"
    again = capidsl("run", str(plan_json), "--run-dir", str(tmp_path / "run"), "--steps", "40", environ=environ)
    assert again.returncode == 0, again.stderr
    assert runs.summary(tmp_path / "run")["steps"] == 40


def test_train_main_takes_a_path_or_a_recipe(tmp_path, capsys):
    """The seed's entry point, in process (the suite's 8 devices: the live plan splits the batch 8 ways)."""
    from capidsl.recipe import Recipe
    from capidsl.train import main

    r = recipe(tmp_path, steps=20)
    a = main(str(r), run_dir=str(tmp_path / "a"), max_steps=3)
    b = main(Recipe.from_yaml(r), run_dir=str(tmp_path / "b"), max_steps=3)
    assert a.steps == b.steps == 3 and a.params_sha256 == b.params_sha256
    assert "resumable" in capsys.readouterr().out
