"""Helpers for end-to-end tests: subprocess environments and runs that can be killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver.py"


def env(devices: int = 2, cache: Path | None = None) -> dict[str, str]:
    """The suite's environment minus its 8-device XLA flag: `devices` CPU devices instead."""
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    if cache is not None:
        e |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return e


def driver_cmd(plan_json: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(DRIVER), str(plan_json), str(run_dir), *extra]


def run(cmd: list[str], environ: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# A short fine-tuning run: 40 steps, two evaluations, no periodic checkpoint, plain log lines.
SHORT_FINETUNE = {"training.duration": "40 steps", "eval.every": "every 20 steps", "eval.batches": "2",
                  "checkpoint.every": "null", "logging.every": "every 10 steps", "logging.progress": "plain",
                  "logging.tensorboard": "false"}


def capidsl(*args, devices: int = 1, sets: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m capidsl ARGS... [--set k=v ...]` on `devices` CPU devices; it must exit 0."""
    argv = [str(a) for a in args] + [x for k, v in (sets or {}).items() for x in ("--set", f"{k}={v}")]
    done = run([sys.executable, "-m", "capidsl", *argv], env(devices=devices), timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start(cmd: list[str], environ: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=environ, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, min_step: int = 1, timeout: float = 120) -> int:
    """Block until a committed checkpoint of at least `min_step` exists; return its step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ck = run_dir / "checkpoints"
        steps = [int(p.name) for p in ck.iterdir() if p.name.isdigit()] if ck.is_dir() else []
        if steps and max(steps) >= min_step:
            return max(steps)
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (rc {proc.returncode}) before a checkpoint:\n{out}\n{err}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
