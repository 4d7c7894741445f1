"""Two real `capidsl run` processes joined by jax.distributed equal one process on the same 4-device mesh.

Each process has 2 fake CPU devices and talks to the other through gloo over 127.0.0.1; the mesh
is fsdp=2 × tensor=2, so parameters are split across the processes (FSDP gathers and gradient
reductions cross them) and tensor parallelism stays inside each. The run is stopped twice: SIGTERM
to one process (JAX's preemption service stops both at the same step, checkpointed), then SIGKILL
to one process (the other is killed too, as a cluster launcher would); each time both are started
again and resume. The final parameters must be bitwise those of the uninterrupted single-process run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import local_cluster as lc

STEPS = 72  # many checkpoint intervals past the signals: a loaded machine delivers them late, never past the end
RECIPE = f"""
name: two-processes
model: {{family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 1, n_heads: 4, d_ff: 64}}
data: {{source: synthetic, synthetic_examples: 512, validation_fraction: 0.1}}
training: {{batch_size: 8, duration: "{STEPS} steps", seed: 1}}
schedule: "constant(3e-3, rest)"
eval: {{every: null}}
checkpoint: {{every: "every 4 steps", keep: 2}}
logging: {{every: "every 4 steps", tensorboard: false, progress: plain}}
mesh: {{data: 1, fsdp: 2, tensor: 2}}
"""
TIMEOUT = 240  # seconds for any one phase: a hung collective fails the test instead of hanging CI


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "two.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xla-cache")


def one_process(recipe: Path, run_dir: Path, cache: Path) -> str:
    """`capidsl run` as one process with all 4 devices; it must exit 0. Its output."""
    done = subprocess.run([sys.executable, "-m", "capidsl", "run", str(recipe), "--run-dir", str(run_dir)],
                          env=lc.environment(4, cache), cwd=lc.ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def single(tmp_path_factory, recipe, cache) -> dict:
    """The reference: one process with all 4 devices, straight through."""
    run_dir = tmp_path_factory.mktemp("single")
    one_process(recipe, run_dir, cache)
    return summary(run_dir)


@pytest.mark.slow
@pytest.mark.timeout(4 * TIMEOUT)
def test_sigterm_and_sigkill_then_resume_equal_one_process(tmp_path, recipe, cache, single):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"

    def start():
        return lc.start(recipe, run_dir, processes=2, devices_each=2, cache=cache, logs=logs)

    # 1. SIGTERM to process 1 only: both processes stop at the same step, save it, and exit 0.
    procs = start()
    lc.wait_for_checkpoint(run_dir, procs, min_step=4, timeout=TIMEOUT)
    procs[1].popen.send_signal(signal.SIGTERM)
    assert lc.wait_all(procs, TIMEOUT) == [0, 0], [p.output()[-2000:] for p in procs]
    stopped = summary(run_dir)
    assert stopped["resumable"] and "SIGTERM" in stopped["stop_reason"], stopped["stop_reason"]
    assert stopped["steps"] in stopped["checkpoint_steps"] and stopped["steps"] < STEPS
    # Both exited 0: had they stopped at different steps, the collective save would have hung instead.
    assert f"stopped by SIGTERM at step {stopped['steps']}" in procs[0].output()
    assert "stopped by" not in procs[1].output() and f"step 4/{STEPS}" not in procs[1].output()  # only 0 reports

    # 2. Resume, then SIGKILL process 0 (the coordinator) past that checkpoint; process 1 goes down with it.
    procs = start()
    lc.wait_for_checkpoint(run_dir, procs, min_step=stopped["steps"] + 4, timeout=TIMEOUT)
    procs[0].popen.send_signal(signal.SIGKILL)
    try:
        procs[1].popen.wait(timeout=20)  # it fails on its next collective, or JAX's heartbeat ends it
    except subprocess.TimeoutExpired:
        pass
    lc.kill_all(procs)

    # 3. Resume to the end.
    procs = start()
    assert lc.wait_all(procs, TIMEOUT) == [0, 0], [p.output()[-2000:] for p in procs]
    done = summary(run_dir)
    assert done["steps"] == STEPS and done["stop_reason"] == "completed"
    assert stopped["steps"] + 4 <= done["resumed_from"] < STEPS, done["resumed_from"]
    assert done["params_sha256"] == single["params_sha256"]  # bitwise, not merely close

    # Checkpoints were written by both processes (each its own shards), metrics by process 0 alone.
    state = run_dir / "checkpoints" / str(STEPS) / "state"
    assert any((state / "ocdbt.process_1").rglob("*")), sorted(p.name for p in state.iterdir())
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(4, STEPS + 1, 4))  # once each, across three invocations


@pytest.mark.slow
@pytest.mark.timeout(3 * TIMEOUT)
def test_two_processes_resumed_as_one(tmp_path, recipe, cache, single):
    """A cluster that comes back smaller: two processes stop at step 8 (2 devices each), then one process
    with all 4 devices resumes the same run (same mesh and global batch, one process's share of the batch
    doubled) and ends bitwise where the single process that never stopped ends."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    procs = lc.start(recipe, run_dir, processes=2, devices_each=2, cache=cache, logs=logs, extra=("--steps", "8"))
    assert lc.wait_all(procs, TIMEOUT) == [0, 0], [p.output()[-2000:] for p in procs]
    assert summary(run_dir)["steps"] == 8
    assert "from step 8" in one_process(recipe, run_dir, cache)
    end = summary(run_dir)
    assert end["steps"] == STEPS and end["resumed_from"] == 8 and end["stop_reason"] == "completed"
    assert end["params_sha256"] == single["params_sha256"]
