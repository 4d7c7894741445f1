"""Streams for a carried recurrent state: every batch row reads one contiguous stream, in order.

With `DataPlan.streams = B` (the global batch), a split's token stream is cut into B equal
contiguous streams of L = N // B tokens, and global batch b of epoch e = b // W (W = segments
per stream, (L − 1) // seq_len) gives row r the segment `i = b mod W` of stream `order_e[r]`:
tokens [o_e + order_e[r]·L + i·T, … + T + 1) of the stream rotated by o_e. Consecutive batches
therefore continue every row exactly where it stopped, which is what lets a model carry its
state from one batch to the next; `reset` is 1 in a row's first segment of an epoch (its
stream starts there, so its state must start from zero).

Shuffling cannot reorder segments without breaking the streams; instead each epoch draws, from
(seed, epoch) alone, a rotation o_e of the whole token stream (so segment borders and the L·B
tokens used move every epoch) and a permutation order_e of streams over rows. Like the packed
pipeline, batch b is a pure function of (plan, b), so grain's position (`next_index`) is the
whole loader state and a resumed run reads the same rows as a straight one.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from capidsl.data.describe import stream_windows
from capidsl.data.errors import DataError
from capidsl.data.iterate import iterate
from capidsl.data.sources import lm_masks, lm_streams, source_key


@lru_cache(maxsize=4)
def _epoch_layout(seed: int, epoch: int, streams: int, tokens: int, shuffle: bool) -> tuple[np.ndarray, int]:
    """(stream of each row, rotation of the token stream) for one epoch."""
    if not shuffle:
        return np.arange(streams), 0
    rng = np.random.default_rng([seed, epoch, 0x57AE])
    return rng.permutation(streams), int(rng.integers(0, tokens))


class _StreamTable:
    """Global batch index → this process's rows of that batch: one segment of each row's stream."""

    def __init__(self, data, split: int, global_batch: int, process_index: int, process_count: int, shuffle: bool):
        if data.kind != "lm":
            raise DataError("streams are token streams: they need a language-model source", subject="data")
        if global_batch != data.streams:
            raise DataError(f"the plan has {data.streams} streams but the batch has {global_batch} rows", subject="data",
                            hint="compile the plan again")
        if global_batch % process_count:
            raise DataError(f"global batch {global_batch} does not split over {process_count} processes", subject="batch")
        self.tokens = lm_streams(source_key(data))[split]
        masks = lm_masks(source_key(data))  # supervised: 1 on completions, 0 on prompts
        self.loss_mask = None if masks is None else masks[split]
        self.n, self.seq_len, self.streams = len(self.tokens), data.seq_len, global_batch
        self.length = self.n // global_batch
        self.windows = stream_windows(self.n, global_batch, data.seq_len)
        if self.windows == 0:
            which = "training" if split == 0 else "validation"
            raise DataError(f"the {which} split ({self.n} tokens) is too short for {global_batch} streams of "
                            f"{data.seq_len + 1}-token segments", subject="data",
                            hint="use more data, a smaller batch or a shorter seq_len")
        per = global_batch // process_count
        self.rows = slice(process_index * per, (process_index + 1) * per)
        self.seed, self.shuffle = data.seed, shuffle

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(b), self.windows)
        order, offset = _epoch_layout(self.seed, epoch, self.streams, self.n, self.shuffle)
        starts = offset + order[self.rows] * self.length + i * self.seq_len
        at = (starts[:, None] + np.arange(self.seq_len + 1)[None, :]) % self.n
        tokens = np.asarray(self.tokens[at], np.int32)
        rows = tokens.shape[0]
        mask = (np.ones((rows, self.seq_len), np.float32) if self.loss_mask is None
                else np.asarray(self.loss_mask[at[:, 1:]], np.float32))  # each target's own mask
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask,
                "reset": np.full((rows,), 1.0 if i == 0 else 0.0, np.float32)}


def train_loader(data, *, global_batch: int, process_index: int = 0, process_count: int = 1):
    """An endless iterator of this process's rows of each training batch; `get_state`/`set_state` resume exactly."""
    table = _StreamTable(data, 0, global_batch, process_index, process_count, shuffle=bool(data.shuffle))
    return iterate(table, data)


def eval_batches(data, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
    """The validation streams from their start, in order (the same every call): batch i is segment i."""
    if stream_windows(len(lm_streams(source_key(data))[1]), global_batch, data.seq_len) == 0:
        return []  # too short for one segment per stream: no validation batches (the plan lints this)
    table = _StreamTable(data, 1, global_batch, process_index, process_count, shuffle=False)
    count = table.windows if max_batches is None else min(table.windows, max_batches)
    return [table(i) for i in range(count)]
