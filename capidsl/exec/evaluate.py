"""Validation: the plan's fixed eval batches, kept on the devices, and the metrics of some parameters on them."""

from __future__ import annotations

import math

import jax
import numpy as np

from capidsl.exec.distributed import process_rows
from capidsl.exec.errors import RunError
from capidsl.exec.state import initial_hidden
from capidsl.exec.step import batch_sharding, make_evaluator_step
from capidsl.plan.plan import Plan


def to_device(plan: Plan, mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of the global batch → one global array per key, split as the plan says."""
    sharding = batch_sharding(plan, mesh)
    _, blocks = process_rows(plan, mesh)  # explicit: hosts that are replicas (a tensor axis across hosts) load the same rows
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (len(v) * blocks,) + np.shape(v)[1:])
            for k, v in local.items()}


class Evaluator:
    """Validation metrics of some parameters over the plan's fixed eval batches (kept on the devices)."""

    def __init__(self, plan: Plan, mesh, graphdef):
        self.plan, self.mesh = plan, mesh
        self.step = make_evaluator_step(plan, mesh, graphdef)  # (params, batch, carried state) -> (sums, state)
        self.batches: list[dict[str, jax.Array]] | None = None

    def __call__(self, params) -> dict[str, float]:
        plan = self.plan
        if self.batches is None:
            from capidsl.data import eval_batches

            block, blocks = process_rows(plan, self.mesh)
            local = eval_batches(plan.data, global_batch=plan.batch.global_batch, process_index=block,
                                 process_count=blocks, max_batches=plan.cadence.eval_batches)
            self.batches = [to_device(plan, self.mesh, b) for b in local]
        if not self.batches:
            raise RunError("the validation split is empty", subject="eval", hint="raise data.validation_fraction")
        totals, hidden = None, initial_hidden(plan)  # a carried state: every validation stream from zero, in order
        for b in self.batches:
            sums, hidden = self.step(params, b, hidden)
            totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
        t = {k: float(v) for k, v in totals.items()}
        w = max(t["weight_sum"], 1e-9)
        out = {"val_loss": t["loss_sum"] / w}
        if plan.data.kind == "lm":
            out["val_perplexity"] = math.exp(min(out["val_loss"], 700.0))
        else:
            out["val_accuracy"] = t["correct_sum"] / w
        return out
