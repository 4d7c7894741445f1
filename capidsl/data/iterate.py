"""One grain iterator for every loader: a batch table (global batch index → this process's rows)
read ahead in the training process, or prepared by `data.workers` worker processes.

The table is a pure function of the batch index, so the batches and the iterator's position are the
same whoever computes them: `workers: 2` yields bit for bit the batches of `workers: 0`, and its
`get_state()`/`set_state()` resume exactly (tests/data). Worker processes are spawned, never forked
(the training process runs JAX's threads), receive the table pickled, and end with the training
process even when it is killed.
"""

from __future__ import annotations

import os
import threading
import time

import grain

ENDLESS = 2**62  # batch indices: the table maps any index to its epoch and position
PARENT_POLL_S = 1.0


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """In each worker: end when the training process is gone. A SIGKILLed trainer (preemption, the
    kill tests) cannot stop its workers, and a worker blocked on a full queue would wait forever."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="capidsl-parent-watch", daemon=True).start()


def _absl_flags_parsed() -> None:
    """grain's worker start-up reads absl flags; outside an absl app they were never parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def iterate(table, data):
    """An endless, resumable iterator of `table(0), table(1), ...` with the plan's read-ahead and workers."""
    ds = grain.MapDataset.range(ENDLESS).map(table)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(1, int(data.prefetch))))
    workers = int(data.workers)
    if workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=max(1, int(data.prefetch))),
                            worker_init_fn=_exit_with_parent)
    return iter(it)
