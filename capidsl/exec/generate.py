"""Text from a trained run: load its final weights onto one device and sample token by token.

The weights are those the run ended with: `summary.json`'s `params_step` (the best step under
restore_best), else the newest checkpoint. Each new token runs the model on a fixed-length window
(the plan's seq_len, right-padded; the model is causal, so padding never reaches the position that
is read), so one compiled function serves the whole generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AxisType

from capidsl import rundir
from capidsl.exec.checkpoint import Checkpoints
from capidsl.exec.errors import RunError
from capidsl.exec.state import abstract_state, model_family
from capidsl.plan.plan import Plan


def load_run(run_dir: str | Path, step: int | None = None) -> tuple[Plan, nnx.GraphDef, Any, int]:
    """(plan, graphdef, params on one device, the step they come from) for a finished or running run.

    `step` picks a checkpoint; by default the run's final weights (summary.json's params_step,
    else the newest checkpoint)."""
    run_dir = Path(run_dir)
    try:
        plan = Plan.loads(rundir.read_plan_text(run_dir))
    except rundir.RunDirError as err:
        raise RunError(err.message, subject=err.subject, hint=err.hint) from None
    one = jax.make_mesh((1,) * len(plan.mesh.axes), plan.mesh.axes, devices=jax.devices()[:1],
                       axis_types=(AxisType.Auto,) * len(plan.mesh.axes))
    graphdef, abstract = abstract_state(plan, one)
    ckpts = Checkpoints(run_dir, plan.checkpoint)
    try:
        steps = ckpts.steps()
        if not steps:
            raise RunError(f"{run_dir} has no checkpoint yet", subject=str(run_dir), hint="train first: capidsl run ...")
        if step is not None:
            if step not in steps:
                raise RunError(f"{run_dir} has no checkpoint of step {step}", subject=str(run_dir),
                               hint=f"its checkpoints: steps {', '.join(map(str, steps))}")
            return plan, graphdef, ckpts.restore_state(step, abstract).params, step
        step = rundir.final_params_step(run_dir, steps)
        return plan, graphdef, ckpts.restore_state(step, abstract).params, step
    finally:
        ckpts.close()


def generate(plan: Plan, graphdef, params, prompt_ids: list[int], *, tokens: int, temperature: float,
             seed: int) -> list[int]:
    """`tokens` new ids after `prompt_ids`; temperature 0 is greedy."""
    if plan.data.kind != "lm":
        raise RunError(f"sampling needs a language model; this run trains a {plan.model.family} classifier",
                       subject="sample")
    fam, _ = model_family(plan)
    window = plan.batch.seq_len
    if not prompt_ids:
        raise RunError("the prompt is empty", subject="sample", hint='give some text: --prompt "def "')

    @jax.jit
    def next_id(params, ids, pos, key):
        logits = fam.predict(nnx.merge(graphdef, params), ids)[0, pos].astype(jnp.float32)
        if temperature <= 0:
            return jnp.argmax(logits)
        return jax.random.categorical(key, logits / temperature)

    out = list(prompt_ids)
    key = jax.random.key(seed)
    for i in range(tokens):
        context = out[-window:]
        ids = jnp.asarray([context + [0] * (window - len(context))], jnp.int32)
        out.append(int(next_id(params, ids, len(context) - 1, jax.random.fold_in(key, i))))
    return out[len(prompt_ids):]
