"""Checkpoints: orbax's CheckpointManager, plus the checks orbax leaves to us.

Layout of `RUN_DIR/checkpoints/<step>/` (orbax's, plus one file of ours):
- `state/` — the TrainState pytree (`StandardSave`; restored sharded into `abstract_state`);
- `meta/`  — JSON: step, plan fingerprint, the plan itself, the stop rule's state (a
             `StopMonitor`'s, not the history: its size does not grow with the run), the data
             loader's position, and the loop's counters (see `loop.py`);
- `capidsl.sha256.json` — our manifest: the sha256 of every file of the step, written once orbax
  has committed the step (orbax verifies no contents by itself: a flipped byte in an array file
  restores silently as a wrong number).

Decisions (issue 5's pitfalls):
- Resume takes the newest *readable* step. A step whose manifest disagrees with its files, or
  that orbax fails to read, is moved whole to `RUN_DIR/checkpoints.unreadable/<step>[.n]` with a
  `CheckpointWarning` naming it: never deleted, never overwritten (a later save of the same step
  would otherwise collide with it), and no longer counted by keep-N. A committed step without a
  manifest (killed between orbax's commit and ours) is accepted if orbax reads it.
- No readable step while steps exist → `RunError`; a run never restarts from step 0 over a
  directory that holds checkpoints (marin #8760).
- Async saves are checked at every `poll()` (once per training step, cheap) and before the next
  save: a failed save raises `RunError` at once, naming the step; earlier steps stay (orbax #605).
- The loader's state goes into the JSON item (a small dict, or bytes as base64), saved atomically
  with the arrays; that is what grain's own `CheckpointSave` would store, without tying the
  executor to one loader class.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from capidsl import rundir
from capidsl.exec.errors import RunError
from capidsl.plan.plan import CheckpointPlan
from capidsl.rundir import MANIFEST, UNREADABLE, file_digests, verify_manifest  # noqa: F401 (re-exported)


class CheckpointWarning(RuntimeWarning):
    """A checkpoint was skipped (unreadable) or a save was declined; the message names it."""


@dataclass(frozen=True)
class Restored:
    """One checkpoint read back: the step, the train state (sharded as asked) and its JSON meta."""

    step: int
    state: Any
    meta: dict[str, Any]


def encode_loader_state(state: Any) -> dict[str, Any]:
    """The loader's `get_state()` as JSON: bytes as base64, anything JSON-able as is."""
    if isinstance(state, (bytes, bytearray)):
        return {"bytes": base64.b64encode(bytes(state)).decode("ascii")}
    json.dumps(state)  # a TypeError here names the loader state that JSON cannot hold
    return {"json": state}


def decode_loader_state(data: dict[str, Any]) -> Any:
    if "bytes" in data:
        return base64.b64decode(data["bytes"])
    return data["json"]


def _metric_value(metric: str, mode: str) -> Callable[[dict], float]:
    """orbax BestN ranks ascending and keeps the tail: for "min", rank by the negated value."""

    def value(metrics: dict) -> float:
        v = float(metrics.get(metric, math.nan))
        if not math.isfinite(v):
            return -math.inf
        return -v if mode == "min" else v

    return value


def _single_process_array_writes() -> None:
    """One process writes each array from its first replica, without orbax's replica-parallel split.

    Replica-parallel writing (orbax's default off GPU) slices every replicated array across its
    replicas so that several *hosts* can write parts of it; inside one process it only costs a
    compiled `slice` per array shape (~0.15 s each: seconds at the first checkpoint of a small
    model). With several processes, orbax's default is kept.
    """
    global _ARRAY_HANDLER_SET
    if _ARRAY_HANDLER_SET or jax.process_count() != 1:
        return
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns about every override
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        absl.setLevel(level)
    _ARRAY_HANDLER_SET = True


_ARRAY_HANDLER_SET = False


class Checkpoints:
    """The run's checkpoints: cadence-free (the loop decides when), keep-N plus keep-best, async.

    Only `save`, `poll`, `wait` and `restore_*` touch orbax; every orbax failure becomes a
    `RunError` that names the step and the directory.
    """

    def __init__(self, run_dir: str | os.PathLike, plan: CheckpointPlan, *, best_metric: str | None = None,
                 best_mode: str = "min", best_n: int = 0, on_commit: Callable[[int, Path], None] | None = None):
        self.run_dir = Path(run_dir).absolute()
        # Called (from the manifest thread) once a step is committed and its manifest written: the
        # hook for uploaders, which must never see a partial checkpoint. It must return at once.
        self._on_commit = on_commit
        self.directory = rundir.checkpoints_dir(self.run_dir)
        self.plan = plan
        # keep-best: the plan's own metric, else the one restore_best needs (given by the loop).
        self.best_metric = plan.keep_best_metric or best_metric
        self.best_mode = plan.keep_best_mode if plan.keep_best_metric else best_mode
        self.best_n = plan.keep_best if plan.keep_best_metric else best_n
        policies: list[Any] = [ocm.LatestN(n=max(1, plan.keep))]
        if self.best_metric and self.best_n > 0:
            policies.append(ocm.BestN(get_metric_fn=_metric_value(self.best_metric, self.best_mode),
                                      n=self.best_n, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            create=True,
            enable_async_checkpointing=plan.async_save,
            preservation_policy=ocm.AnyPreservationPolicy(policies),
        )
        _single_process_array_writes()
        self._mgr = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # a step whose async save has not been confirmed yet
        # Manifests are hashed off the training thread: reading a large checkpoint back takes seconds.
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capidsl-manifest")
        self._manifests: list[Future] = []

    # ---- listing ---------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Committed steps, oldest first (orbax ignores its own unfinished temporary directories)."""
        self._mgr.reload()
        return sorted(self._mgr.all_steps())

    def step_dir(self, step: int) -> Path:
        return rundir.step_dir(self.run_dir, step)

    # ---- saving ----------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Start saving `state` and `meta` as `step` (returns once the arrays are copied off device)."""
        self.poll(block=True)  # a failed previous save stops the run before another is attempted
        try:
            json.dumps(meta, allow_nan=False)
        except ValueError as err:
            raise RunError(f"checkpoint meta holds a non-finite number: {err}", subject=f"checkpoint {step}")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        clean = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
        try:
            self._mgr.save(step, args=args, metrics=clean or None, force=True)
        except Exception as err:  # noqa: BLE001 - every failure to save is the same kind of fact for the user
            raise self._save_error(step, err) from err
        self._pending = step
        if not self.plan.async_save:
            self.poll(block=True)

    def poll(self, *, block: bool = False) -> None:
        """Confirm a finished async save (write its manifest), or raise `RunError` if it failed."""
        if self._pending is None:
            return
        if not block and self._mgr.is_saving_in_progress():
            return
        step, self._pending = self._pending, None
        try:
            self._mgr.wait_until_finished()
            self._mgr.check_for_errors()
        except Exception as err:  # noqa: BLE001
            raise self._save_error(step, err) from err
        if jax.process_index() == 0:
            self._manifests = [f for f in self._manifests if not f.done()]
            self._manifests.append(self._hasher.submit(self._write_manifest, step))

    def wait(self) -> None:
        """Block until every save has finished and been confirmed, and its manifest written."""
        self.poll(block=True)
        for f in self._manifests:
            f.result()
        self._manifests = []

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._hasher.shutdown(wait=True)
            self._mgr.close()

    def _write_manifest(self, step: int) -> None:
        """sha256 of the committed step's files, written atomically beside them (never raises:
        a step without a manifest is still restorable, only less strictly checked)."""
        step_dir = self.step_dir(step)
        try:
            rundir.write_manifest(step_dir, step)
            if self._on_commit is not None:
                self._on_commit(step, step_dir)
        except OSError as err:
            if step_dir.is_dir():  # not just removed by keep-N while we were reading it
                warnings.warn(f"no manifest for checkpoint {step_dir}: {err}", CheckpointWarning, stacklevel=1)

    def _save_error(self, step: int, err: BaseException) -> RunError:
        kept = [s for s in self._safe_steps() if s != step]
        return RunError(
            f"saving the checkpoint of step {step} failed: {type(err).__name__}: {err}",
            subject=f"checkpoint {self.step_dir(step)}",
            hint=(f"earlier checkpoints are intact (steps {', '.join(map(str, kept))}); " if kept else "")
            + "free space or fix the directory, then run again to resume",
        )

    def _safe_steps(self) -> list[int]:
        try:
            return self.steps()
        except Exception:  # noqa: BLE001 - only used inside an error message
            return []

    # ---- restoring -------------------------------------------------------------------------

    def read_meta(self, step: int) -> dict[str, Any]:
        return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, abstract_state: Any, check_meta: Callable[[dict], None] | None = None) -> Restored | None:
        """The newest readable checkpoint, restored into `abstract_state`'s shapes and shardings.

        None when there are no checkpoints at all. Unreadable steps are set aside with a warning
        and the next older one is tried; `check_meta(meta)` may raise (a plan that does not fit
        the checkpoint) and that error is not a reason to fall back: it propagates.
        """
        steps = self.steps()
        if not steps:
            return None
        skipped = []
        for step in reversed(steps):
            problem = verify_manifest(self.step_dir(step))
            if problem is None:
                try:
                    meta = self.read_meta(step)
                except Exception as err:  # noqa: BLE001
                    problem = f"its meta cannot be read ({type(err).__name__}: {err})"
            if problem is None:
                if check_meta is not None:
                    check_meta(meta)
                try:
                    restored = self._mgr.restore(
                        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
                    return Restored(step=step, state=restored["state"], meta=meta)
                except Exception as err:  # noqa: BLE001
                    problem = f"its arrays cannot be read ({type(err).__name__}: {str(err)[:300]})"
            skipped.append(self._set_aside(step, problem))
        raise RunError(
            f"no readable checkpoint in {self.directory}: " + "; ".join(skipped),
            subject=f"resume {self.run_dir}",
            hint=f"the unreadable ones were moved to {self.run_dir / UNREADABLE}; "
            "start a fresh run in another --run-dir, or restore a good copy of the checkpoints",
        )

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """One step's train state (used by restore_best); a failure is a RunError naming the step."""
        problem = verify_manifest(self.step_dir(step))
        if problem is not None:
            raise RunError(f"checkpoint {step} is unreadable: {problem}", subject=f"checkpoint {self.step_dir(step)}")
        try:
            return self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
        except Exception as err:  # noqa: BLE001
            raise RunError(f"checkpoint {step} cannot be read: {type(err).__name__}: {err}",
                           subject=f"checkpoint {self.step_dir(step)}") from err

    def _set_aside(self, step: int, problem: str) -> str:
        """Move an unreadable step out of orbax's sight, keeping it, and warn naming both places."""
        src = self.step_dir(step)
        dest_root = self.run_dir / UNREADABLE
        dest = dest_root / str(step)
        n = 1
        while dest.exists():
            dest, n = dest_root / f"{step}.{n}", n + 1
        if jax.process_index() == 0:
            dest_root.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dest))
        self._mgr.reload()
        message = f"checkpoint {src} is unreadable: {problem}; skipped and moved to {dest}"
        warnings.warn(message, CheckpointWarning, stacklevel=3)
        return f"step {step}: {problem}"
