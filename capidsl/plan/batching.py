"""Batching: global batch = micro-batch × accumulation × data-parallel size, checked, with the missing one derived.

`micro_batch: auto` takes the largest per-device micro-batch that divides the per-replica batch and
whose memory estimate fits the device (the `fits` callback), then derives the accumulation factor
that keeps the global batch — "adjust the batch to the hardware, accumulate for large models".
"""

from __future__ import annotations

from typing import Callable

from capidsl.plan.errors import PlanError


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
