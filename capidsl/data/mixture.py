"""Mixtures: several sources' packed windows, each global batch's rows shared among them by weight, exactly.

Weights are normalised to cumulative fractions `W_0 = 0 ≤ W_1 ≤ … ≤ W_S = 1` (each `W_k` the sum of the
first k shares, `limit_denominator(10**6)`). Within a stage that starts at step `s0`, source k has
received `floor(j·B·W_k) − floor(j·B·W_{k−1})` rows after `j` batches of that stage: every batch holds
exactly B rows, and each source's running share is exact to within one row. Earlier stages add up in
closed form, so `rows_before(k, b)` costs O(stages), and batch b's rows of source k are that source's
rows `[rows_before(k, b), rows_before(k, b + 1))`.

Source k's r-th row is its packed window `perm_{k,e}[r mod N_k]`, `e = r div N_k` (N_k windows of
seq_len + 1 tokens; the permutation is seeded by (seed, k, e), the identity when `shuffle` is off), so
each source runs through its own epochs at its own pace. A batch's rows, in source order, are then
permuted with a seed (seed, b) so micro-batches and processes mix the sources (not when `shuffle` is
off); process p of P takes rows `[p·B/P, (p+1)·B/P)` of that order. Batch b is a pure function of b:
grain's position is the loader's whole state (capidsl/data/iterate.py), so a resumed run, also one
resumed across a stage boundary, sees the batches a straight run sees.

Validation: each source's validation windows in order, cut into full global batches of that source
alone (a source's last partial batch is left out), taken round-robin over the sources (batch 0 of
every source, then batch 1, ...), so `eval.batches` batches cover every source as evenly as they can.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from capidsl.data.errors import DataError

LIMIT = 10**6  # largest denominator of a normalised weight
_SOURCE_SALT, _BATCH_SALT = 0x313, 0xB47C


def cumulative(weights) -> tuple[Fraction, ...]:
    """(W_0, ..., W_S): the running sums of the normalised weights, W_0 = 0 and W_S = 1 exactly."""
    exact = [Fraction(w) for w in weights]
    total = sum(exact)
    if total <= 0:
        raise DataError("a mixture stage needs a positive weight", subject="data.mixture_stages")
    out, run = [Fraction(0)], Fraction(0)
    for w in exact[:-1]:
        run += w
        out.append((run / total).limit_denominator(LIMIT))  # monotone: the nearest fraction of a larger number
    return (*out, Fraction(1))


class Allocation:
    """Which rows of every source each global batch holds: `stages` are (start_step, weights) pairs in
    step order, the first at step 0; `batch` the global batch B."""

    def __init__(self, stages, batch: int):
        self.starts = [int(s) for s, _ in stages]
        if not self.starts or self.starts[0] != 0 or any(a >= b for a, b in zip(self.starts, self.starts[1:])):
            raise DataError(f"mixture stages must start at step 0 and go forward, not at {self.starts}",
                            subject="data.mixture_stages")
        self.cums = [cumulative(w) for _, w in stages]
        self.batch = int(batch)

    @property
    def sources(self) -> int:
        return len(self.cums[0]) - 1

    def _cut(self, s: int, k: int, j: int) -> int:
        """floor(j·B·W_k) of stage s: the rows sources 0..k-1 got in its first j batches."""
        w = self.cums[s][k]
        return j * self.batch * w.numerator // w.denominator

    def rows_before(self, k: int, b: int) -> int:
        """Rows of source k in global batches 0 .. b-1."""
        total = 0
        for s, start in enumerate(self.starts):
            if b <= start:
                break
            end = self.starts[s + 1] if s + 1 < len(self.starts) else b
            j = min(b, end) - start
            total += self._cut(s, k + 1, j) - self._cut(s, k, j)
        return total

    def counts(self, b: int) -> list[int]:
        """Rows of each source in global batch b (they add up to B)."""
        return [self.rows_before(k, b + 1) - self.rows_before(k, b) for k in range(self.sources)]

    def epochs(self, windows, steps: int) -> list[float]:
        """Epochs of each source (its rows over its windows) read in the first `steps` batches."""
        return [self.rows_before(k, steps) / n if n else 0.0 for k, n in enumerate(windows)]


def allocation(data, global_batch: int) -> Allocation:
    """The Allocation of a DataPlan's mixture for batches of `global_batch` rows."""
    return Allocation([(s.start_step, s.weights) for s in data.mixture_stages], global_batch)


def source_stores(data) -> list:
    """The token store of each source of a DataPlan's mixture (the plan's ids: changed files are refused)."""
    from capidsl.data.sources import store_of
    from capidsl.data.store import spec_of

    return [store_of((spec_of(data, source=m.source, path=m.path, field=m.field, hf_split=m.hf_split),
                      data.cache or None, m.store or None)) for m in data.mixture]


def describe_mixture(data):
    """The DatasetInfo of a mixture: the sum of its sources' (windows counted per source)."""
    from capidsl.data.describe import DatasetInfo

    window, infos = data.seq_len + 1, []
    for store in source_stores(data):
        train, val = store.counts("train"), store.counts("val")
        infos.append((train["tokens"] // window, val["tokens"] // window, train["tokens"], val["tokens"],
                      store.vocab_size, train["loss_tokens"], store.manifest["skipped"]["documents"]))
    sums = [sum(column) for column in zip(*infos)]
    return DatasetInfo(*sums[:4], max(i[4] for i in infos), *sums[5:])


class _SourceWindows:
    """One source's split as packed windows: window i → tokens [i·(L+1), (i+1)·(L+1)) and their mask."""

    def __init__(self, store, split: str, seq_len: int):
        self.tokens = store.split(split)
        self.mask = store.split(split, "mask") if store.supervised else None
        self.window = seq_len + 1
        self.n = len(self.tokens) // self.window

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [len(idx), L+1] int32, target mask [len(idx), L] float32) of windows `idx`."""
        starts = np.asarray(idx, np.int64)[:, None] * self.window + np.arange(self.window)[None, :]
        tokens = np.asarray(self.tokens[starts], np.int32).reshape(len(idx), self.window)
        if self.mask is None:
            return tokens, np.ones((len(idx), self.window - 1), np.float32)
        mask = np.asarray(self.mask[starts], np.float32).reshape(len(idx), self.window)
        return tokens, mask[:, 1:]  # a target counts where its token does


def _batch(tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def _permutation(seed: int, source: int, epoch: int, n: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, source, epoch, _SOURCE_SALT]).permutation(n)


class MixtureTable:
    """Global batch index → this process's rows of that batch (the grain source of a mixture)."""

    def __init__(self, data, global_batch: int, process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise DataError(f"global batch {global_batch} does not split over {process_count} processes", subject="batch")
        self.alloc = allocation(data, global_batch)
        self.windows = [_SourceWindows(store, "train", data.seq_len) for store in source_stores(data)]
        for k, (m, w) in enumerate(zip(data.mixture, self.windows)):
            if w.n == 0 and any(stage.weights[k] > 0 for stage in data.mixture_stages):
                raise DataError(f"mixture source {m.name!r} holds no training window of {data.seq_len + 1} tokens",
                                subject=f"data.mixture.{m.name}")
        self.seed, self.shuffle, self.batch, self.seq_len = int(data.seed), bool(data.shuffle), global_batch, data.seq_len
        per = global_batch // process_count
        self.rows = slice(process_index * per, (process_index + 1) * per)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __getstate__(self):  # worker processes compute their own permutations
        return {k: v for k, v in self.__dict__.items() if k != "_perms"} | {"_perms": {}}

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        """Source k's order of windows in its epoch `epoch`; only the neighbouring epochs are kept
        (a batch may straddle two), so memory stays at a few orders of each source's windows."""
        if (k, epoch) not in self._perms:
            for key in [key for key in self._perms if key[0] == k and abs(key[1] - epoch) > 1]:
                del self._perms[key]
            self._perms[(k, epoch)] = _permutation(self.seed, k, epoch, self.windows[k].n, self.shuffle)
        return self._perms[(k, epoch)]

    def order(self, b: int) -> np.ndarray:
        """[B, 2]: (source, window) of every row of global batch b, in the batch's row order."""
        b = int(b)
        parts = []
        for k, w in enumerate(self.windows):
            lo, hi = self.alloc.rows_before(k, b), self.alloc.rows_before(k, b + 1)
            epoch, i = np.divmod(np.arange(lo, hi, dtype=np.int64), max(w.n, 1))
            window = np.empty_like(i)
            for e in np.unique(epoch):  # a source's rows of one batch span at most a few of its epochs
                sel = epoch == e
                window[sel] = self._permutation(k, int(e))[i[sel]]
            parts.append(np.stack([np.full_like(i, k), window], axis=1))
        out = np.concatenate(parts)
        if self.shuffle:
            out = out[np.random.default_rng([self.seed, b, _BATCH_SALT]).permutation(len(out))]
        return out

    def __call__(self, b: int) -> dict[str, np.ndarray]:
        mine = self.order(b)[self.rows]
        tokens = np.empty((len(mine), self.seq_len + 1), np.int32)
        mask = np.empty((len(mine), self.seq_len), np.float32)
        for k in np.unique(mine[:, 0]):
            sel = mine[:, 0] == k
            tokens[sel], mask[sel] = self.windows[int(k)].rows(mine[sel, 1])
        return _batch(tokens, mask)


def train_loader(data, *, global_batch: int, process_index: int = 0, process_count: int = 1):
    """An endless iterator of this process's rows of each training batch of a mixture; exact resume."""
    from capidsl.data.iterate import iterate  # grain: not for the planner, which imports this module's arithmetic

    return iterate(MixtureTable(data, global_batch, process_index, process_count), data)


def eval_batches(data, *, global_batch: int, process_index: int = 0, process_count: int = 1,
                 max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
    """Every source's validation windows in order, as full batches of one source each, round-robin over
    the sources (this process's rows; the same every call)."""
    windows = [_SourceWindows(store, "val", data.seq_len) for store in source_stores(data)]
    counts = [w.n // global_batch for w in windows]
    order = [(k, i) for i in range(max(counts, default=0)) for k in range(len(windows)) if i < counts[k]]
    if max_batches is not None:
        order = order[:max_batches]
    per = global_batch // process_count
    out = []
    for k, i in order:
        idx = np.arange(i * global_batch, (i + 1) * global_batch)[process_index * per:(process_index + 1) * per]
        out.append(_batch(*windows[k].rows(idx)))
    return out


def eval_batch_count(val_windows, global_batch: int) -> int:
    """How many validation batches `eval_batches` makes of sources with these validation windows."""
    return sum(n // global_batch for n in val_windows)
