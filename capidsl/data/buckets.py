"""Length-bucketed batches: one document per row, padded only to its bucket's length, not to seq_len.

Examples are documents (with the separator appended) cut into pieces of at most seq_len + 1 tokens
that overlap by one, so every next-token target of a long document is trained once; a piece of n+1
tokens predicts n. It goes to the shortest bucket of length ≥ n. Each bucket has a fixed number of
rows (the plan's, from the token budget), so a batch is always one of the plan's few shapes
[rows, length] and XLA compiles one program per bucket, not one per length.

Epoch e: every bucket's examples in a seeded order (seed, e, bucket) are cut into full batches (the
remainder waits for the next epoch's order), and all buckets' batches are interleaved in a seeded
order (seed, e). Batch b of the run is entry b mod S of epoch b div S's list (S = steps per epoch,
fixed: it does not depend on the order), so as with packed windows the loader state is grain's
position alone and resume is exact. Process p of P takes rows [p·R/P, (p+1)·R/P) of each batch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from capidsl.data.errors import DataError
from capidsl.data.sources import lm_document_masks, lm_documents, source_key


def _pieces(docs, seq_len: int) -> tuple[np.ndarray, ...]:
    out = []
    for doc in docs:
        for start in range(0, max(1, len(doc) - 1), seq_len):
            piece = doc[start:start + seq_len + 1]
            if len(piece) >= 2:
                out.append(piece)
    return tuple(out)


@lru_cache(maxsize=4)
def examples(key: tuple, seq_len: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(train, validation) pieces of ≤ seq_len + 1 tokens (at least 2), in document order."""
    train, val = lm_documents(key)
    return _pieces(train, seq_len), _pieces(val, seq_len)


@lru_cache(maxsize=4)
def example_masks(key: tuple, seq_len: int):
    """The loss mask of each piece of `examples`, cut the same way (supervised stores), or None."""
    masks = lm_document_masks(key)
    return None if masks is None else (_pieces(masks[0], seq_len), _pieces(masks[1], seq_len))


def bucket_of(lengths: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """The index of the shortest bucket that holds each length (lengths ≤ the longest bucket)."""
    return np.searchsorted(np.asarray(buckets), lengths, side="left")


def bucket_counts(data, buckets: tuple[int, ...]) -> dict[str, list[tuple[int, int]]]:
    """Per split, per bucket: (examples, real target tokens). Pure numpy: the plan compiler's input."""
    out = {}
    for name, split in zip(("train", "val"), examples(source_key(data), data.seq_len)):
        n = np.array([len(p) - 1 for p in split], dtype=np.int64)
        which = bucket_of(n, buckets)
        out[name] = [(int(np.sum(which == i)), int(np.sum(n[which == i]))) for i in range(len(buckets))]
    return out


class _Buckets:
    """The examples of one split grouped by the plan's buckets."""

    def __init__(self, data, split: int):
        if not data.buckets:
            raise DataError("the plan has no buckets", subject="data.batching", hint="compile the plan again")
        self.lengths = tuple(b.length for b in data.buckets)
        self.rows = tuple(b.rows for b in data.buckets)
        self.pieces = examples(source_key(data), data.seq_len)[split]
        masks = example_masks(source_key(data), data.seq_len)
        self.masks = None if masks is None else masks[split]  # supervised: 1 on completions, 0 on prompts
        which = bucket_of(np.array([len(p) - 1 for p in self.pieces], dtype=np.int64), self.lengths)
        self.members = tuple(np.flatnonzero(which == i) for i in range(len(self.lengths)))

    def batch(self, bucket: int, ids: np.ndarray, rows: int) -> dict[str, np.ndarray]:
        """`rows` rows of bucket length: the examples `ids`, then empty rows (mask 0) if there are fewer."""
        length = self.lengths[bucket]
        inputs = np.zeros((rows, length), np.int32)
        targets = np.zeros((rows, length), np.int32)
        mask = np.zeros((rows, length), np.float32)
        for r, i in enumerate(ids):
            piece = self.pieces[i]
            n = len(piece) - 1
            inputs[r, :n], targets[r, :n] = piece[:-1], piece[1:]
            mask[r, :n] = 1.0 if self.masks is None else self.masks[i][1:]  # supervised: the targets' own mask
        return {"inputs": inputs, "targets": targets, "mask": mask}


@lru_cache(maxsize=2)
def _epoch(table: "_BucketTable", epoch: int) -> list[tuple[int, np.ndarray]]:
    """Epoch `epoch`'s batches as (bucket, example ids), in their seeded interleaved order."""
    batches = []
    for i, members in enumerate(table.buckets.members):
        order = members if not table.shuffle else np.random.default_rng([table.seed, epoch, i, 0xB0C]).permutation(members)
        rows = table.buckets.rows[i]
        batches.extend((i, order[k * rows:(k + 1) * rows]) for k in range(len(order) // rows))
    if table.shuffle:
        perm = np.random.default_rng([table.seed, epoch, 0xB0C]).permutation(len(batches))
        batches = [batches[j] for j in perm]
    return batches


class _BucketTable:
    """Global batch index → this process's rows of that batch (the grain source)."""

    def __init__(self, data, process_index: int, process_count: int):
        self.buckets = _Buckets(data, 0)
        if any(r % process_count for r in self.buckets.rows):
            raise DataError(f"bucket rows {self.buckets.rows} do not split over {process_count} processes", subject="batch")
        self.steps_per_epoch = sum(len(m) // r for m, r in zip(self.buckets.members, self.buckets.rows))
        if self.steps_per_epoch == 0:
            raise DataError("no bucket holds a full batch of examples", subject="data",
                            hint="lower data.token_budget or use more data")
        self.seed, self.shuffle = data.seed, bool(data.shuffle)
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(int(b), self.steps_per_epoch)
        bucket, ids = _epoch(self, epoch)[i]
        per = self.buckets.rows[bucket] // self.process_count
        mine = ids[self.process_index * per:(self.process_index + 1) * per]
        return self.buckets.batch(bucket, mine, per)


def train_loader(data, *, global_batch: int, process_index: int = 0, process_count: int = 1):
    """An endless iterator of this process's rows of each bucketed batch; `get_state`/`set_state` resume exactly.

    `global_batch` is unused: each bucket has its own number of rows (the plan's `data.buckets`)."""
    from capidsl.data.iterate import iterate  # here, not at the top: the plan compiler counts buckets without grain

    table = _BucketTable(data, process_index, process_count)
    return iterate(table, data)


def eval_batches(data, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
    """Every validation example once, bucket by bucket in order; a bucket's last batch is filled with
    empty rows (mask 0), so every shape is one of the plan's and nothing is left out."""
    buckets = _Buckets(data, 1)
    out = []
    for i, members in enumerate(buckets.members):
        rows = buckets.rows[i]
        per = rows // process_count
        for k in range(0, len(members), rows):
            ids = members[k:k + rows][process_index * per:(process_index + 1) * per]
            out.append(buckets.batch(i, ids, per))
    return out if max_batches is None else out[:max_batches]
