"""Batching: global batch = micro-batch × accumulation × data-parallel size, checked, with the missing one derived.

`micro_batch: auto` takes the largest per-device micro-batch that divides the per-replica batch and
whose memory estimate fits the device (the `fits` callback), then derives the accumulation factor
that keeps the global batch — "adjust the batch to the hardware, accumulate for large models".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from capidsl.plan.errors import PlanError
from capidsl.plan.memory import Workload
from capidsl.plan.mesh import batch_blocks
from capidsl.plan.plan import BatchPlan, HiddenStatePlan, MeshPlan, Topology
from capidsl.plan.recurrent import plan_hidden_state


@dataclass(frozen=True)
class Batching:
    """The batch split over devices and processes, and the state carried from one batch to the next."""

    batch: BatchPlan
    hidden: HiddenStatePlan | None  # a stateful family's carried state, placed
    blocks: int  # processes holding distinct rows of each batch
    workload: Workload  # the memory estimate's inputs, the carried state's bytes included


def plan_batching(training, topology: Topology, mesh: MeshPlan, workload: Workload, where) -> Batching:
    """The recipe's `training:` batch settings on `mesh`: micro-batch, accumulation, rows per process."""
    model, dp = workload.model, mesh.data_parallel
    micro, accumulation = derive(
        training.batch_size, training.micro_batch, training.gradient_accumulation_steps, dp,
        fits=lambda m: workload.at(m, training.batch_size // dp // m).fits, where=where)
    # a state carried across batches (placed once the batch is known to split; `micro_batch: auto` above
    # sized micro-batches without it: it is B × layers × width, small beside the activations)
    try:
        hidden = plan_hidden_state(model.family, model.cfg, training.batch_size, mesh, model.rules)
    except PlanError as err:
        err.location = err.location or where("mesh")
        raise
    if hidden is not None:
        workload = replace(workload, state_bytes=workload.state_bytes + hidden.bytes_per_device)
    global_batch = training.batch_size
    blocks = batch_blocks(mesh, topology, where("mesh"))
    if global_batch % blocks:
        raise PlanError(f"the global batch ({global_batch}) does not split over {blocks} processes",
                        subject="training.batch_size", location=where("training.batch_size"))
    batch = BatchPlan(global_batch=global_batch, micro_batch=micro, accumulation=accumulation, data_parallel=dp,
                      seq_len=model.seq_len, tokens_per_step=global_batch * model.seq_len,
                      per_process_batch=global_batch // blocks)
    return Batching(batch=batch, hidden=hidden, blocks=blocks, workload=workload)


def derive(global_batch: int, micro: int | str | None, accumulation: int | None, data_parallel: int,
           fits: Callable[[int], bool], where=lambda key: None) -> tuple[int, int]:
    """(micro_batch, accumulation) for the recipe's batch settings."""
    if global_batch < data_parallel:
        raise PlanError(f"the global batch ({global_batch}) is smaller than the data-parallel size ({data_parallel}): "
                        "some devices would get no rows", subject="training.batch_size", location=where("training.batch_size"),
                        hint=f"use a batch of at least {data_parallel}, or fewer data/fsdp ways")
    if global_batch % data_parallel:
        raise PlanError(f"the global batch ({global_batch}) does not split over {data_parallel} data-parallel shards",
                        subject="training.batch_size", location=where("training.batch_size"),
                        hint=f"use a multiple of {data_parallel}")
    per_replica = global_batch // data_parallel
    if micro == "auto":
        if accumulation is not None:
            raise PlanError("micro_batch: auto derives the accumulation factor; do not also set gradient_accumulation_steps",
                            subject="training.micro_batch", location=where("training.micro_batch"))
        for m in sorted((d for d in range(1, per_replica + 1) if per_replica % d == 0), reverse=True):
            if fits(m):
                return m, per_replica // m
        raise PlanError("even a micro-batch of 1 does not fit the device memory by the estimate",
                        subject="training.micro_batch", location=where("training.micro_batch"),
                        hint="shard further (fsdp/tensor), rematerialise (training.remat: full) or use bigger devices")
    if micro is not None and accumulation is not None:
        if micro * accumulation * data_parallel != global_batch:
            raise PlanError(f"batch_size {global_batch} ≠ micro_batch {micro} × accumulation {accumulation} × "
                            f"data-parallel {data_parallel} = {micro * accumulation * data_parallel}",
                            subject="training.batch_size", location=where("training.batch_size"),
                            hint="drop one of micro_batch / gradient_accumulation_steps and it is derived")
        return micro, accumulation
    if micro is not None:
        if per_replica % micro:
            raise PlanError(f"micro_batch {micro} does not divide the {per_replica} rows each data-parallel shard gets",
                            subject="training.micro_batch", location=where("training.micro_batch"))
        return micro, per_replica // micro
    accumulation = accumulation or 1
    if per_replica % accumulation:
        raise PlanError(f"gradient_accumulation_steps {accumulation} does not divide the {per_replica} rows each "
                        f"data-parallel shard gets (batch_size {global_batch} over {data_parallel} shards)",
                        subject="training.gradient_accumulation_steps",
                        location=where("training.gradient_accumulation_steps"),
                        hint="choose a divisor of " + str(per_replica))
    return per_replica // accumulation, accumulation
