"""The background uploader of a gs:// run: training never waits for the network, and never dies of it.

The loop tells the mirror when a checkpoint has been committed locally (orbax finished and the
sha256 manifest is written); the mirror queues that step and the top-level files (plan.json,
metrics.jsonl) and one worker thread uploads them with `sync.sync_unit`. A failed unit goes to
the back of the queue and the next attempt waits for an exponential back-off (2, 4, ... 60 s; the
client has already retried each request within `CAPIDSL_GCS_RETRY_S`); failures are counted in
metrics.jsonl (`uploads_pending`, `upload_failures`) and in summary.json.

At the end of the run `finish()` queues the whole directory once more (anything missed, the
export, TensorBoard events, the summary) and waits while uploads make progress: it gives up after
`CAPIDSL_GCS_DRAIN_S` seconds (default 300) without a successful upload, and reports what is
still pending together with the `capidsl sync` command that completes it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from capidsl import rundir
from capidsl.errors import CapidslError
from capidsl.storage.gcs import Store, env_seconds
from capidsl.storage.sync import Crcs, SyncReport, Unit, sync_unit, units

DRAIN_ENV = "CAPIDSL_GCS_DRAIN_S"
MAX_BACKOFF_S = 60.0


def drain_s() -> float:
    return env_seconds(DRAIN_ENV, 300.0)


def _describe(err: BaseException) -> str:
    return err.render().replace("\n", " ") if isinstance(err, CapidslError) else f"{type(err).__name__}: {err}"


class Mirror:
    """Uploads the run directory `local` to `store` from a background thread (see the module docstring)."""

    def __init__(self, local: Path, store: Store):
        self.local, self.store = Path(local), store
        self.notes: list[str] = []  # what happened before training (downloads), for the run to show
        self._cv = threading.Condition()
        self._queue: list[Unit] = []
        self._busy: Unit | None = None
        self._failures = 0  # failed attempts in total
        self._in_a_row = 0
        self._next_try = 0.0
        self._last_error: str | None = None
        self._closing = False
        self._deadline = 0.0
        self._drain_s = drain_s()
        self._crcs = Crcs()
        self._report = SyncReport()
        self._upload_s = 0.0
        self._thread = threading.Thread(target=self._work, name="capidsl-gcs-mirror", daemon=True)
        self._thread.start()

    # ---- called by the run (any thread; each returns at once) -------------------------------

    def checkpoint_committed(self, step: int, step_dir: Path | None = None) -> None:
        """Queue a committed step (its manifest is written) and the top-level files that describe it."""
        self._enqueue(Unit("step", rundir.step_rel(int(step))), Unit("top", ""))

    def log_fields(self) -> dict[str, int]:
        """What a training line of metrics.jsonl says about the uploads."""
        with self._cv:
            return {"uploads_pending": len(self._queue), "upload_failures": self._failures}

    # ---- the end -----------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Queue the whole directory, wait while uploads progress (see the module docstring), report."""
        self._enqueue(*units(self.local))
        with self._cv:
            self._closing = True
            self._deadline = time.monotonic() + self._drain_s
            self._cv.notify_all()
        self._thread.join()
        return self.report()

    def report(self) -> dict[str, Any]:
        """The account that goes into summary.json under "storage"."""
        with self._cv:
            pending = [str(u) for u in self._queue]
            failures, last_error = self._failures, self._last_error
        unmirrored = [rundir.step_rel(s) for s in rundir.checkpoint_steps(self.local)
                      if not rundir.has_manifest(rundir.step_dir(self.local, s))]
        out: dict[str, Any] = {
            "url": str(self.store.url), "local_dir": str(self.local),
            "uploaded_files": self._report.uploaded_files, "uploaded_bytes": self._report.uploaded_bytes,
            "upload_s": round(self._upload_s, 3), "upload_failures": failures, "last_error": last_error,
            "pending": pending, "unmirrored": unmirrored, "complete": not pending and not unmirrored,
        }
        if not out["complete"]:
            out["sync_command"] = f"capidsl sync {self.local} {self.store.url}"
        return out

    # ---- the worker --------------------------------------------------------------------------

    def _enqueue(self, *new: Unit) -> None:
        with self._cv:
            for u in new:
                if u not in self._queue:
                    self._queue.append(u)
            self._cv.notify_all()

    def _progress(self, size: int) -> None:
        with self._cv:
            self._deadline = time.monotonic() + self._drain_s  # progress: keep waiting at the end

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue or (self._closing and time.monotonic() > self._deadline):
                    return
                wait = self._next_try - time.monotonic()
                if wait > 0 and not self._closing:  # back off; at the end every attempt counts
                    self._cv.wait(wait)
                    continue
                unit = self._busy = self._queue[0]
            t0 = time.perf_counter()
            try:
                sync_unit(self.store, self.local, unit, self._crcs, self._report, on_upload=self._progress)
            except Exception as err:  # noqa: BLE001 - no upload failure may reach the training loop
                with self._cv:
                    self._busy = None
                    self._failures += 1
                    self._in_a_row += 1
                    self._last_error = f"{unit}: {_describe(err)}"
                    if unit in self._queue:  # to the back: one unit that keeps failing must not hold up the others
                        self._queue.remove(unit)
                        self._queue.append(unit)
                    self._next_try = time.monotonic() + min(MAX_BACKOFF_S, 2.0 ** self._in_a_row)
                continue
            finally:
                self._upload_s += time.perf_counter() - t0
            with self._cv:
                self._busy = None
                self._in_a_row = 0
                if unit in self._queue:
                    self._queue.remove(unit)
                if self._closing:
                    self._deadline = time.monotonic() + self._drain_s
