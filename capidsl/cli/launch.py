"""`capidsl launch RECIPE_OR_PLAN --cluster slurm|kubernetes`: the launcher files for a multi-host run of a plan.

A multi-host run is one `capidsl run` per host, joined by jax.distributed; nothing in the recipe
or the code changes, only how the processes are started. This prints what starts them, filled in
from the plan's topology (hosts, devices per host, device kind):
- slurm: an sbatch script, one task per node, all of its accelerators; `srun` starts the tasks,
  and `capidsl run` reads SLURM's variables through JAX's detector (coordinator: the first node).
- kubernetes: a headless Service and an Indexed Job (one pod per host); each pod is given the
  coordinator (pod 0 by its stable DNS name), the process count and its completion index.
A recipe is planned for the cluster named by --devices/--device-kind (like `capidsl plan`); a
plan.json is used as compiled. Module level imports stay light: this command is planning, not JAX.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

from capidsl.errors import UsageError

GPU_KINDS = ("a100-40g", "a100-80g", "h100", "h200", "l4")
TPU_KINDS = ("tpu-v4", "tpu-v5e", "tpu-v5p", "tpu-v6e")
K8S_PORT = 55527  # JAX's own default coordinator port for Kubernetes
SHARED = "/shared"  # where a Kubernetes pod mounts the shared volume


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RECIPE_OR_PLAN",
                   help="a recipe (.yaml) or a compiled plan (.json), as the cluster's hosts will see its path")
    p.add_argument("--cluster", required=True, choices=("slurm", "kubernetes"), help="the kind of launcher to print")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable; passed on to every process)")
    p.add_argument("--devices", type=int, metavar="N", help="devices in the cluster (a recipe needs them)")
    p.add_argument("--device-kind", metavar="KIND", help="a100-40g, a100-80g, h100, h200, l4, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e, cpu")
    p.add_argument("--processes", type=int, metavar="P", help="hosts (default: the kind's devices per host)")
    p.add_argument("--run-dir", metavar="DIR",
                   help="the run directory every process shares (a shared file system or gs://); default the plan's")
    p.add_argument("--name", metavar="NAME", help="job name (default: the plan's name)")
    p.add_argument("--port", type=int, metavar="PORT",
                   help=f"coordinator port (default: SLURM's job-id rule in JAX; {K8S_PORT} on Kubernetes)")
    p.add_argument("--partition", metavar="PARTITION", help="slurm: the partition to submit to")
    p.add_argument("--time", metavar="HH:MM:SS", default="24:00:00", help="slurm: the time limit (default 24:00:00)")
    p.add_argument("--image", metavar="IMAGE", help="kubernetes: a container image with capidsl installed")
    p.add_argument("--volume", metavar="CLAIM",
                   help=f"kubernetes: a ReadWriteMany PersistentVolumeClaim, mounted at {SHARED} in every pod, "
                   f"for the run directory (default run directory {SHARED}/runs/NAME)")
    p.add_argument("--namespace", metavar="NS", help="kubernetes: the namespace (default: kubectl's)")
    p.add_argument("--out", metavar="FILE", help="write the file here instead of printing it")


def _plan(args):
    if Path(args.target).suffix == ".json":
        if args.devices or args.device_kind or args.processes:
            raise UsageError("a plan.json carries its topology: --devices, --device-kind and --processes apply to recipes")
        if args.overrides:
            raise UsageError("--set applies to recipes; a plan.json is run exactly as compiled")
        from capidsl.plan.plan import Plan

        try:
            return Plan.loads(Path(args.target).read_text())
        except OSError as err:
            raise UsageError(f"cannot read {args.target}: {err.strerror}") from err
    if args.devices is None:
        raise UsageError("planning a recipe for a cluster needs its size: --devices N (and --device-kind)")
    from capidsl.plan.compile import compile_plan
    from capidsl.plan.topology import simulated
    from capidsl.recipe import Recipe

    topology = simulated(args.device_kind or "cpu", args.devices, processes=args.processes)
    return compile_plan(Recipe.from_yaml(args.target, overrides=args.overrides), topology)


def job_name(text: str) -> str:
    """A name Kubernetes and SLURM accept: lowercase letters, digits and '-', starting with a letter (DNS-1123)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = name if name and name[0].isalpha() else f"capidsl-{name}".rstrip("-")
    return name[:50].rstrip("-")


def run_command(args, run_dir: str) -> list[str]:
    """The `capidsl run` every process executes (the multi-host flags come from the launcher)."""
    cmd = ["capidsl", "run", args.target, "--run-dir", run_dir]
    for s in args.overrides:
        cmd += ["--set", s]
    return cmd


def _header(plan, run_dir: str) -> list[str]:
    t, m, b = plan.topology, plan.mesh, plan.batch
    from capidsl.plan.mesh import describe

    lines = [f"capidsl launch: {plan.name} (fingerprint {plan.fingerprint})",
             f"{t.process_count} hosts × {t.devices_per_process} {t.device_kind}; mesh {describe(m)}; "
             f"each host loads {b.per_process_batch} of the {b.global_batch} rows of a batch",
             f"run directory {run_dir}: every process writes its checkpoint shards there, so it must be one "
             "shared file system for all hosts"]
    if plan.comms is not None and plan.comms.across_hosts:
        from capidsl.plan.render import human_bytes

        lines.append(f"traffic between hosts: the {', '.join(plan.comms.across_hosts)} axis "
                     f"(communication per device and step, all axes: {human_bytes(plan.comms.total)}; see `capidsl plan`)")
    lines += [f"{lint.level}: {lint.message}" for lint in plan.lints if lint.code == "tensor-crosses-hosts"]
    return lines


def slurm_script(plan, args, run_dir: str) -> str:
    t = plan.topology
    name = job_name(args.name or plan.name)
    sbatch = [f"--job-name={name}", f"--nodes={t.process_count}", "--ntasks-per-node=1",
              f"--time={args.time}", f"--output={name}-%j.out"]
    if t.device_kind in GPU_KINDS:
        sbatch.append(f"--gpus-per-node={t.devices_per_process}")
    if args.partition:
        sbatch.append(f"--partition={args.partition}")
    lines = ["#!/bin/bash"] + [f"#SBATCH {s}" for s in sbatch] + [""]
    lines += [f"# {x}" for x in _header(plan, run_dir)]
    lines += ["#", "# srun starts one task per node; `capidsl run` reads SLURM_NTASKS, SLURM_PROCID and the step's",
              "# node list (JAX's SLURM detector) and joins the others, process 0 on the first node listening on",
              "# JAX_COORDINATOR_PORT (JAX's default: 61440 + job id mod 4096). Each task sees all of its node's",
              "# devices. --kill-on-bad-exit ends the whole step when one task fails, so that none waits forever.",
              "set -euo pipefail", "# (activate the environment that provides `capidsl` here, if the nodes need it)", ""]
    if args.port:
        lines.append(f"export JAX_COORDINATOR_PORT={int(args.port)}")
    if plan.xla_flags:  # read when JAX starts: set for every task before it does (the plan lists them)
        lines.append(f'export XLA_FLAGS="${{XLA_FLAGS:-}} {" ".join(plan.xla_flags)}"')
    lines += [f"srun --kill-on-bad-exit=1 {shlex.join(run_command(args, run_dir))}", ""]
    return "\n".join(lines)


def kubernetes_manifest(plan, args, run_dir: str) -> str:
    import yaml

    if not args.image:
        raise UsageError("--cluster kubernetes needs --image: a container image with capidsl (and the recipe) inside")
    t = plan.topology
    if t.process_count > 1 and not args.volume:
        raise UsageError("a multi-host run needs a run directory every pod shares: give --volume CLAIM "
                         "(a ReadWriteMany PersistentVolumeClaim)")
    name, port = job_name(args.name or plan.name), int(args.port or K8S_PORT)
    meta = {"name": name} | ({"namespace": args.namespace} if args.namespace else {})
    # Pods of an Indexed Job are named NAME-<index> and, with the headless Service as their subdomain,
    # reachable as NAME-<index>.NAME: pod 0 is the coordinator.
    command = run_command(args, run_dir) + ["--coordinator", f"{name}-0.{name}:{port}",
                                            "--num-processes", str(t.process_count),
                                            "--process-id", "$(JOB_COMPLETION_INDEX)"]
    limits = {}
    if t.device_kind in GPU_KINDS:
        limits["nvidia.com/gpu"] = t.devices_per_process
    elif t.device_kind in TPU_KINDS:
        limits["google.com/tpu"] = t.devices_per_process
    container = {
        "name": "capidsl", "image": args.image, "command": command,
        "env": [{"name": "JOB_COMPLETION_INDEX",  # also set by Kubernetes; declared so that $(...) expands
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
                {"name": "PYTHONUNBUFFERED", "value": "1"}]
               + ([{"name": "XLA_FLAGS", "value": " ".join(plan.xla_flags)}] if plan.xla_flags else []),
        "ports": [{"containerPort": port, "name": "coordinator"}],
    }
    if limits:
        container["resources"] = {"limits": limits}
    volumes = []
    if args.volume:
        container["volumeMounts"] = [{"name": "shared", "mountPath": SHARED}]
        volumes = [{"name": "shared", "persistentVolumeClaim": {"claimName": args.volume}}]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": meta,
               "spec": {"clusterIP": "None", "selector": {"job-name": name},
                        "ports": [{"name": "coordinator", "port": port}]}}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": {"completionMode": "Indexed", "completions": t.process_count, "parallelism": t.process_count,
                    "backoffLimit": 0,  # one pod failing fails the run: resume it by applying the Job again
                    "template": {"spec": {"subdomain": name, "restartPolicy": "Never", "containers": [container]}
                                 | ({"volumes": volumes} if volumes else {})}}}
    head = "".join(f"# {x}\n" for x in _header(plan, run_dir))
    head += "# kubectl apply -f THIS_FILE; each pod runs one `capidsl run`, pod 0 is the coordinator.\n"
    return head + yaml.safe_dump_all([service, job], sort_keys=False, default_flow_style=False)


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    run_dir = args.run_dir or (f"{SHARED}/runs/{job_name(args.name or plan.name)}" if args.cluster == "kubernetes"
                               and args.volume else plan.run_dir)
    if run_dir.startswith("gs://") and plan.topology.process_count > 1:
        raise UsageError(f"--run-dir {run_dir}: a gs:// run directory serves a single-process run; a multi-host run "
                         "writes its checkpoint shards to one shared file system")
    text = slurm_script(plan, args, run_dir) if args.cluster == "slurm" else kubernetes_manifest(plan, args, run_dir)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({plan.topology.process_count} processes)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
