"""The fault suite's shared run: one tiny plan on the real grain pipeline, and its uninterrupted result.

Every fault test breaks a run of this plan (kills, damaged checkpoints, a full disk, NaNs) and
compares what survives with `straight`, the same plan run once without interference. The runs are
real `capidsl run` subprocesses (tests/e2e/driver.py) with 2 CPU devices and one shared
compilation cache, so that a restart costs start-up, not compilation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "exec"))
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE))
from fault_runs import fault_plan  # noqa: E402

import runs  # noqa: E402


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla-cache")


@pytest.fixture(scope="session")
def plan_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    path.write_text(fault_plan().dumps())
    return path


@pytest.fixture(scope="session")
def straight(tmp_path_factory, plan_json, cache):
    """The uninterrupted run's summary, plus `wall_s`: how long one whole run takes here."""
    run_dir = tmp_path_factory.mktemp("straight")
    start = time.monotonic()
    done = runs.run(runs.driver_cmd(plan_json, run_dir), runs.env(cache=cache))
    assert done.returncode == 0, done.stderr
    return runs.summary(run_dir) | {"wall_s": time.monotonic() - start, "run_dir": run_dir}
