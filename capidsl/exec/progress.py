"""The run's live display: a rich progress bar on a terminal, plain periodic lines otherwise.

This is the executor's user interface (like nanoGPT's `print` per log step), so it writes to
stdout itself; messages (resume, stop reason, warnings) go through `note` so that they do not
tear the bar. Only process 0 shows anything.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import jax


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


class Progress:
    """mode: "rich" (bar), "plain" (one line per log step), "none"; "auto" picks rich on a TTY."""

    def __init__(self, mode: str, *, total_steps: int, stdout_is_tty: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        tty = self.stream.isatty() if stdout_is_tty is None else stdout_is_tty
        if mode == "auto":
            mode = "rich" if tty else "plain"
        self.mode = mode if jax.process_index() == 0 else "none"
        self.total = total_steps
        self._bar = None
        self._task = None
        self._start_step = 0
        self._start_time = time.perf_counter()

    def start(self, step: int) -> None:
        self._start_step, self._start_time = step, time.perf_counter()
        if self.mode != "rich":
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

        self._bar = Bar(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
            console=Console(file=self.stream, force_terminal=True), transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=self.total, completed=step, stats="")

    def eta(self, step: int) -> float | None:
        done = step - self._start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._start_time) / done * (self.total - step)

    def update(self, row: dict[str, Any]) -> None:
        """Called at each log step with the metrics row."""
        step = int(row["step"])
        stats = (f"loss {_fmt(row.get('loss'), '.4f')}  lr {_fmt(row.get('lr'), '.2e')}  "
                 f"tok/s {_fmt(row.get('tokens_per_s'), ',.0f')}")
        if "mfu" in row:  # MFU in percent (3 digits: a tiny model on a CPU shows 0.0123%), TFLOP/s per device
            mfu = row["mfu"] * 100 if isinstance(row["mfu"], (int, float)) else None
            stats += f"  mfu {_fmt(mfu, '.3g')}%  {_fmt(row.get('tflops_per_device'), '.3g')} TFLOP/s/dev"
        if self.mode == "rich" and self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)
        elif self.mode == "plain":
            eta = self.eta(step)
            tail = f"  eta {format_duration(eta)}" if eta is not None else ""
            print(f"step {step}/{self.total}  {stats}{tail}", file=self.stream, flush=True)

    def eval(self, row: dict[str, Any]) -> None:
        parts = "  ".join(f"{k} {_fmt(v, '.4f')}" for k, v in row.items() if k.startswith("val_"))
        self.note(f"eval at step {row['step']}: {parts}")

    def note(self, text: str) -> None:
        if self.mode == "rich" and self._bar is not None:
            self._bar.console.print(text)
        elif self.mode != "none":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
