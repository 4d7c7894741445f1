"""A damaged latest checkpoint — cut short, or one byte changed — is found on resume, set aside with a
warning that names it, and the run resumes from the previous good one to the same parameters."""

from __future__ import annotations

import pytest
from fault_runs import TOTAL_STEPS

import runs


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "one byte flipped"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, plan_json, cache, straight, damage):
    e = runs.env(cache=cache)
    first = runs.run(runs.driver_cmd(plan_json, tmp_path, "--steps", "100"), e)
    assert first.returncode == 0, first.stderr
    victim = _largest_file(tmp_path / "checkpoints" / "100" / "state")
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))

    resumed = runs.run(runs.driver_cmd(plan_json, tmp_path), e)
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoints/100 is unreadable" in resumed.stderr and "Traceback" not in resumed.stderr
    got = runs.summary(tmp_path)
    assert got["resumed_from"] == 90
    assert got["steps"] == TOTAL_STEPS and got["params_sha256"] == straight["params_sha256"]
    assert (tmp_path / "checkpoints.unreadable" / "100").is_dir()  # kept for inspection, never deleted
