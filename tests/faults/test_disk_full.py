"""The disk fills up while the run saves: the run stops with a clear error (no traceback), and the
checkpoints it had written are intact — proven by resuming from them to the uninterrupted result.

The full disk is real where this test may mount a small tmpfs (root, as in CI): the run writes
into it, and once its first checkpoints are committed a ballast file takes the remaining space.
Where mounting is not allowed, the same failure is simulated at the storage layer instead: orbax's
save raises ENOSPC, in process.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fault_runs import TOTAL_STEPS

import runs


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _fill(folder: Path) -> None:
    """Write zeros until the file system says ENOSPC (unbuffered: nothing is left to flush at close)."""
    chunk = b"\0" * 65536
    with open(folder / "ballast", "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


@pytest.mark.slow
def test_disk_full_stops_cleanly_and_the_earlier_checkpoints_resume(tmp_path, plan_json, cache, straight):
    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "8m"):
        _simulated_disk_full(tmp_path)
        return
    proc = None
    try:
        run_dir = disk / "run"
        e = runs.env(cache=cache)
        proc = runs.start(runs.driver_cmd(plan_json, run_dir), e)
        runs.wait_for_checkpoint(run_dir, proc, min_step=20)
        _fill(disk)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (out, err)
        assert "No space left on device" in err and "Traceback" not in err, err
        kept = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
        assert kept and max(kept) >= 10
        moved = tmp_path / "moved"  # the user frees space: here, the run directory moves to a roomy disk
        shutil.copytree(run_dir, moved)
    finally:
        if proc is not None and proc.poll() is None:  # the test failed first: the run must not hold the mount
            proc.kill()
            proc.communicate()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
    resumed = runs.run(runs.driver_cmd(plan_json, moved), runs.env(cache=cache))
    assert resumed.returncode == 0, resumed.stderr
    got = runs.summary(moved)
    assert got["resumed_from"] in kept
    assert got["steps"] == TOTAL_STEPS and got["params_sha256"] == straight["params_sha256"]


def _simulated_disk_full(tmp_path: Path) -> None:
    """ENOSPC from orbax's save after two good checkpoints, in process on the suite's devices."""
    import orbax.checkpoint as ocp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "exec"))
    import fake_data
    from plan_factory import make_plan

    from capidsl.exec.errors import RunError
    from capidsl.exec.loop import run

    import jax

    plan = make_plan("gpt", mesh={"data": jax.device_count()}, total_steps=30)
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, checkpoint_every=5))
    mp = pytest.MonkeyPatch()
    try:
        fake_data.install(mp, plan)
        straight = run(plan, tmp_path / "straight")
        real_save, calls = ocp.CheckpointManager.save, []

        def save(self, step, *args, **kwargs):
            calls.append(step)
            if len(calls) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(self, step, *args, **kwargs)

        mp.setattr(ocp.CheckpointManager, "save", save)
        with pytest.raises(RunError, match="No space left on device") as caught:
            run(plan, tmp_path / "run")
        assert "earlier checkpoints are intact (steps 5, 10)" in caught.value.render()
        mp.setattr(ocp.CheckpointManager, "save", real_save)
        resumed = run(plan, tmp_path / "run")
    finally:
        mp.undo()
    assert resumed.resumed_from == 10 and resumed.params_sha256 == straight.params_sha256
