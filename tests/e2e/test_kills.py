"""Real processes, real signals: SIGKILL and resume is bitwise identical; SIGTERM saves and exits 0.

The subprocesses run `capidsl run plan.json` on the real grain pipeline (synthetic source), with 2
CPU devices (not the suite's 8), sharing one compilation cache.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exec"))
from plan_factory import make_plan  # noqa: E402

import runs  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="module")
def plan_json(tmp_path_factory):
    # The real input pipeline on its synthetic source (256 windows: the 300 steps cross two epochs).
    plan = make_plan("gpt", mesh={"data": 2}, total_steps=300, lr=3e-3, vocab_size=256)
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=10, checkpoint_every=10,
                                                                   eval_every=50))
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(plan.dumps())
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, plan_json, cache):
    run_dir = tmp_path_factory.mktemp("straight")
    done = runs.run(runs.driver_cmd(plan_json, run_dir), runs.env(cache=cache))
    assert done.returncode == 0, done.stderr
    return runs.summary(run_dir)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, plan_json, cache, straight, seed):
    e = runs.env(cache=cache)
    proc = runs.start(runs.driver_cmd(plan_json, tmp_path), e)
    runs.wait_for_checkpoint(tmp_path, proc, min_step=10)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = runs.run(runs.driver_cmd(plan_json, tmp_path), e)
    assert resumed.returncode == 0, resumed.stderr
    got = runs.summary(tmp_path)
    assert got["resumed_from"] is not None and 10 <= got["resumed_from"] < 300, got["resumed_from"]
    assert got["steps"] == straight["steps"] == 300
    assert got["params_sha256"] == straight["params_sha256"]


def test_sigterm_saves_exits_0_resumable_and_resumes_identically(tmp_path, plan_json, cache, straight):
    e = runs.env(cache=cache)
    proc = runs.start(runs.driver_cmd(plan_json, tmp_path), e)
    runs.wait_for_checkpoint(tmp_path, proc, min_step=10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "resumable" in out
    stopped = runs.summary(tmp_path)
    assert stopped["resumable"] and "SIGTERM" in stopped["stop_reason"]
    assert stopped["steps"] in stopped["checkpoint_steps"]  # saved at the step it stopped
    resumed = runs.run(runs.driver_cmd(plan_json, tmp_path), e)
    assert resumed.returncode == 0, resumed.stderr
    assert runs.summary(tmp_path)["params_sha256"] == straight["params_sha256"]
