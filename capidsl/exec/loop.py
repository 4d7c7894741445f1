"""The training run: init or resume, then step, log, eval, decide, checkpoint — until done or stopped.

Reads like nanoGPT's train.py with every decision taken from the Plan. What is worth knowing:
- A log line's `loss` is the mean of the per-step losses since the previous log line, summed on
  the device without a host sync; a non-finite step anywhere in the window makes it non-finite,
  so `not finite(loss)` sees every bad step. The running sum is part of the checkpoint, so a
  resumed run logs (and therefore decides) exactly as the uninterrupted one.
- The stop rule's history (every log and eval record) is in each checkpoint: a resumed run stops
  at the step the uninterrupted run would (Lightning #1463/#18727).
- A state is never checkpointed when the loss since the last log is not finite.
- SIGTERM/SIGINT finish the current step, save, and end the run as "resumable".
- `max_steps` (`--steps N`) ends after N optimizer steps in total and checkpoints there, without
  an extra eval or log record, so `--steps M` later continues exactly where N left off.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import jax

from capidsl.exec.checkpoint import CheckpointWarning, Checkpoints, decode_loader_state, encode_loader_state
from capidsl.exec.distributed import preempted, process_rows
from capidsl.exec.errors import RunError
from capidsl.exec.evaluate import Evaluator, to_device
from capidsl.exec.mesh import build_mesh
from capidsl.exec.metrics import MetricsWriter, device_peak_bytes, host_peak_rss_bytes
from capidsl.exec.progress import Progress, format_duration
from capidsl.exec.resume import check_resume
from capidsl.exec.signals import Signals
from capidsl.exec.state import abstract_state, init_state
from capidsl.exec.step import make_train_step
from capidsl.exec.summary import Summary, params_sha256
from capidsl.exec.window import Window, decode_record, encode_record, train_row
from capidsl.lang.ast import Record
from capidsl.plan.plan import Plan


# ---- small pieces the loop reads ---------------------------------------------------------------


def _iterator(loader):
    """The loader as an iterator with get_state/set_state (a grain DataLoader gives one from iter())."""
    it = loader if hasattr(loader, "__next__") else iter(loader)
    for name in ("get_state", "set_state"):
        if not hasattr(it, name):
            raise RunError(f"the training data iterator has no {name}()", subject="data",
                           hint="capidsl.data.train_loader must return a resumable iterator")
    return it


def _every(n: int | None, step: int) -> bool:
    return bool(n) and step % n == 0


def _best_metric(plan: Plan) -> tuple[str | None, str]:
    """The metric "best" means for restore_best (and for keeping the best checkpoint)."""
    if plan.stop.restore_best:
        return plan.stop.restore_metric or "val_loss", plan.stop.restore_mode
    return None, "min"


def _best(plan: Plan, history: list[Record], metric: str, mode: str):
    """The best eval value so far as the stop rule judges it (min_delta, baseline), else plain min/max."""
    evals = [r for r in history if r.kind == "eval"]
    if plan.stop.rule is not None:
        return plan.stop.rule.best(evals, metric, mode)
    values = [(r.step, r.metrics[metric]) for r in evals if metric in r.metrics and math.isfinite(r.metrics[metric])]
    if not values:
        return None
    step, value = (min if mode == "min" else max)(values, key=lambda sv: sv[1])
    from capidsl.lang.ast import Best

    return Best(metric, step, value)


# ---- the run -----------------------------------------------------------------------------------


def run(plan: Plan, run_dir: str | Path | None = None, *, max_steps: int | None = None,
        stdout_is_tty: bool | None = None) -> Summary:
    """Train as `plan` says, in `run_dir` (default `plan.run_dir`), resuming from its checkpoints.

    SIGTERM/SIGINT are caught from the start (a signal during start-up or compilation ends the run
    after its first step, checkpointed), and the previous handlers are put back at the end.
    A gs://bucket/prefix run directory trains in a local working copy that is uploaded in the
    background as checkpoints commit (capidsl/export/remote_run.py).
    """
    signals = Signals()
    target = str(run_dir if run_dir is not None else plan.run_dir)
    with signals.installed():
        if target.startswith("gs://"):
            from capidsl.export.remote_run import mirrored_run_dir

            with mirrored_run_dir(target) as remote:
                summary = _run(plan, remote.local_dir, max_steps=max_steps, stdout_is_tty=stdout_is_tty,
                               signals=signals, uploader=remote.mirror)
                return remote.finish(summary)
        return _run(plan, run_dir, max_steps=max_steps, stdout_is_tty=stdout_is_tty, signals=signals)


def _run(plan: Plan, run_dir, *, max_steps: int | None, stdout_is_tty: bool | None, signals: Signals,
         uploader=None) -> Summary:
    from capidsl.data import train_loader

    wall_start = time.perf_counter()
    run_dir = Path(run_dir if run_dir is not None else plan.run_dir)
    end_step = plan.cadence.total_steps if max_steps is None else min(max_steps, plan.cadence.total_steps)
    cad = plan.cadence
    notes: list[str] = []

    mesh = build_mesh(plan)
    graphdef, abstract = abstract_state(plan, mesh)
    best_metric, best_mode = _best_metric(plan)
    ckpts = Checkpoints(run_dir, plan.checkpoint, best_metric=best_metric, best_mode=best_mode,
                        best_n=1 if best_metric else 0,
                        on_commit=uploader.checkpoint_committed if uploader is not None else None)
    writer = MetricsWriter(run_dir, tensorboard=plan.logging.tensorboard)
    progress = Progress(plan.logging.progress, total_steps=end_step, stdout_is_tty=stdout_is_tty)
    for note in getattr(uploader, "notes", ()):  # a gs:// run directory: its working copy, what was downloaded
        progress.note(note)
    block, blocks = process_rows(plan, mesh)  # this process's rows of each global batch
    loader = _iterator(train_loader(plan.data, global_batch=plan.batch.global_batch,
                                    process_index=block, process_count=blocks))

    # -- init or resume --
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        restored = ckpts.restore_latest(abstract, check_meta=lambda meta: notes.extend(check_resume(plan, meta)))
    for w in caught:  # shown again, for callers and the CLI, after orbax's own logging
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if restored is None:
        _, state = init_state(plan, mesh)
        step, history, train_time, window = 0, [], 0.0, Window()
        resumed_from = None
    else:
        meta = restored.meta
        state, step = restored.state, restored.step
        history = [decode_record(r) for r in meta["history"]]
        train_time = float(meta["loop"]["train_time_s"])
        window = Window(float(meta["loop"]["window"]["loss_sum"]), int(meta["loop"]["window"]["count"]),
                        meta["loop"]["window"].get("sums"))
        loader.set_state(decode_loader_state(meta["loader"]))
        resumed_from = step
        progress.note(f"resuming {run_dir} from step {step}" + (f" with changes: {'; '.join(notes)}" if notes else ""))
    writer.write_plan(plan.dumps())
    writer.truncate_after(step)

    train_step = make_train_step(plan, mesh, graphdef)
    evaluator = Evaluator(plan, mesh, graphdef) if cad.eval_every else None

    last_row: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}
    last_metrics: dict[str, jax.Array] | None = None
    stop_reason, stopped_by_rule = None, False
    saved_at: int | None = restored.step if restored else None

    def loop_meta() -> dict[str, Any]:
        return {
            "step": step, "fingerprint": plan.fingerprint, "plan": plan.to_json(),
            "history": [encode_record(r) for r in history],
            "loader": encode_loader_state(loader.get_state()),
            "loop": {"train_time_s": train_time + (time.perf_counter() - segment_start), "window": window.to_json()},
        }

    def save(metrics: dict[str, float] | None = None) -> None:
        nonlocal saved_at
        if saved_at == step:
            return
        loss = float(window.loss_sum) if window.count else last_row.get("loss", 0.0)
        if not math.isfinite(loss):
            message = f"no checkpoint at step {step}: its loss is not finite ({loss})"
            warnings.warn(message, CheckpointWarning, stacklevel=2)
            return
        ckpts.save(step, state, loop_meta(), metrics=metrics)
        saved_at = step

    def decide() -> bool:
        nonlocal stop_reason, stopped_by_rule
        if plan.stop.rule is None:
            return False
        decision = plan.stop.rule.evaluate(history)
        if decision.stop:
            stop_reason, stopped_by_rule = decision.reason, True
        return decision.stop

    segment_start = time.perf_counter()
    progress.start(step)
    try:
        if history:  # a resumed run whose history already meets the (possibly new) rule does not step again
            decide()
        while stop_reason is None and step < end_step:
            t0 = time.perf_counter()
            local = next(loader)
            wait = time.perf_counter() - t0
            state, last_metrics = train_step(state, to_device(plan, mesh, local))
            step += 1
            window.add(last_metrics["loss"], wait, last_metrics)
            ckpts.poll()
            if preempted(step) and signals.received is None:  # SIGTERM reached a process of a multi-host run
                signals.received = "SIGTERM"
            now = lambda: train_time + (time.perf_counter() - segment_start)  # noqa: E731

            stop = False
            if _every(cad.log_every, step):
                row = train_row(plan, step, window, last_metrics)
                if uploader is not None:  # a gs:// run directory: uploads_pending, upload_failures
                    row.update(uploader.log_fields())
                writer.log(row)
                progress.update(row)
                last_row = row
                history.append(Record(step, now(), "log", {k: row[k] for k in ("loss", "lr", "grad_norm")}))
                window = Window()
                stop = decide()
            eval_metrics = None
            if not stop and evaluator is not None and (_every(cad.eval_every, step) or step == cad.total_steps):
                t_eval = time.perf_counter()
                eval_metrics = evaluator(state.params)
                last_eval = {"step": step, "epoch": step / max(1, cad.steps_per_epoch), **eval_metrics,
                             "eval_time_s": time.perf_counter() - t_eval}
                writer.log(last_eval, kind="eval")
                progress.eval(last_eval)
                history.append(Record(step, now(), "eval", eval_metrics))
                stop = decide()
            if signals.received and not stop:
                stop_reason = f"stopped by {signals.received} at step {step}; resumable: run the same command again to continue"
            if eval_metrics is not None and best_metric and best_metric in eval_metrics:
                best = _best(plan, history, best_metric, best_mode)
                if best is not None and best.step == step:  # a new best: keep these weights
                    save(eval_metrics)
            if _every(cad.checkpoint_every, step) or stop_reason is not None or step == end_step:
                save(eval_metrics)
        if stop_reason is None:
            stop_reason = "completed" if step >= plan.cadence.total_steps else f"--steps {end_step} reached; resumable: run again with more --steps to continue"
        if saved_at != step and not stopped_by_rule and step > 0:
            save()
        ckpts.wait()
    finally:
        progress.close()
        writer.close()
        if callable(getattr(loader, "close", None)):  # grain's worker processes, when the plan has them
            loader.close()
        train_time += time.perf_counter() - segment_start

    # -- the weights the run ends with: the best ones under restore_best --
    params_step, params = step, state.params
    best_info: dict[str, Any] = {}
    if best_metric:
        best = _best(plan, history, best_metric, best_mode)
        if best is not None:
            best_info = {"metric": best.metric, "value": best.value, "step": best.step}
            if plan.stop.restore_best and best.step != step:
                if best.step in ckpts.steps():
                    params = ckpts.restore_state(best.step, abstract).params
                    params_step = best.step
                    progress.note(f"restored the best weights: {best.metric} {best.value:.4g} at step {best.step}")
                else:
                    message = f"restore_best: no checkpoint kept for step {best.step}; the final weights stay"
                    warnings.warn(message, CheckpointWarning, stacklevel=2)
    elif plan.stop.rule is not None and any(r.kind == "eval" for r in history):
        best = _best(plan, history, "val_loss", "min")
        if best is not None:
            best_info = {"metric": best.metric, "value": best.value, "step": best.step}
    ckpt_steps = tuple(ckpts.steps())
    ckpts.close()

    resumable = not stopped_by_rule and step < plan.cadence.total_steps
    summary = Summary(
        run_dir=str(run_dir), plan_name=plan.name, fingerprint=plan.fingerprint, steps=step,
        tokens=step * plan.batch.tokens_per_step, epochs=step / max(1, cad.steps_per_epoch),
        stop_reason=stop_reason, resumable=resumable, resumed_from=resumed_from,
        wall_time_s=time.perf_counter() - wall_start, train_time_s=train_time,
        final={"train": last_row, "eval": last_eval}, best=best_info, params_step=params_step,
        params_sha256=params_sha256(params), checkpoint_steps=ckpt_steps,
        memory={"predicted_per_device_bytes": plan.memory.total,
                "predicted": {"params": plan.memory.params, "grads": plan.memory.grads,
                              "opt_state": plan.memory.opt_state, "activations": plan.memory.activations,
                              "batch": plan.memory.batch},
                "device_peak_bytes": device_peak_bytes(), "host_peak_rss_bytes": host_peak_rss_bytes()},
        warnings=tuple(str(w.message) for w in caught),
    )
    summary.write(run_dir)
    if plan.export.format != "none" and not resumable:  # the run has ended for good: export its final weights
        from capidsl.export.run_export import export_at_end

        summary = export_at_end(plan, run_dir, params, params_step, summary)
    return summary


def describe(summary: Summary) -> str:
    """One paragraph for the end of `capidsl run`."""
    lines = [f"{summary.stop_reason}",
             f"steps {summary.steps}, tokens {summary.tokens:,}, train time {format_duration(summary.train_time_s)}"]
    if summary.best:
        lines.append(f"best {summary.best['metric']} {summary.best['value']:.4f} at step {summary.best['step']}")
    lines.append(f"params_sha256 {summary.params_sha256[:16]}… (step {summary.params_step}); summary in {summary.run_dir}/summary.json")
    if summary.export:
        from capidsl.export.run_export import describe_export

        lines.append(describe_export(summary.export))
    if summary.storage:
        s = summary.storage
        lines.append(f"{s['url']}: {s['uploaded_files']} files ({s['uploaded_bytes'] / 2**20:.2f} MiB) uploaded in "
                     f"{s['upload_s']:.1f} s, {s['upload_failures']} failed attempts"
                     + ("; complete" if s["complete"] else f"; NOT complete: run `{s['sync_command']}`"))
    return "\n".join(lines)
