"""A run directory as a picture and a paragraph: what `capidsl report RUN_DIR` writes and prints.

Reads only what the run left on disk (metrics.jsonl, summary.json, checkpoints/), never the
recipe or the plan compiler, so it works on any run directory, finished, stopped or killed. The
PNG has four panels over optimizer steps — training and validation loss, learning rate,
tokens/s, gradient norm — with a dotted line at every kept checkpoint and a red line where the
run stopped early. matplotlib draws it off-screen (Agg), imported only here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capidsl import rundir
from capidsl.errors import SubjectError


class ReportError(SubjectError):
    """The folder is not a run directory, or what it holds cannot be read."""


@dataclass
class RunRecord:
    """What a run directory says about its run."""

    run_dir: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    checkpoint_steps: list[int] = field(default_factory=list)
    skipped_lines: int = 0


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return None


def read_run(run_dir: str | Path) -> RunRecord:
    """The metrics lines (train and eval apart), the summary if written, and the kept checkpoint steps."""
    root = Path(run_dir)
    metrics = root / rundir.METRICS
    if not root.is_dir():
        raise ReportError(f"{run_dir} is not a folder", subject="RUN_DIR")
    if not metrics.is_file():
        if rundir.is_run(root):
            raise _not_logged_yet(root, run_dir)
        raise ReportError(f"{run_dir} has no {rundir.METRICS}", subject="RUN_DIR",
                          hint="point at the folder `capidsl run` trained in (its --run-dir or the recipe's run_dir)")
    record = RunRecord(root)
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            record.skipped_lines += 1  # a line cut short by a kill
            continue
        (record.evals if any(k.startswith("val_") for k in row) else record.train).append(row)
    try:
        record.summary = rundir.read_summary(root)
    except rundir.RunDirError as err:
        raise ReportError(err.message, subject=err.subject) from None
    record.checkpoint_steps = rundir.checkpoint_steps(root)
    if not record.train and not record.evals and rundir.is_run(root):
        raise _not_logged_yet(root, run_dir)
    return record


def _not_logged_yet(root: Path, run_dir: str | Path) -> ReportError:
    """A run whose metrics.jsonl is missing or holds no line yet: it ended (or was killed, or is
    still running) before its first log step. Says the log cadence from plan.json, and how far
    the run got from summary.json or its checkpoints."""
    def read(name: str) -> dict:
        try:
            data = json.loads((root / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    every = (read(rundir.PLAN).get("cadence") or {}).get("log_every")
    summary = read(rundir.SUMMARY)
    steps = summary.get("steps")
    kept = rundir.checkpoint_steps(root)
    message = f"{run_dir} is a run ({rundir.PLAN}) that has not logged yet"
    if isinstance(every, int):
        message += f": it logs every {every} steps"
    if isinstance(steps, int):
        message += f", and it ended at step {steps}"
    elif kept:
        message += f"; its last checkpoint is step {kept[-1]}"
    if summary and not summary.get("resumable"):
        hint = "it is finished: log more often (logging.every) to see a run this short"
    elif summary or kept:
        hint = "run it further (`capidsl run` on the same --run-dir resumes it), or log more often (logging.every)"
    else:
        hint = "if it is still running, wait for its first log step; or log more often (logging.every)"
    return ReportError(message, subject="RUN_DIR", hint=hint)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        y = _number(r.get(key))
        if y is not None and math.isfinite(y):
            xs.append(int(r["step"]))
            ys.append(y)
    return xs, ys


def _early_stop_step(record: RunRecord) -> int | None:
    s = record.summary
    if not s or s.get("resumable") or str(s.get("stop_reason", "")).startswith("completed"):
        return None
    return int(s["steps"])


def plot(record: RunRecord, out: str | Path) -> Path:
    """Write the four-panel PNG to `out` (atomically: a temp file renamed into place)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = [
        (axes[0][0], "loss", [(record.train, "loss", "train loss"), (record.evals, "val_loss", "val loss")], True),
        (axes[0][1], "learning rate", [(record.train, "lr", "lr")], False),
        (axes[1][0], "tokens/s", [(record.train, "tokens_per_s", "tokens/s")], False),
        (axes[1][1], "gradient norm", [(record.train, "grad_norm", "grad norm")], True),
    ]
    stop = _early_stop_step(record)
    for ax, title, lines, log_scale in panels:
        values: list[float] = []
        for rows, key, label in lines:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o" if rows is record.evals else None, markersize=3, label=label)
                values += ys
        drawn = bool(values)
        if log_scale and drawn and min(values) > 0:
            ax.set_yscale("log")
        for step in record.checkpoint_steps:
            ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
        if stop is not None:
            ax.axvline(stop, color="red", linewidth=2, label="stopped")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    name = (record.summary or {}).get("plan_name") or record.run_dir.name
    fig.suptitle(f"{name} — {record.run_dir}" + ("   (dotted: checkpoints)" if record.checkpoint_steps else ""))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def describe(record: RunRecord) -> str:
    """A few lines: how far the run got, how it ended, its best and last figures, its speed."""
    s = record.summary or {}
    last = record.train[-1] if record.train else {}
    lines = [f"run {record.run_dir}: {len(record.train)} log lines, {len(record.evals)} evaluations"
             + (f", {record.skipped_lines} unreadable line(s) skipped" if record.skipped_lines else "")]
    if s:
        lines.append(f"steps {s.get('steps')}, tokens {s.get('tokens', 0):,}; {s.get('stop_reason')}")
        if s.get("best"):
            b = s["best"]
            lines.append(f"best {b['metric']} {b['value']:.4f} at step {b['step']}")
    elif last:
        lines.append(f"no {rundir.SUMMARY} (still running, or killed): last logged step {last['step']}")
    if last:
        loss = _number(last.get("loss"))
        lines.append(f"last train loss {loss:.4f} at step {last['step']}" if loss is not None else "")
        speeds = [v for v in (_number(r.get("tokens_per_s")) for r in record.train[1:] or record.train) if v]
        if speeds:
            speeds.sort()
            lines.append(f"median tokens/s {speeds[len(speeds) // 2]:,.0f} (first log window, with compilation, left out)"
                         if len(record.train) > 1 else f"tokens/s {speeds[0]:,.0f}")
    if record.evals:
        e = record.evals[-1]
        lines.append(f"last val_loss {_number(e.get('val_loss')):.4f} at step {e['step']}")
    if record.checkpoint_steps:
        lines.append(f"checkpoints kept: {', '.join(map(str, record.checkpoint_steps))}")
    return "\n".join(line for line in lines if line)
