"""The run-length step of planning: total steps, then everything that counts in steps.

Once steps per epoch and tokens per step are known, every duration of the recipe language
(`2 epochs`, `1B tokens`, `every 500 steps`) becomes an exact step count: the run's length, the
learning-rate schedule's pieces, the pruning schedule, evaluation / checkpoint / logging cadences
and the stop rule. A LangError here is the recipe's: it is placed at the key (and the column
inside its string) that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass

from capidsl.lang import LangError
from capidsl.lang.ast import ResolvedSchedule
from capidsl.lang.stop import Stalls, direction_of, walk
from capidsl.plan import pruning
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import CadencePlan, CheckpointPlan, PruningPlan, ShardingPlan, StopPlan


@dataclass(frozen=True)
class Cadences:
    """What happens when, in optimizer steps."""

    schedule: ResolvedSchedule
    pruning: PruningPlan | None
    cadence: CadencePlan
    stop: StopPlan
    checkpoint: CheckpointPlan


def lang_error(err: LangError, key: str, where) -> PlanError:
    """A recipe-language error found at plan time, at the character of `key`'s string it is about."""
    return PlanError(err.message, subject=key, location=where(key, err.column), hint=err.hint)


def total_steps(training, steps_per_epoch: int, tokens_per_step: int, where) -> int:
    """The run's length in optimizer steps, from `training.duration` (or `num_epochs`)."""
    if training.duration is None:
        raise PlanError("the recipe does not say how long to train", subject="training", location=where("training"),
                        hint='set training.duration (e.g. "2000 steps") or training.num_epochs')
    try:
        return training.duration.to_steps(steps_per_epoch, tokens_per_step)
    except LangError as err:
        key = "training.num_epochs" if training.num_epochs is not None else "training.duration"
        raise lang_error(err, key, where) from None


def plan_cadences(recipe, total: int, steps_per_epoch: int, tokens_per_step: int, val_batches: int,
                  sharding: ShardingPlan, where) -> Cadences:
    """The schedule, pruning, cadences, stop rule and checkpoint policy of a `total`-step run."""
    try:
        schedule = recipe.schedule.resolve(total, steps_per_epoch, tokens_per_step)
    except LangError as err:
        raise lang_error(err, "schedule", where) from None
    prune = pruning.plan_pruning(recipe.pruning, sharding, total, steps_per_epoch, tokens_per_step, where)

    def steps_of(cadence, key):
        if cadence is None:
            return None
        try:
            return cadence.to_steps(steps_per_epoch, tokens_per_step)
        except LangError as err:
            raise lang_error(err, key, where) from None

    eval_every = steps_of(recipe.eval.every, "eval.every")
    eval_batches = min(recipe.eval.batches, val_batches) if recipe.eval.batches else val_batches
    cadence = CadencePlan(total_steps=total, steps_per_epoch=steps_per_epoch, eval_every=eval_every,
                          eval_batches=eval_batches, checkpoint_every=steps_of(recipe.checkpoint.every, "checkpoint.every"),
                          log_every=steps_of(recipe.logging.every, "logging.every"))
    kb = recipe.checkpoint.keep_best
    checkpoint = CheckpointPlan(keep=recipe.checkpoint.keep, keep_best_metric=kb.metric if kb else None,
                                keep_best_mode=kb.mode if kb else "min", keep_best=kb.n if kb else 0,
                                async_save=recipe.checkpoint.async_)
    return Cadences(schedule=schedule, pruning=prune, cadence=cadence,
                    stop=stop_plan(recipe.stop, steps_per_epoch, tokens_per_step), checkpoint=checkpoint)


def stop_plan(s, steps_per_epoch: int, tokens_per_step: int) -> StopPlan:
    """The recipe's `stop:` section resolved for this run, and which metric `restore_best` means."""
    rule = s.when.resolve(steps_per_epoch, tokens_per_step) if s.when is not None else None
    metric, mode = None, "min"
    if rule is not None:
        stalls = [n for n in walk(rule.expr) if isinstance(n, Stalls)]
        if stalls:
            metric, mode = stalls[0].metric, stalls[0].mode
        else:
            evals = [m for m in rule.metrics() if m.startswith("val_")]
            metric = evals[0] if evals else None
            mode = (direction_of(metric, dict(s.directions)) or "min") if metric else "min"
    if s.restore_best and metric is None:
        metric, mode = "val_loss", "min"
    return StopPlan(rule=rule, restore_best=bool(s.restore_best), restore_metric=metric if s.restore_best else None,
                    restore_mode=mode)
