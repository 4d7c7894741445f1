"""Which cluster a process joins: the command line, the launcher's environment through JAX's detectors, errors.

The environments are the variables SLURM and Open MPI set for each task (their names are the ones
JAX's own detectors read); the joining itself is tested for real in tests/distributed.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import pytest

from capidsl.errors import UsageError
from capidsl.exec.distributed import Cluster, initialize, process_rows, resolve
from capidsl.exec.errors import RunError
from capidsl.exec.mesh import build_mesh
from plan_factory import make_plan

LAUNCHER_VARIABLES = ("SLURM_", "OMPI_", "KUBERNETES_SERVICE_HOST", "JAX_COORDINATOR", "TPU_", "MEGASCALE_")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in list(os.environ):
        if name.startswith(LAUNCHER_VARIABLES):
            monkeypatch.delenv(name)


def slurm(monkeypatch, tasks: int, rank: int, job: int = 12345, nodes: str = "node[001-002]"):
    for k, v in {"SLURM_JOB_ID": job, "SLURM_STEP_NODELIST": nodes, "SLURM_NTASKS": tasks, "SLURM_PROCID": rank,
                 "SLURM_LOCALID": 0}.items():
        monkeypatch.setenv(k, str(v))


def test_alone_without_flags_or_launcher():
    assert resolve() is None


def test_the_command_line():
    assert resolve("10.0.0.1:1234", 4, 3) == Cluster("10.0.0.1:1234", 4, 3, "command line")
    assert resolve("[fe80::1]:99", 2, 0).coordinator == "[fe80::1]:99"
    assert resolve("127.0.0.1:5", 1, 0) is None  # one process: nothing to join


@pytest.mark.parametrize("args, message", [
    (("10.0.0.1:1234", None, 0), "needs --num-processes too"),
    ((None, 2, 1), "needs --coordinator too"),
    (("10.0.0.1", 2, 1), "expected HOST:PORT"),
    (("host:99999", 2, 1), "expected HOST:PORT"),
    (("host:1", 2, 2), "--process-id must be between 0 and 1"),
    (("host:1", 0, 0), "--num-processes must be at least 1"),
])
def test_incomplete_or_wrong_flags_are_usage_errors(args, message):
    with pytest.raises(UsageError, match=message):
        resolve(*args)


def test_slurm_is_read_through_jaxs_detector(monkeypatch):
    slurm(monkeypatch, tasks=2, rank=1)
    # JAX's rule: the first host of the step's node list, port 61440 + job id mod 4096.
    assert resolve() == Cluster(f"node001:{61440 + 12345 % 4096}", 2, 1, "SLURM")
    monkeypatch.setenv("JAX_COORDINATOR_PORT", "7000")
    assert resolve().coordinator == "node001:7000"
    assert resolve(process_id=0) == Cluster("node001:7000", 2, 0, "command line and SLURM")


def test_a_slurm_allocation_of_one_task_trains_alone(monkeypatch):
    slurm(monkeypatch, tasks=1, rank=0)
    assert resolve() is None


def test_open_mpi(monkeypatch):
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    cluster = resolve()
    assert (cluster.coordinator.split(":")[0], cluster.num_processes, cluster.process_id, cluster.source) == (
        "10.96.0.1", 4, 2, "Open MPI")


def test_joining_after_jax_started_is_refused_with_a_reason():
    jax.devices()  # this test process's backends are running
    with pytest.raises(RunError, match="already in use"):
        initialize(Cluster("127.0.0.1:1", 2, 0, "command line"))
    initialize(None)  # alone: nothing to do, whatever JAX's state


def test_one_process_loads_every_row_and_a_plan_for_another_split_is_refused():
    plan = make_plan("gpt", mesh={"data": 2, "fsdp": 2, "tensor": 2}, micro_batch=2)
    mesh = build_mesh(plan, jax.devices()[:8])
    assert process_rows(plan, mesh) == (0, 1)
    other = dataclasses.replace(plan, batch=dataclasses.replace(plan.batch, per_process_batch=plan.batch.global_batch // 2))
    with pytest.raises(RunError, match="not one block of the plan's 4 rows per process"):
        process_rows(other, mesh)
