"""A stand-in for `capidsl.data` in loop tests: a few fixed batches cycled, exact get/set_state.

Fast and precise: a test can poison one chosen batch (a NaN feature, or a NaN in a gpt mask) and know at which step
it is consumed. `install(monkeypatch, nan_at=...)` puts it in place of the real pipeline.
"""

from __future__ import annotations

import sys
import types

import numpy as np


class FakeLoader:
    def __init__(self, plan, *, distinct: int = 4, nan_at: int | None = None):
        from plan_factory import make_batch

        self.batches = [make_batch(plan, seed=1000 + i) for i in range(distinct)]
        self.nan_at = nan_at  # the 1-based optimizer step whose batch holds a NaN
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = {k: v.copy() for k, v in self.batches[self.index % len(self.batches)].items()}
        self.index += 1
        if self.nan_at is not None and self.index == self.nan_at:
            key = "x" if "x" in batch else "mask"  # a NaN feature (mlp), else a NaN token weight (gpt)
            batch[key] = batch[key].astype(np.float32)
            batch[key].flat[0] = np.nan
        return batch

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def module(nan_at: int | None = None, distinct: int = 4) -> types.ModuleType:
    from plan_factory import make_batch

    fake = types.ModuleType("capidsl.data")
    fake.train_loader = lambda data, *, global_batch, process_index, process_count, _plan=None: FakeLoader(
        module.plan, distinct=distinct, nan_at=nan_at)
    fake.eval_batches = lambda data, *, global_batch, process_index, process_count, max_batches: [
        make_batch(module.plan, seed=7 + i) for i in range(max_batches or 2)]
    return fake


def install(monkeypatch, plan, *, nan_at: int | None = None, distinct: int = 4) -> None:
    """Make `from capidsl.data import train_loader, eval_batches` return fakes for `plan`."""
    module.plan = plan
    monkeypatch.setitem(sys.modules, "capidsl.data", module(nan_at=nan_at, distinct=distinct))
