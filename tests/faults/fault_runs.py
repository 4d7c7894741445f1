"""The plan every fault test breaks, and how to read what a broken run left behind."""

from __future__ import annotations

import dataclasses

from plan_factory import make_plan

TOTAL_STEPS = 300  # 256 synthetic windows at 16 a batch: the run crosses an epoch boundary


def fault_plan(**replace):
    """The tiny gpt plan on 2 devices, checkpointed every 10 steps; `replace` sets plan fields."""
    plan = make_plan("gpt", mesh={"data": 2}, total_steps=TOTAL_STEPS, lr=3e-3, vocab_size=256)
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=10, checkpoint_every=10,
                                                                   eval_every=50))
    return dataclasses.replace(plan, **replace)
