"""Length-bucketed batching, planned: the bucket lengths, each bucket's rows from the token budget,
the exact steps per epoch, the padding to expect, and the memory of the most demanding shape.

A bucket of length L gets rows = ⌊budget / L⌋ rounded down to a multiple of data-parallel ×
accumulation (× processes holding distinct rows), so every batch splits evenly and holds at most
`token_budget` positions. The plan lists every [rows, L] shape: XLA compiles one train-step program
per shape and no other. Steps per epoch are exact: Σ over buckets of examples // rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from capidsl.plan.errors import PlanError
from capidsl.plan.plan import BatchPlan, BucketPlan, DataPlan, Lint

MIN_BUCKET = 8


def default_lengths(seq_len: int) -> tuple[int, ...]:
    """seq_len and its halvings down to seq_len/8 (those of at least 8 tokens), ascending."""
    return tuple(sorted({seq_len >> k for k in range(4) if seq_len >> k >= MIN_BUCKET} | {seq_len}))


@dataclass(frozen=True)
class BucketLayout:
    data: DataPlan
    batch: BatchPlan
    steps_per_epoch: int
    val_batches: int
    lints: tuple[Lint, ...]


def padding(buckets) -> tuple[float, float]:
    """(expected padding share of positions with these buckets, padding to the longest bucket instead)."""
    real = sum(b.real_tokens for b in buckets)
    bucketed = sum(b.train_examples * b.length for b in buckets)
    naive = sum(b.train_examples for b in buckets) * max(b.length for b in buckets)
    return (1 - real / bucketed if bucketed else 0.0), (1 - real / naive if naive else 0.0)


def plan_buckets(config, data: DataPlan, batch: BatchPlan, blocks: int, where) -> BucketLayout:
    """The bucketed layout for the recipe's `data:` section (`config`), replacing the packed one."""
    from capidsl.data.buckets import bucket_counts  # counts documents; imports no grain

    if data.kind != "lm":
        raise PlanError("bucketed batching groups documents by length: it needs a language model", subject="data.batching",
                        location=where("data.batching"))
    if data.streams:
        raise PlanError("hidden_state: carry reads each row as one contiguous stream; bucketed rows are separate "
                        "documents", subject="data.batching", location=where("data.batching"),
                        hint="use hidden_state: reset with bucketed batching, or data.batching: packed")
    lengths = tuple(config.buckets) if config.buckets else default_lengths(data.seq_len)
    if list(lengths) != sorted(set(lengths)) or lengths[-1] != data.seq_len:
        raise PlanError(f"bucket lengths {list(lengths)} must rise strictly and end at model.seq_len ({data.seq_len})",
                        subject="data.buckets", location=where("data.buckets"))
    budget = int(config.token_budget or batch.global_batch * data.seq_len)
    quantum = math.lcm(batch.data_parallel * batch.accumulation, blocks)
    counts = bucket_counts(data, lengths)
    buckets = []
    for i, length in enumerate(lengths):
        rows = budget // length // quantum * quantum
        if rows == 0:
            raise PlanError(f"a token budget of {budget} holds {budget // length} rows of the {length}-token bucket, "
                            f"fewer than the {quantum} that data-parallel × accumulation need",
                            subject="data.token_budget", location=where("data.token_budget"),
                            hint=f"a budget of at least {quantum * lengths[-1]}")
        (n, real), (n_val, _) = counts["train"][i], counts["val"][i]
        buckets.append(BucketPlan(length=length, rows=rows, train_examples=n, val_examples=n_val,
                                  batches_per_epoch=n // rows, real_tokens=real))
    steps = sum(b.batches_per_epoch for b in buckets)
    found = tuple(Lint("warning", "bucket-dropped", f"bucket {b.length} holds {b.train_examples} training examples, "
                       f"fewer than one batch of {b.rows}: they are never trained on",
                       str(where("data.buckets") or "") or None)
                  for b in buckets if 0 < b.train_examples < b.rows)
    widest = max(buckets, key=lambda b: b.rows)
    micro = widest.rows // (batch.data_parallel * batch.accumulation)
    new_batch = replace(batch, global_batch=widest.rows, micro_batch=micro, tokens_per_step=budget,
                        per_process_batch=widest.rows // blocks)
    new_data = replace(data, buckets=tuple(buckets), train_examples=sum(b.train_examples for b in buckets),
                       val_examples=sum(b.val_examples for b in buckets))
    val_batches = sum(-(-b.val_examples // b.rows) for b in buckets)
    return BucketLayout(new_data, new_batch, steps, val_batches, found)
