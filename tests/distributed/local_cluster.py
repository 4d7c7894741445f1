"""Several `capidsl run` processes on 127.0.0.1, joined by jax.distributed, each with its own fake CPU devices.

What a cluster launcher would do, done by the test itself: the same command per process with
`--coordinator 127.0.0.1:PORT --num-processes N --process-id I`. Output goes to files (a pipe
left unread could block a process in the middle of a collective), and every wait has a deadline,
so a hung collective fails the test instead of hanging CI.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(devices: int, cache: Path | None = None) -> dict[str, str]:
    """The suite's environment with `devices` fake CPU devices (not the suite's 8) and a shared XLA cache."""
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e |= {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")}
    if cache is not None:
        e |= {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return e


@dataclass
class Process:
    popen: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def capidsl_run(args: list[str], env: dict[str, str], log: Path) -> Process:
    with open(log, "w") as out:
        popen = subprocess.Popen([sys.executable, "-m", "capidsl", "run", *args], env=env, cwd=ROOT,
                                 stdout=out, stderr=subprocess.STDOUT)
    return Process(popen, log)


def start(recipe: Path, run_dir: Path, *, processes: int, devices_each: int, cache: Path | None,
          logs: Path, extra: tuple[str, ...] = ()) -> list[Process]:
    """`processes` processes of one run, process 0 listening on a fresh port."""
    port = free_port()
    env = environment(devices_each, cache)
    logs.mkdir(parents=True, exist_ok=True)
    return [capidsl_run([str(recipe), "--run-dir", str(run_dir), *extra, "--coordinator", f"127.0.0.1:{port}",
                         "--num-processes", str(processes), "--process-id", str(i)], env,
                        logs / f"process{i}.{time.monotonic_ns()}.log")
            for i in range(processes)]


def wait_all(procs: list[Process], timeout: float) -> list[int]:
    """Every process's exit code; a process still running at the deadline is killed and the test fails."""
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.popen.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            kill_all(procs)
            logs = "\n".join(f"--- {q.log.name}:\n{q.output()[-3000:]}" for q in procs)
            raise AssertionError(f"the processes did not finish within {timeout:.0f} s:\n{logs}") from None
    return codes


def kill_all(procs: list[Process]) -> None:
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGKILL)
    for p in procs:
        p.popen.wait(timeout=30)


def wait_for_checkpoint(run_dir: Path, procs: list[Process], min_step: int, timeout: float) -> int:
    """The newest committed checkpoint step once it is at least `min_step` (orbax commits by renaming
    a temporary directory, so a directory named by a plain number is complete)."""
    deadline = time.monotonic() + timeout
    directory = run_dir / "checkpoints"
    while time.monotonic() < deadline:
        steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
        if steps and max(steps) >= min_step:
            return max(steps)
        ended = [p for p in procs if p.popen.poll() is not None]
        if ended:
            kill_all(procs)
            raise AssertionError(f"a process ended (rc {ended[0].popen.returncode}) before checkpoint {min_step}:\n"
                                 + ended[0].output()[-3000:])
        time.sleep(0.02)
    kill_all(procs)
    raise AssertionError(f"no checkpoint of step {min_step} or later within {timeout:.0f} s")
