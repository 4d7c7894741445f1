"""Real processes, real signals: SIGKILL at random moments, then resume, ends bitwise identical; SIGTERM saves.

A kill may land anywhere: during imports, restore, compilation, a step, an async save or the
manifest; every restart must succeed and the run must end with the uninterrupted run's parameters.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import time
from pathlib import Path

import pytest
from fault_runs import TOTAL_STEPS, fault_plan

import runs

KILLS = 10


@pytest.mark.slow
def test_ten_sigkills_at_random_moments_then_the_same_parameters(tmp_path, plan_json, cache, straight):
    """One run killed KILLS times (seeds 0..KILLS-1), each restart resuming what the last one left."""
    e = runs.env(cache=cache)
    landed = 0
    for seed in range(KILLS):
        proc = runs.start(runs.driver_cmd(plan_json, tmp_path), e)
        moment = random.Random(seed).uniform(0.0, 0.6 * straight["wall_s"])
        deadline = time.monotonic() + moment
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), f"restart {seed} failed (rc {proc.returncode}):\n{err}"
    final = runs.run(runs.driver_cmd(plan_json, tmp_path), e)
    assert final.returncode == 0, final.stderr
    got = runs.summary(tmp_path)
    assert landed >= KILLS // 2, f"only {landed} of {KILLS} kills landed before the run finished"
    assert got["steps"] == straight["steps"] == TOTAL_STEPS
    assert got["params_sha256"] == straight["params_sha256"]


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_just_after_a_checkpoint_then_resume_is_bitwise_identical(tmp_path, plan_json, cache, straight, seed):
    e = runs.env(cache=cache)
    proc = runs.start(runs.driver_cmd(plan_json, tmp_path), e)
    runs.wait_for_checkpoint(tmp_path, proc, min_step=10)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))  # inside the save, its manifest, or the next steps
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed = runs.run(runs.driver_cmd(plan_json, tmp_path), e)
    assert resumed.returncode == 0, resumed.stderr
    got = runs.summary(tmp_path)
    assert got["resumed_from"] is not None and 10 <= got["resumed_from"] < TOTAL_STEPS, got["resumed_from"]
    assert got["steps"] == straight["steps"] == TOTAL_STEPS
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


def _children(pid: int) -> list[int]:
    """Child processes of `pid`, read from /proc (field 4 of /proc/N/stat is the parent's pid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.slow
def test_sigkill_with_worker_processes_ends_them_and_resumes_to_the_same_parameters(tmp_path, cache, straight):
    """data.workers: 2 — grain's workers die with the killed trainer, and the batches (so the weights)
    are those of the in-process pipeline."""
    plan = fault_plan()
    plan = dataclasses.replace(plan, data=dataclasses.replace(plan.data, workers=2))
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(plan.dumps())
    run_dir = tmp_path / "run"
    e = runs.env(cache=cache)
    proc = runs.start(runs.driver_cmd(plan_json, run_dir), e)
    runs.wait_for_checkpoint(run_dir, proc, min_step=20)
    workers = [c for c in _children(proc.pid) if "multiprocessing" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) >= 2, workers
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "grain worker processes outlived the killed trainer"
    resumed = runs.run(runs.driver_cmd(plan_json, run_dir), e)
    assert resumed.returncode == 0, resumed.stderr
    got = runs.summary(run_dir)
    assert got["resumed_from"] >= 20 and got["params_sha256"] == straight["params_sha256"]
