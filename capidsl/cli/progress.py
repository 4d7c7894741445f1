"""The token-store preparation progress bar (rich, on stderr): bytes read, documents, tokens/s, ETA.

`capidsl data prepare`, `capidsl plan` and `capidsl run` pass one to the data stage, which calls
start/advance/finish (capidsl.data.store.Silent is the interface); on a terminal it redraws, in a
log it prints one line at the end.
"""

from __future__ import annotations

import sys
import time


class PrepareBar:
    def __init__(self, file=None):
        self.file = file or sys.stderr
        self._progress = None

    def start(self, description: str, total_bytes: int, units: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.description, self.docs, self.tokens, self.t0 = description, 0, 0, time.perf_counter()
        console = Console(file=self.file)
        self._progress = Progress(
            TextColumn("preparing tokens"), BarColumn(), DownloadColumn(), TextColumn("{task.fields[docs]:,} docs"),
            TextColumn("{task.fields[rate]} tok/s"), TimeRemainingColumn(), console=console, transient=True,
            disable=not console.is_terminal)
        self._progress.start()
        self._task = self._progress.add_task("prepare", total=total_bytes, docs=0, rate="-")

    def advance(self, nbytes: int, documents: int, tokens: int) -> None:
        self.docs += documents
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self._progress.update(self._task, advance=nbytes, docs=self.docs, rate=f"{rate:,.0f}")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            seconds = time.perf_counter() - self.t0
            print(f"prepared {self.tokens:,} tokens from {self.docs:,} documents ({self.description}) in "
                  f"{seconds:.1f} s, {self.tokens / max(seconds, 1e-9):,.0f} tokens/s", file=self.file)
            self._progress = None
