"""grain pipelines: packed windows, a fresh seeded order every epoch, per-process rows, exact resume.

Global batch `b` (counting from 0 over the whole run) is the slice `[i*B, (i+1)*B)` of epoch `e`'s
permutation of all windows, where `e, i = divmod(b, steps_per_epoch)`; each epoch drops its last
`N mod B` windows (a different remainder every epoch). Process `p` of `P` takes rows
`[p*B/P, (p+1)*B/P)` of each batch, so the processes' rows are disjoint and their union is every
batch exactly once. grain runs this index → batch map (read ahead, or in `data.workers` worker
processes: capidsl/data/iterate.py) and keeps the
position (`next_index`) as its iterator state, so a resumed loader yields the same batches.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from capidsl.data.errors import DataError
from capidsl.data.iterate import iterate
from capidsl.data.sources import classification_arrays, lm_masks, lm_streams, source_key


class _Windows:
    """Examples of one split as a random-access table: row i → dict of numpy arrays."""

    def __init__(self, data, split: int):
        self.kind = data.kind
        if data.kind == "classification":
            self.x, self.y = classification_arrays(source_key(data))[split]
            self.n = len(self.y)
        else:
            self.stream = lm_streams(source_key(data))[split]
            masks = lm_masks(source_key(data))  # supervised: 1 on completions, 0 on prompts
            self.loss_mask = None if masks is None else masks[split]
            self.window = data.seq_len + 1
            self.n = len(self.stream) // self.window

    def rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        if self.kind == "classification":
            return {"x": self.x[idx], "y": self.y[idx], "mask": np.ones(len(idx), np.float32)}
        starts = idx[:, None] * self.window + np.arange(self.window)[None, :]
        tokens = np.asarray(self.stream[starts], dtype=np.int32)
        if self.loss_mask is None:
            mask = np.ones(tokens[:, 1:].shape, np.float32)
        else:  # each target's own mask (a window may start mid-example: its prompt targets stay 0)
            mask = np.asarray(self.loss_mask[starts[:, 1:]], np.float32)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


@lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)


class _BatchTable:
    """Global batch index → this process's rows of that batch (the grain source)."""

    def __init__(self, data, global_batch: int, process_index: int, process_count: int):
        if global_batch % process_count:
            raise DataError(f"global batch {global_batch} does not split over {process_count} processes", subject="batch")
        self.windows = _Windows(data, 0)
        if self.windows.n < global_batch:
            raise DataError(f"the training split holds {self.windows.n} examples, fewer than one batch of {global_batch}",
                            subject="data", hint="use more data, a smaller batch or a shorter seq_len")
        self.seed, self.shuffle, self.batch = data.seed, data.shuffle, global_batch
        self.steps_per_epoch = self.windows.n // global_batch
        per = global_batch // process_count
        self.rows = slice(process_index * per, (process_index + 1) * per)

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(b), self.steps_per_epoch)
        perm = _permutation(self.seed, epoch, self.windows.n, self.shuffle)
        idx = perm[i * self.batch:(i + 1) * self.batch][self.rows]
        return self.windows.rows(np.sort(idx) if not self.shuffle else idx)


def train_loader(data, *, global_batch: int, process_index: int = 0, process_count: int = 1):
    """An endless iterator of this process's rows of each training batch; `get_state`/`set_state` resume exactly."""
    table = _BatchTable(data, global_batch, process_index, process_count)
    return iterate(table, data)


def eval_batches(data, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
    """The validation split in order, as this process's rows of full global batches (the same every call)."""
    windows = _Windows(data, 1)
    count = windows.n // global_batch
    if max_batches is not None:
        count = min(count, max_batches)
    per = global_batch // process_count
    out = []
    for b in range(count):
        idx = np.arange(b * global_batch, (b + 1) * global_batch)[process_index * per:(process_index + 1) * per]
        out.append(windows.rows(idx))
    return out
