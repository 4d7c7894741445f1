"""A run from end to end, as `capidsl run` and `capidsl.train.main` do it: load the plan, arrange
the run directory, train, export.

The one place that composes the stages above the executor: a recipe (local or gs://) or a
plan.json becomes a Plan; a gs:// run directory becomes a local working copy mirrored in the
background (`capidsl.storage`); the executor (`capidsl.exec.loop.train`) trains in a local
directory; a run that has ended for good exports its final weights when the plan asks
(`capidsl.export`). The executor itself knows nothing of gs:// or export.
"""

from __future__ import annotations

from pathlib import Path

from capidsl.errors import UsageError


def load_plan(target: str, overrides: list[str] | tuple[str, ...] = (), *, progress=None):
    """A Plan from a plan.json as is, or compiled from a recipe with its --set overrides.

    Compiling prepares a missing token store (shown by `progress`, see capidsl.data.store.Silent);
    a plan.json's stores are prepared (or refused, when the files changed) by `prepare_stores`."""
    if target.startswith("gs://"):  # read from a downloaded copy (a recipe with the files its extends names)
        from capidsl.storage.gcs import GsUrl
        from capidsl.storage.remote_recipe import fetch_recipe
        from capidsl.storage.workdir import fetch_file

        target = str(fetch_file(GsUrl.parse(target)) if target.endswith(".json") else fetch_recipe(target))
    path = Path(target)
    if path.suffix == ".json":
        if overrides:
            raise UsageError("--set applies to recipes; a plan.json is run exactly as compiled")
        from capidsl.plan.plan import Plan

        try:
            return Plan.loads(path.read_text())
        except OSError as err:
            raise UsageError(f"cannot read {target}: {err.strerror}") from err
    from capidsl.plan.compile import compile_plan
    from capidsl.recipe import Recipe

    return compile_plan(Recipe.from_yaml(target, overrides=list(overrides)), progress=progress)


def prepare_stores(plan, progress=None) -> None:
    """Make sure the token stores the plan names are in the cache: prepared from the plan's sources
    when missing, and refused, naming the files, when those no longer make the plan's store."""
    from capidsl.data.store import plan_stores

    plan_stores(plan.data, progress=progress)


def run(plan, run_dir: str | Path | None = None, *, max_steps: int | None = None, stdout_is_tty: bool | None = None):
    """Train `plan` in `run_dir` (default `plan.run_dir`; a local path or gs://bucket/prefix),
    resuming from its checkpoints, and export at the end when the plan asks; the run's Summary.

    SIGTERM/SIGINT are caught from the start (a signal during start-up or compilation ends the run
    after its first step, checkpointed), and the previous handlers are put back at the end.
    """
    from capidsl.exec.loop import train
    from capidsl.exec.signals import Signals

    target = str(run_dir if run_dir is not None else plan.run_dir)
    with Signals().installed() as signals:
        if not target.startswith("gs://"):
            finished = train(plan, target, max_steps=max_steps, stdout_is_tty=stdout_is_tty, signals=signals)
            return _export_at_end(plan, target, finished)
        from capidsl.storage.remote_run import mirrored_run_dir

        with mirrored_run_dir(target) as remote:  # a local working copy, uploaded as checkpoints commit
            finished = train(plan, remote.local_dir, max_steps=max_steps, stdout_is_tty=stdout_is_tty,
                             hooks=remote.mirror, signals=signals)
            summary = _export_at_end(plan, remote.local_dir, finished)  # into the working copy; the mirror uploads it
            return remote.finish(summary)


def _export_at_end(plan, run_dir, finished):
    """The run's own export, once it has ended for good (not resumable); the Summary, with its account."""
    if plan.export.format == "none" or finished.summary.resumable:
        return finished.summary
    from capidsl.export.run_export import export_at_end

    return export_at_end(plan, run_dir, finished.params, finished.summary.params_step, finished.summary)


def describe(summary) -> str:
    """The closing lines of a run: why it ended, how far it got, its best, its hash, its export and uploads."""
    from capidsl import rundir
    from capidsl.exec.progress import format_duration

    lines = [f"{summary.stop_reason}",
             f"steps {summary.steps}, tokens {summary.tokens:,}, train time {format_duration(summary.train_time_s)}"]
    if summary.best:
        lines.append(f"best {summary.best['metric']} {summary.best['value']:.4f} at step {summary.best['step']}")
    lines.append(f"params_sha256 {summary.params_sha256[:16]}… (step {summary.params_step}); "
                 f"summary in {summary.run_dir}/{rundir.SUMMARY}")
    if summary.export:
        from capidsl.export.run_export import describe_export

        lines.append(describe_export(summary.export))
    if summary.storage:
        s = summary.storage
        lines.append(f"{s['url']}: {s['uploaded_files']} files ({s['uploaded_bytes'] / 2**20:.2f} MiB) uploaded in "
                     f"{s['upload_s']:.1f} s, {s['upload_failures']} failed attempts"
                     + ("; complete" if s["complete"] else f"; NOT complete: run `{s['sync_command']}`"))
    return "\n".join(lines)
