"""The run loop in process, on fake data (tests/exec/fake_data.py): logging, resume, stopping, NaNs.

The suite has 8 fake CPU devices, and a plan's mesh must cover all of them: plans here use data=8.
Subprocess kills (SIGKILL, SIGTERM) are in tests/e2e.
"""

from __future__ import annotations

import dataclasses
import json

import fake_data
import jax
import pytest
from jit_cache import compile_cache  # noqa: F401
from plan_factory import make_plan

from capidsl.exec.checkpoint import MANIFEST, CheckpointWarning
from capidsl.exec.errors import RunError
from capidsl.exec.metrics import MEASURED_KEYS
from capidsl.exec.loop import run
from capidsl.exec.metrics import TRAIN_KEYS
from capidsl.lang import parse_stop_rule
from capidsl.plan.plan import CheckpointPlan, StopPlan


def _plan(total=12, log=2, ckpt=4, evals=4, stop=None, restore_best=False, family="gpt", **kw):
    if family == "gpt":
        kw.setdefault("d_model", 32)
    plan = make_plan(family, mesh={"data": 8}, total_steps=total, lr=3e-3, **kw)
    rule = parse_stop_rule(stop, metrics=("loss", "val_loss", "lr", "grad_norm")).resolve(total, 1) if stop else None
    return dataclasses.replace(
        plan,
        cadence=dataclasses.replace(plan.cadence, log_every=log, checkpoint_every=ckpt, eval_every=evals),
        stop=StopPlan(rule=rule, restore_best=restore_best, restore_metric="val_loss" if restore_best else None,
                      restore_mode="min"),
        checkpoint=CheckpointPlan(keep=2, keep_best_metric=None, keep_best_mode="min", keep_best=0, async_save=True),
    )


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_every_artifact_is_written(tmp_path, monkeypatch):
    plan = dataclasses.replace(_plan(total=16), logging=dataclasses.replace(_plan().logging, tensorboard=True))
    fake_data.install(monkeypatch, plan)
    s = run(plan, tmp_path)
    train = [x for x in _lines(tmp_path) if "loss" in x]
    evals = [x for x in _lines(tmp_path) if "val_loss" in x]
    assert [x["step"] for x in train] == list(range(2, 17, 2))
    assert [x["step"] for x in evals] == [4, 8, 12, 16]
    for row in train:
        assert set(TRAIN_KEYS) <= set(row)
        assert row["host_peak_rss_bytes"] > 0 and row["tokens_per_s"] > 0
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["stop_reason"] == "completed" and not summary["resumable"]
    assert len(summary["params_sha256"]) == 64 and summary["params_sha256"] == s.params_sha256
    assert summary["memory"]["predicted_per_device_bytes"] == plan.memory.total
    assert summary["memory"]["host_peak_rss_bytes"] > 0
    assert json.loads((tmp_path / "plan.json").read_text()) == plan.to_json()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert s.checkpoint_steps == (12, 16)
    assert (tmp_path / "checkpoints" / "16" / MANIFEST).exists()


def test_steps_in_pieces_end_bitwise_identical_and_metrics_are_not_repeated(tmp_path, monkeypatch):
    plan = _plan(total=10)
    fake_data.install(monkeypatch, plan)
    straight = run(plan, tmp_path / "straight")
    first = run(plan, tmp_path / "pieces", max_steps=3)  # not a log, eval or checkpoint step
    assert first.steps == 3 and first.resumable and "resumable" in first.stop_reason
    second = run(plan, tmp_path / "pieces")
    assert second.resumed_from == 3 and second.steps == 10
    assert second.params_sha256 == straight.params_sha256
    assert _lines(tmp_path / "pieces") == [{**x, **{k: y[k] for k in y if k in MEASURED_KEYS or k.endswith(("_s", "bytes"))}}
                                           for x, y in zip(_lines(tmp_path / "straight"), _lines(tmp_path / "pieces"))]


def test_early_stop_reason_and_a_resumed_run_stops_at_the_same_step(tmp_path, monkeypatch):
    # Improving means by more than 10: never, so the rule fires at the third eval.
    rule = "val_loss stalls for 2 evals by 10"
    plan = _plan(total=40, log=2, ckpt=2, evals=2, stop=rule)
    fake_data.install(monkeypatch, plan)
    straight = run(plan, tmp_path / "straight")
    assert straight.stop_reason.startswith(f"stopped at step {straight.steps}: ") and "stalled" in straight.stop_reason
    assert straight.steps < 40 and not straight.resumable
    run(plan, tmp_path / "pieces", max_steps=straight.steps - 1)
    resumed = run(plan, tmp_path / "pieces")
    assert resumed.steps == straight.steps and resumed.stop_reason == straight.stop_reason
    assert resumed.params_sha256 == straight.params_sha256
    again = run(plan, tmp_path / "pieces")  # a finished run does not step again
    assert again.steps == straight.steps and again.stop_reason == straight.stop_reason


def test_changed_shape_is_refused_naming_the_change_and_safe_changes_are_allowed(tmp_path, monkeypatch):
    plan = _plan(total=8)
    fake_data.install(monkeypatch, plan)
    run(plan, tmp_path, max_steps=4)
    wider = _plan(total=8, d_model=64)
    fake_data.install(monkeypatch, wider)
    with pytest.raises(RunError, match=r"d_model: 32 → 64"):
        run(wider, tmp_path)
    assert (tmp_path / "checkpoints" / "4").is_dir()
    longer = _plan(total=8, log=3, evals=6)  # more steps, other cadences: safe
    longer = dataclasses.replace(longer, cadence=dataclasses.replace(longer.cadence, total_steps=12))
    fake_data.install(monkeypatch, longer)
    s = run(longer, tmp_path)
    assert s.resumed_from == 4 and s.steps == 12


def test_nan_in_the_data_stops_by_not_finite_without_a_nan_checkpoint(tmp_path, monkeypatch):
    plan = _plan(total=20, log=1, ckpt=1, evals=None, stop="not finite(loss)", family="mlp")
    fake_data.install(monkeypatch, plan, nan_at=6)
    with pytest.warns(CheckpointWarning, match="no checkpoint at step 6"):
        s = run(plan, tmp_path)
    assert s.steps == 6 and "loss is not finite" in s.stop_reason and not s.resumable
    assert max(s.checkpoint_steps) == 5
    assert _lines(tmp_path)[-1]["loss"] == "nan"


def test_corrupted_latest_checkpoint_falls_back_with_a_warning(tmp_path, monkeypatch):
    plan = _plan(total=12, ckpt=4)
    fake_data.install(monkeypatch, plan)
    straight = run(plan, tmp_path / "straight")
    run(plan, tmp_path / "run", max_steps=9)  # checkpoints at 8 and 9
    victim = max((p for p in (tmp_path / "run/checkpoints/9/state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-7])
    with pytest.warns(CheckpointWarning, match=r"checkpoints/9 is unreadable"):
        s = run(plan, tmp_path / "run")
    assert s.resumed_from == 8 and s.params_sha256 == straight.params_sha256
    assert (tmp_path / "run/checkpoints.unreadable/9").is_dir()


def test_restore_best_ends_with_the_best_eval_weights(tmp_path, monkeypatch):
    plan = _plan(total=12, log=2, ckpt=100, evals=2, restore_best=True)
    fake_data.install(monkeypatch, plan, distinct=1)  # one batch memorised: val_loss (other data) gets worse
    s = run(plan, tmp_path)
    evals = [x for x in _lines(tmp_path) if "val_loss" in x]
    best = min(evals, key=lambda x: x["val_loss"])
    assert s.best["step"] == best["step"] and s.params_step == best["step"]
    assert best["step"] in s.checkpoint_steps


def test_a_failed_async_save_stops_the_run_with_an_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    import errno

    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    plan = _plan(total=12, ckpt=4, evals=None)
    fake_data.install(monkeypatch, plan)
    original = jh.JsonCheckpointHandler._save_fn

    async def full_from_step_8(self, x, directory):
        if int(x["step"]) >= 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        await original(self, x, directory)

    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full_from_step_8)
    with pytest.raises(RunError, match=r"checkpoint of step 8 failed.*No space left") as info:
        run(plan, tmp_path)
    assert "earlier checkpoints are intact (steps 4)" in info.value.render()
    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", original)
    resumed = run(plan, tmp_path)  # and the run goes on from step 4
    assert resumed.resumed_from == 4 and resumed.steps == 12


def test_sample_loads_the_final_weights_on_one_device_and_is_seeded(tmp_path, monkeypatch):
    from capidsl.exec.generate import generate, load_run

    plan = _plan(total=4, evals=None)
    fake_data.install(monkeypatch, plan)
    s = run(plan, tmp_path)
    loaded, graphdef, params, step = load_run(tmp_path)
    assert loaded == plan and step == 4
    assert {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(params)} == {1}
    from capidsl.exec.summary import params_sha256

    assert params_sha256(params) == s.params_sha256
    a = generate(plan, graphdef, params, [1, 2, 3], tokens=5, temperature=1.0, seed=0)
    b = generate(plan, graphdef, params, [1, 2, 3], tokens=5, temperature=1.0, seed=0)
    assert a == b and len(a) == 5 and all(0 <= t < plan.data.vocab_size for t in a)
