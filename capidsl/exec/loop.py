"""The training run: init or resume, then step, log, eval, decide, checkpoint — until done or stopped.

Reads like nanoGPT's train.py with every decision taken from the Plan, in three pieces: `_start`
(a fresh state or the newest readable checkpoint), `_loop` (the steps) and `_finish` (the weights
the run ends with, and its summary). What is worth knowing:
- A log line's `loss` is the mean of the per-step losses since the previous log line, summed on
  the device without a host sync; a non-finite step anywhere in the window makes it non-finite,
  so `not finite(loss)` sees every bad step. The running sum is part of the checkpoint, so a
  resumed run logs (and therefore decides) exactly as the uninterrupted one.
- The stop rule is followed record by record (`Judge`, O(1) per record) and its state is in each
  checkpoint: a resumed run stops at the step the uninterrupted run would (Lightning #1463/#18727).
- A state is never checkpointed when the loss since the last log is not finite.
- SIGTERM/SIGINT finish the current step, save, and end the run as "resumable".
- `max_steps` (`--steps N`) ends after N optimizer steps in total and checkpoints there, without
  an extra eval or log record, so `--steps M` later continues exactly where N left off.
The executor trains a Plan in a local directory and nothing else: gs:// working copies and the
export at the end are arranged around it by `capidsl.runner`, through `RunHooks`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax

from capidsl.exec.checkpoint import CheckpointWarning, Checkpoints, decode_loader_state, encode_loader_state
from capidsl.exec.distributed import preempted, process_rows
from capidsl.exec.errors import RunError
from capidsl.exec.evaluate import Evaluator, to_device
from capidsl.exec.judge import Judge, best_metric
from capidsl.exec.mesh import build_mesh
from capidsl.exec.metrics import MetricsWriter, device_peak_bytes, host_peak_rss_bytes
from capidsl.exec.peak import Throughput
from capidsl.exec.progress import Progress
from capidsl.exec.resume import check_resume
from capidsl.exec.signals import Signals
from capidsl.exec.state import abstract_state, init_state
from capidsl.exec.step import make_train_step
from capidsl.exec.summary import Summary, params_sha256
from capidsl.exec.window import Window, decode_record, train_row
from capidsl.lang.ast import Record
from capidsl.plan.plan import Plan


class RunHooks:
    """What a caller adds to a run without the executor knowing who it is (the gs:// mirror does):
    lines to show at the start, a call after each committed checkpoint, fields for each log line."""

    notes: tuple[str, ...] = ()

    def checkpoint_committed(self, step: int, step_dir: Path) -> None:
        """A checkpoint and its manifest are complete on disk."""

    def log_fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Finished:
    """A run's end: its summary (also in summary.json) and the weights it ends with, on the devices."""

    summary: Summary
    params: Any


@dataclass(frozen=True)
class _Parts:
    """Everything a run builds once from the plan; none of it changes while it trains."""

    plan: Plan
    run_dir: Path
    mesh: Any
    graphdef: Any
    abstract: Any
    ckpts: Checkpoints
    writer: MetricsWriter
    progress: Progress
    loader: Any
    throughput: Throughput  # the peak per device (measured once here on a CPU) for each line's mfu


@dataclass
class _Position:
    """Where a run is: what the next step starts from, and what a checkpoint of it must hold."""

    state: Any
    step: int
    judge: Judge
    window: Window
    train_time_s: float  # before this process's segment
    segment_start: float = field(default_factory=time.perf_counter)
    resumed_from: int | None = None
    saved_at: int | None = None
    last_row: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    rates: list[dict[str, Any]] = field(default_factory=list)  # this invocation's log windows, for summary.json

    def time_s(self) -> float:
        return self.train_time_s + (time.perf_counter() - self.segment_start)


# ---- the run -----------------------------------------------------------------------------------


def run(plan: Plan, run_dir: str | Path | None = None, *, max_steps: int | None = None,
        stdout_is_tty: bool | None = None, hooks: RunHooks | None = None) -> Summary:
    """Train as `plan` says, in the local `run_dir` (default `plan.run_dir`), resuming from its
    checkpoints; the run's Summary. SIGTERM/SIGINT are caught while it runs (see `train`)."""
    with Signals().installed() as signals:
        return train(plan, run_dir, max_steps=max_steps, stdout_is_tty=stdout_is_tty, hooks=hooks,
                     signals=signals).summary


def train(plan: Plan, run_dir: str | Path | None = None, *, max_steps: int | None = None,
          stdout_is_tty: bool | None = None, hooks: RunHooks | None = None, signals: Signals | None = None) -> Finished:
    """`run`, returning the final weights too (for an export). `signals` are installed by the
    caller, from before start-up, so that a signal during compilation ends the run after its first
    step, checkpointed; without them none are caught."""
    wall_start = time.perf_counter()
    run_dir = Path(run_dir if run_dir is not None else plan.run_dir)
    if str(run_dir).startswith("gs:/"):
        raise RunError("the executor trains in a local directory", subject=str(run_dir),
                       hint="run it through capidsl.runner.run (or `capidsl run`), which arranges gs:// directories")
    end_step = plan.cadence.total_steps if max_steps is None else min(max_steps, plan.cadence.total_steps)
    parts = _build(plan, run_dir, hooks, end_step, stdout_is_tty)
    try:
        pos, warned = _start(parts)
        pos, reason, by_rule = _loop(parts, pos, end_step, signals or Signals(), hooks)
    finally:
        parts.progress.close()
        parts.writer.close()
        if callable(getattr(parts.loader, "close", None)):  # grain's worker processes, when the plan has them
            parts.loader.close()
    return _finish(parts, pos, reason, by_rule, warned, wall_start)


def _build(plan: Plan, run_dir: Path, hooks: RunHooks | None, end_step: int, stdout_is_tty: bool | None) -> _Parts:
    from capidsl.data import train_loader

    mesh = build_mesh(plan)
    graphdef, abstract = abstract_state(plan, mesh)
    metric, mode = best_metric(plan)
    ckpts = Checkpoints(run_dir, plan.checkpoint, best_metric=metric, best_mode=mode, best_n=1 if metric else 0,
                        on_commit=hooks.checkpoint_committed if hooks is not None else None)
    writer = MetricsWriter(run_dir, tensorboard=plan.logging.tensorboard)
    progress = Progress(plan.logging.progress, total_steps=end_step, stdout_is_tty=stdout_is_tty)
    for note in getattr(hooks, "notes", ()):
        progress.note(note)
    block, blocks = process_rows(plan, mesh)  # this process's rows of each global batch
    loader = _iterator(train_loader(plan.data, global_batch=plan.batch.global_batch,
                                    process_index=block, process_count=blocks))
    return _Parts(plan, run_dir, mesh, graphdef, abstract, ckpts, writer, progress, loader,
                  Throughput.for_run(plan, mesh.devices.size))


def _iterator(loader):
    """The loader as an iterator with get_state/set_state (a grain DataLoader gives one from iter())."""
    it = loader if hasattr(loader, "__next__") else iter(loader)
    for name in ("get_state", "set_state"):
        if not hasattr(it, name):
            raise RunError(f"the training data iterator has no {name}()", subject="data",
                           hint="capidsl.data.train_loader must return a resumable iterator")
    return it


# ---- init or resume ----------------------------------------------------------------------------


def _start(parts: _Parts) -> tuple[_Position, list[warnings.WarningMessage]]:
    """A fresh state at step 0, or the newest readable checkpoint; the warnings restoring raised."""
    plan, notes = parts.plan, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        restored = parts.ckpts.restore_latest(parts.abstract, check_meta=lambda meta: notes.extend(check_resume(plan, meta)))
    for w in caught:  # shown again, for callers and the CLI, after orbax's own logging
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if restored is None:
        _, state = init_state(plan, parts.mesh)
        pos = _Position(state, 0, Judge(plan), Window(), 0.0)
    else:
        meta = restored.meta
        if "judge" in meta:
            judge, judge_notes = Judge.from_json(plan, meta["judge"])
            notes += judge_notes
        else:  # written before checkpoints kept the judge's state: replay the history they kept
            judge = Judge.replay(plan, [decode_record(r) for r in meta["history"]])
        w = meta["loop"]["window"]
        pos = _Position(restored.state, restored.step, judge, Window(float(w["loss_sum"]), int(w["count"]), w.get("sums")),
                        float(meta["loop"]["train_time_s"]), resumed_from=restored.step, saved_at=restored.step)
        parts.loader.set_state(decode_loader_state(meta["loader"]))
        parts.progress.note(f"resuming {parts.run_dir} from step {pos.step}"
                            + (f" with changes: {'; '.join(notes)}" if notes else ""))
    parts.writer.write_plan(plan.dumps())
    parts.writer.truncate_after(pos.step)
    return pos, list(caught)


# ---- the steps ---------------------------------------------------------------------------------


def _loop(parts: _Parts, pos: _Position, end_step: int, signals: Signals,
          hooks: RunHooks | None) -> tuple[_Position, str, bool]:
    """Step until the end, the stop rule or a signal; (position, stop reason, stopped by the rule)."""
    plan, cad, loader = parts.plan, parts.plan.cadence, parts.loader
    train_step = make_train_step(plan, parts.mesh, parts.graphdef)
    evaluator = Evaluator(plan, parts.mesh, parts.graphdef) if cad.eval_every else None
    pos.segment_start = time.perf_counter()
    parts.progress.start(pos.step)
    decision = pos.judge.decide() if pos.judge.records else None  # a resumed run that already meets the rule
    reason = decision.reason if decision is not None and decision.stop else None
    by_rule = reason is not None
    try:
        while reason is None and pos.step < end_step:
            t0 = time.perf_counter()
            local = next(loader)
            wait = time.perf_counter() - t0
            pos.state, metrics = train_step(pos.state, to_device(plan, parts.mesh, local))
            pos.step += 1
            pos.window.add(metrics["loss"], wait, metrics)
            parts.ckpts.poll()
            if preempted(pos.step) and signals.received is None:  # SIGTERM reached a process of a multi-host run
                signals.received = "SIGTERM"

            decision = None
            if _every(cad.log_every, pos.step):
                decision = _log(parts, pos, metrics, hooks)
            evals = None
            if not (decision and decision.stop) and evaluator is not None and \
                    (_every(cad.eval_every, pos.step) or pos.step == cad.total_steps):
                evals, decision = _evaluate(parts, pos, evaluator)
            if decision is not None and decision.stop:
                reason, by_rule = decision.reason, True
            elif signals.received:
                reason = f"stopped by {signals.received} at step {pos.step}; resumable: run the same command again to continue"
            if evals is not None and pos.judge.metric in evals:
                best = pos.judge.best()
                if best is not None and best.step == pos.step:  # a new best: keep these weights
                    _save(parts, pos, evals)
            if _every(cad.checkpoint_every, pos.step) or reason is not None or pos.step == end_step:
                _save(parts, pos, evals)
        if reason is None:
            reason = "completed" if pos.step >= cad.total_steps else \
                f"--steps {end_step} reached; resumable: run again with more --steps to continue"
        if pos.saved_at != pos.step and not by_rule and pos.step > 0:
            _save(parts, pos, None)
        parts.ckpts.wait()
    finally:
        pos.train_time_s, pos.segment_start = pos.time_s(), time.perf_counter()
    return pos, reason, by_rule


def _every(n: int | None, step: int) -> bool:
    return bool(n) and step % n == 0


def _log(parts: _Parts, pos: _Position, metrics: dict[str, jax.Array], hooks: RunHooks | None):
    """Write the log line of this step, start a new window; the stop rule's decision."""
    row = train_row(parts.plan, pos.step, pos.window, metrics)
    row.update(parts.throughput.fields(row))
    pos.rates.append({k: row[k] for k in ("step", "step_time_s", "tflops_per_device", "mfu")})
    if hooks is not None:  # a gs:// run directory: uploads_pending, upload_failures
        row.update(hooks.log_fields())
    parts.writer.log(row)
    parts.progress.update(row)
    pos.last_row, pos.window = row, Window()
    return pos.judge.observe(Record(pos.step, pos.time_s(), "log", {k: row[k] for k in ("loss", "lr", "grad_norm")}))


def _evaluate(parts: _Parts, pos: _Position, evaluator: Evaluator):
    """Evaluate the current weights and write the eval line; (its metrics, the stop rule's decision)."""
    t_eval = time.perf_counter()
    evals = evaluator(pos.state.params)
    pos.last_eval = {"step": pos.step, "epoch": pos.step / max(1, parts.plan.cadence.steps_per_epoch), **evals,
                     "eval_time_s": time.perf_counter() - t_eval}
    parts.writer.log(pos.last_eval, kind="eval")
    parts.progress.eval(pos.last_eval)
    return evals, pos.judge.observe(Record(pos.step, pos.time_s(), "eval", evals))


def _save(parts: _Parts, pos: _Position, evals: dict[str, float] | None) -> None:
    """Checkpoint the position (once per step), unless the loss since the last log is not finite."""
    if pos.saved_at == pos.step:
        return
    loss = float(pos.window.loss_sum) if pos.window.count else pos.last_row.get("loss", 0.0)
    if not math.isfinite(loss):
        warnings.warn(f"no checkpoint at step {pos.step}: its loss is not finite ({loss})", CheckpointWarning, stacklevel=2)
        return
    meta = {"step": pos.step, "fingerprint": parts.plan.fingerprint, "plan": parts.plan.to_json(),
            "judge": pos.judge.to_json(), "loader": encode_loader_state(parts.loader.get_state()),
            "loop": {"train_time_s": pos.time_s(), "window": pos.window.to_json()}}
    parts.ckpts.save(pos.step, pos.state, meta, metrics=evals)
    pos.saved_at = pos.step


# ---- the end -----------------------------------------------------------------------------------


def _finish(parts: _Parts, pos: _Position, reason: str, by_rule: bool, warned: list, wall_start: float) -> Finished:
    """The weights the run ends with (the best ones under restore_best) and its summary.json."""
    plan, cad = parts.plan, parts.plan.cadence
    params, params_step = pos.state.params, pos.step
    best = pos.judge.summary_best()
    if best is not None and plan.stop.restore_best and best.step != pos.step:
        if best.step in parts.ckpts.steps():
            params, params_step = parts.ckpts.restore_state(best.step, parts.abstract).params, best.step
            parts.progress.note(f"restored the best weights: {best.metric} {best.value:.4g} at step {best.step}")
        else:
            warnings.warn(f"restore_best: no checkpoint kept for step {best.step}; the final weights stay",
                          CheckpointWarning, stacklevel=2)
    ckpt_steps = tuple(parts.ckpts.steps())
    parts.ckpts.close()
    m = plan.memory
    summary = Summary(
        run_dir=str(parts.run_dir), plan_name=plan.name, fingerprint=plan.fingerprint, steps=pos.step,
        tokens=pos.step * plan.batch.tokens_per_step, epochs=pos.step / max(1, cad.steps_per_epoch),
        stop_reason=reason, resumable=not by_rule and pos.step < cad.total_steps, resumed_from=pos.resumed_from,
        wall_time_s=time.perf_counter() - wall_start, train_time_s=pos.train_time_s,
        final={"train": pos.last_row, "eval": pos.last_eval},
        best={"metric": best.metric, "value": best.value, "step": best.step} if best is not None else {},
        params_step=params_step, params_sha256=params_sha256(params), checkpoint_steps=ckpt_steps,
        memory={"predicted_per_device_bytes": m.total,
                "predicted": {"params": m.params, "grads": m.grads, "opt_state": m.opt_state,
                              "activations": m.activations, "batch": m.batch},
                "device_peak_bytes": device_peak_bytes(), "host_peak_rss_bytes": host_peak_rss_bytes()},
        warnings=tuple(str(w.message) for w in warned), performance=parts.throughput.summary(pos.rates),
    )
    summary.write(parts.run_dir)
    return Finished(summary, params)
