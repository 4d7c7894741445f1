"""Each process of a multi-host run loads its own rows, and together they are exactly the one-process batches.

capidsl shards by rows of the global batch, not by grain's `ShardOptions` (which would give each
process its own shuffled part of the records, so the batches would depend on the process count):
global batch b is one fixed slice of the epoch's permutation, and process p of P takes rows
[p·B/P, (p+1)·B/P) of it. So the processes' rows, in process order, are the single-process batch
row for row — which is what lets two processes train bitwise like one (test_two_processes.py) —
and every window of an epoch is used exactly once, bar the N mod B the epoch drops.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from capidsl.data import describe, train_loader
from capidsl.plan.plan import DataPlan

B = 8


def data_plan(**kw) -> DataPlan:
    base = dict(source="synthetic", path=None, field="text", tokenizer="byte", kind="lm", vocab_size=256, seq_len=16,
                input_dim=0, num_classes=0, validation_fraction=0.1, shuffle=True, seed=5, workers=0, prefetch=2,
                synthetic_examples=100, train_examples=0, val_examples=0)
    return DataPlan(**base | kw)


def batches(data: DataPlan, process: int, processes: int, count: int, skip: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` batches of process `process` of `processes`, after resuming at batch `skip` (a fresh loader
    given the state another loader had there)."""
    it = train_loader(data, global_batch=B, process_index=process, process_count=processes)
    if skip:
        first = train_loader(data, global_batch=B, process_index=process, process_count=processes)
        for _ in range(skip):
            next(first)
        it.set_state(first.get_state())
    return [next(it) for _ in range(count)]


def window_ids(batch) -> list[bytes]:
    full = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    return [row.astype(np.uint8).tobytes() for row in full]


@pytest.mark.parametrize("processes", [2, 4])
def test_the_processes_rows_are_the_single_process_batch_row_for_row(processes):
    data = data_plan()
    steps = describe(data).train_examples // B
    count = 2 * steps + 1  # across two epoch boundaries
    whole = batches(data, 0, 1, count)
    parts = [batches(data, p, processes, count) for p in range(processes)]
    for b in range(count):
        for key in ("inputs", "targets", "mask"):
            joined = np.concatenate([parts[p][b][key] for p in range(processes)])
            np.testing.assert_array_equal(joined, whole[b][key], err_msg=f"batch {b} {key}")
        assert {len(parts[p][b]["inputs"]) for p in range(processes)} == {B // processes}


def test_each_epoch_uses_every_window_once_bar_the_dropped_remainder():
    data = data_plan()
    n = describe(data).train_examples
    steps = n // B
    for epoch in range(2):
        seen = [w for p in range(2) for batch in batches(data, p, 2, steps, skip=epoch * steps) for w in window_ids(batch)]
        assert len(seen) == len(set(seen)) == steps * B == n - n % B


def _rows_in_own_process(args):
    """Run in a separate OS process (spawned: nothing shared with the test's interpreter)."""
    process, processes, count, skip = args
    return [batch["inputs"] for batch in batches(data_plan(), process, processes, count, skip)]


def test_separate_processes_resumed_mid_epoch_load_complementary_rows():
    # Each process resumes from its own loader state; the states hold the global batch index, so one
    # checkpoint position serves every process, whatever the process count.
    count, skip = 6, 7
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_rows_in_own_process, [(0, 2, count, skip), (1, 2, count, skip)]))
    whole = batches(data_plan(), 0, 1, count, skip)
    for b in range(count):
        np.testing.assert_array_equal(np.concatenate([rows[0][b], rows[1][b]]), whole[b]["inputs"])
    states = {bytes(repr(train_loader(data_plan(), global_batch=B, process_index=p, process_count=2).get_state()),
                    "utf8") for p in range(2)}
    assert len(states) == 1
