"""Joining a multi-host run: `jax.distributed` from the command line or the cluster's environment.

A multi-host run is one `capidsl run` process per host, joined by JAX's own multi-controller
runtime; the plan's mesh then spans the devices of every process. Which cluster this process is
part of comes from `--coordinator HOST:PORT --num-processes N --process-id I`, or, where a
launcher set it, from the environment JAX itself knows (SLURM, Open MPI, Cloud TPU, Kubernetes),
read through JAX's own cluster detectors. It must happen before anything asks JAX for devices.

Two choices worth knowing:
- The detected values are passed to `jax.distributed.initialize` explicitly, with JAX's
  detection switched off, because under SLURM and Open MPI JAX would also restrict each process
  to the one device numbered by its local rank (a process per GPU). capidsl runs a process per
  host with all of that host's devices, as the plan's topology says; a cluster run with a process
  per device restricts them itself (`JAX_LOCAL_DEVICE_IDS`, `CUDA_VISIBLE_DEVICES`).
- A detected cluster of one process is not joined: `srun -n1 capidsl run` or an interactive
  allocation trains alone, without opening the coordinator's port.

Also here, because it is what each process does differently: which rows of every global batch
this process loads (`process_rows`), read off the real mesh, since a mesh's device order (on TPU,
made by `jax.make_mesh` to match the interconnect) decides which rows each process's devices hold.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from capidsl.errors import UsageError
from capidsl.exec.errors import RunError

# JAX's cluster detectors by class name, as a person would name the launcher.
_LAUNCHERS = {"SlurmCluster": "SLURM", "OmpiCluster": "Open MPI", "GceTpuCluster": "Cloud TPU",
              "GkeTpuCluster": "Cloud TPU (GKE)", "K8sCluster": "Kubernetes"}


@dataclass(frozen=True)
class Cluster:
    """How this process joins a run of several: the coordinator (process 0's HOST:PORT), the
    number of processes, this one's id, and where those came from."""

    coordinator: str
    num_processes: int
    process_id: int
    source: str  # "command line", "SLURM", "Open MPI", "Kubernetes", ... or "command line and SLURM"


def parse_coordinator(text: str) -> str:
    """HOST:PORT (HOST may be a name, an IPv4 address or a bracketed IPv6 address), checked."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator {text!r}: expected HOST:PORT, e.g. 10.0.0.1:1234 or node001:1234")
    return f"{host}:{int(port)}"


def _detected_environment():
    """JAX's cluster detector that recognises this process's environment (in JAX's own order), or None."""
    try:
        from jax._src import clusters  # JAX's detectors: no public API lists them (docs/stack-notes.md)
    except ImportError:
        return None
    for env in getattr(clusters.ClusterEnv, "_cluster_types", ()):  # private: absent in another jax, none found
        if env.opt_in_only_method:  # mpi4py: only when asked for, as in JAX
            continue
        try:
            if env.is_env_present():
                return env
        except Exception:  # noqa: BLE001 - a detector that cannot even look (no kubernetes API) found nothing
            continue
    return None


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> Cluster | None:
    """The cluster this process belongs to, or None for a run on its own.

    Values given on the command line win; the others come from the launcher's environment
    (`JAX_COORDINATOR_ADDRESS` and `JAX_COORDINATOR_PORT` are honoured as JAX honours them).
    """
    environ = os.environ
    source = "command line" if (coordinator, num_processes, process_id) != (None, None, None) else None
    coordinator = coordinator or environ.get("JAX_COORDINATOR_ADDRESS") or None
    if None in (coordinator, num_processes, process_id):
        env = _detected_environment()
        if env is not None:
            launcher = _LAUNCHERS.get(env.__name__, env.__name__)
            try:
                if num_processes is None:
                    num_processes = int(env.get_process_count())
                if process_id is None:
                    process_id = int(env.get_process_id())
                if coordinator is None and num_processes > 1:
                    coordinator = env.get_coordinator_address(
                        timeout_secs=None, override_coordinator_port=environ.get("JAX_COORDINATOR_PORT"))
            except Exception as err:  # noqa: BLE001 - the launcher's environment is incomplete
                raise RunError(f"{launcher} was detected but its environment does not say how to join: "
                               f"{type(err).__name__}: {err}", subject="distributed",
                               hint="give --coordinator HOST:PORT --num-processes N --process-id I") from err
            source = f"{source} and {launcher}" if source else launcher
    if source is None and coordinator is None:
        return None
    if num_processes is not None and num_processes == 1 and process_id in (None, 0):
        return None  # a cluster of one: nothing to join
    missing = [flag for flag, v in (("--coordinator", coordinator), ("--num-processes", num_processes),
                                    ("--process-id", process_id)) if v is None]
    if missing:
        raise UsageError(f"a multi-process run needs {', '.join(missing)} too (no cluster launcher was detected "
                         "that would say)")
    coordinator = parse_coordinator(coordinator)
    if num_processes < 1:
        raise UsageError(f"--num-processes must be at least 1, not {num_processes}")
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id must be between 0 and {num_processes - 1} for {num_processes} processes, "
                         f"not {process_id}")
    return Cluster(coordinator=coordinator, num_processes=int(num_processes), process_id=int(process_id),
                   source=source or "JAX_COORDINATOR_ADDRESS")


def initialize(cluster: Cluster | None, *, timeout_s: int = 300) -> None:
    """Join `cluster` (nothing for None): CPU collectives by gloo, then `jax.distributed.initialize`.

    Must run before JAX's backends start (anything that asks for devices); a process that already
    joined (a caller that initialised JAX itself) is left as it is. Errors JAX raises (a port in
    use, bad arguments) become a RunError; a coordinator that does not answer within `timeout_s`
    ends the process from inside JAX (`DEADLINE_EXCEEDED ... RegisterTask`), which no caller can catch.
    """
    if cluster is None:
        return
    import jax
    from jax._src import xla_bridge

    if jax.distributed.is_initialized():
        return
    if xla_bridge.backends_are_initialized():
        raise RunError("JAX's devices were already in use when this process was asked to join a multi-process run",
                       subject="distributed",
                       hint="join first: run `capidsl run` as its own process, or call capidsl.exec.distributed."
                       "initialize before anything touches jax.devices()")
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        # Collectives between processes' CPU devices (the default in jax 0.10, stated for other versions;
        # harmless on GPU and TPU hosts, whose accelerators have their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=cluster.coordinator, num_processes=cluster.num_processes,
                                   process_id=cluster.process_id, cluster_detection_method="deactivate",
                                   initialization_timeout=int(timeout_s))
    except Exception as err:  # noqa: BLE001 - a failure to join is one fact for the user, whatever raised it
        raise RunError(f"process {cluster.process_id} of {cluster.num_processes} could not join the run at "
                       f"{cluster.coordinator} ({cluster.source}): {type(err).__name__}: {str(err)[:300]}",
                       subject="distributed",
                       hint="start every process with the same --coordinator and --num-processes, process 0 on "
                       "the coordinator's host, with that port free and reachable") from err


def process_rows(plan, mesh) -> tuple[int, int]:
    """(block, blocks): this process loads rows [block·B/blocks, (block+1)·B/blocks) of each global batch.

    Read off the batch sharding on the real mesh: the rows this process's devices hold must be one
    contiguous block of `plan.batch.per_process_batch` rows (processes that are replicas of each
    other, such as the hosts a tensor axis spans, load the same block).
    """
    from capidsl.exec.step import batch_sharding

    b = plan.batch.global_batch
    spans = sorted({(s[0].start or 0, b if s[0].stop is None else s[0].stop)
                    for s in batch_sharding(plan, mesh).addressable_devices_indices_map((b,)).values()})
    start, stop = spans[0][0], spans[0][0]
    for lo, hi in spans:
        if lo > stop:
            break
        stop = max(stop, hi)
    per = plan.batch.per_process_batch
    if stop != spans[-1][1] or stop - start != per or start % per:
        raise RunError(f"this process's devices hold rows {sorted(spans)} of each batch of {b}, not one block of "
                       f"the plan's {per} rows per process", subject="distributed",
                       hint="re-plan for this cluster (`capidsl run RECIPE` compiles for the live processes); a "
                       "plan.json made for another number of processes does not fit")
    return start // per, b // per


def is_primary() -> bool:
    """Whether this process speaks for the run (process 0): it alone writes logs, metrics and exports."""
    import jax

    return jax.process_index() == 0


def _preemption_service() -> bool:
    """Whether JAX's preemption service runs here: a multi-process run with the service enabled."""
    import jax
    from jax._src import distributed as jax_distributed

    manager = getattr(jax_distributed.global_state, "preemption_sync_manager", None)
    return jax.process_count() > 1 and manager is not None


def signals_to_catch() -> tuple[signal.Signals, ...]:
    """The signals the run loop handles itself.

    SIGTERM and SIGINT alone; in a multi-process run SIGTERM is left to JAX's preemption service,
    which tells every process, so that all of them stop and checkpoint at the same step (a process
    that stopped on its own would wait forever for the others inside the collective save).
    """
    return (signal.SIGINT,) if _preemption_service() else (signal.SIGTERM, signal.SIGINT)


def preempted(step: int) -> bool:
    """True, on every process at the same step, once any process of the run has received SIGTERM.

    JAX's protocol: each process calls this after every step; the step they stop at is one past the
    furthest any of them had reached when the notice spread. Always False for a run on its own.
    """
    if not _preemption_service():
        return False
    from jax.experimental import multihost_utils

    return bool(multihost_utils.reached_preemption_sync_point(int(step)))
