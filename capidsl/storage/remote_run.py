"""A training run whose directory is gs://bucket/prefix: a local working copy, mirrored in the background.

`capidsl.runner` enters `mirrored_run_dir(url)` when the run directory is a gs:// URL; the
executor then trains in `local_dir` exactly as in any local directory, with the mirror as its
hooks (`checkpoint_committed` after each commit, `log_fields` in each log line). Before training:
- the bucket is checked (a missing bucket, a permission refused or absent credentials stop the run
  before it starts, with the reason);
- what the remote run has beyond the working copy is downloaded (`workdir.pull`), so a run resumes
  from a gs:// directory on any machine;
- if Cloud Storage cannot be reached at all, the run goes on from the working copy when that holds
  checkpoints (uploads are retried, and `capidsl sync` completes them), and is refused when it
  holds none: it cannot be told whether the remote directory holds checkpoints that a fresh start
  would silently train over.
After training, `finish(summary)` waits for the uploads (see `mirror.py`) and records the account
under "storage" in summary.json.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from capidsl import rundir
from capidsl.storage.errors import StorageError
from capidsl.storage.gcs import GsUrl, Store
from capidsl.storage.mirror import Mirror
from capidsl.storage.workdir import local_steps, pull, working_copy


class StorageWarning(RuntimeWarning):
    """Uploads did not complete (the data is safe locally; `capidsl sync` completes them)."""


@dataclass
class MirroredRun:
    url: GsUrl
    local_dir: Path
    mirror: Mirror
    finished: bool = field(default=False)

    def finish(self, summary):
        """Wait for the uploads, write summary.json with the "storage" account, upload it; the new Summary."""
        self.finished = True
        report = self.mirror.finish()
        summary = dataclasses.replace(summary, storage=report)
        summary.write(self.local_dir)
        try:
            self.mirror.store.upload(rundir.SUMMARY, self.local_dir / rundir.SUMMARY, snapshot=True)
        except StorageError as err:
            report = {**report, "complete": False, "pending": [*report["pending"], rundir.SUMMARY],
                      "last_error": err.message, "sync_command": f"capidsl sync {self.local_dir} {self.url}"}
            summary = dataclasses.replace(summary, storage=report)
        if not report["complete"]:
            what = ", ".join(report["pending"] + report["unmirrored"])
            warnings.warn(f"{self.url} is not complete yet ({what}; last error: {report['last_error']}); "
                          f"nothing is lost locally: run `{report['sync_command']}`", StorageWarning, stacklevel=2)
        return summary


@contextmanager
def mirrored_run_dir(url_text: str) -> Iterator[MirroredRun]:
    import jax

    url = GsUrl.parse(url_text)
    if jax.process_count() > 1:
        raise StorageError(f"a gs:// run directory needs a single-process run, not {jax.process_count()} processes",
                           subject=str(url), hint="give multi-host runs a run directory on a shared filesystem")
    local = working_copy(url)
    local.mkdir(parents=True, exist_ok=True)
    store = Store(url)
    notes: list[str] = []
    try:
        store.check()
        notes += pull(store, local)
    except StorageError as err:
        if not err.transient:
            raise
        if not local_steps(local):
            raise StorageError(f"cannot reach it to see whether it holds checkpoints ({err.message})",
                               subject=str(url), hint="run again once it can be reached; starting here from step 0 "
                               "could train over checkpoints that are there", transient=True) from err
        warnings.warn(f"{url} cannot be reached ({err.message}); training goes on from the working copy {local} "
                      "and uploads are retried", StorageWarning, stacklevel=3)
    mirror = Mirror(local, store)
    mirror.notes = [f"run directory {url}, working copy {local}", *notes]
    run = MirroredRun(url, local, mirror)
    interrupted = False
    try:
        yield run
    except KeyboardInterrupt:
        interrupted = True  # a second Ctrl-C means now: the working copy keeps everything for `capidsl sync`
        raise
    finally:
        if not run.finished and not interrupted:  # the run failed: still upload what it committed, then re-raise
            report = mirror.finish()
            if not report["complete"]:
                warnings.warn(f"{url} is not complete: run `{report['sync_command']}`", StorageWarning, stacklevel=3)
