"""The local working copy of a gs:// run directory, and what is downloaded into it.

A gs:// run trains in a local folder keyed by its URL,
`$CAPIDSL_CACHE_DIR/gs/<bucket>/<prefix>` (default cache: `$XDG_CACHE_HOME/capidsl`, else
`~/.cache/capidsl`): orbax, metrics and the export write there at local-disk speed, and the
mirror uploads from there. The same URL on the same machine finds the same folder again.

`pull` downloads what a resume needs when the remote run is ahead of the working copy (a fresh
machine, or another machine trained further): the newest complete remote checkpoint, plus the
ones the remote summary.json says the run kept (its `checkpoint_steps`, best and params steps),
each into a temporary folder, checked against its sha256 manifest and only then renamed into
`checkpoints/`; then plan.json, metrics.jsonl and summary.json. A remote step is complete when
its manifest is there and names only files that are there (the mirror uploads the manifest last).
Remote TensorBoard events and exports are not downloaded (they are not needed to go on).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from capidsl import rundir
from capidsl.rundir import MANIFEST, TOP_FILES, verify_manifest
from capidsl.storage.errors import StorageError
from capidsl.storage.gcs import GsUrl, Store

CACHE_ENV = "CAPIDSL_CACHE_DIR"
_STEP_MANIFEST = re.compile("^" + re.escape(rundir.CHECKPOINTS) + r"/(\d+)/" + re.escape(MANIFEST) + "$")


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "capidsl"


def working_copy(url: GsUrl) -> Path:
    """The local folder where the run at `url` is trained and from which it is uploaded."""
    return cache_root() / "gs" / url.bucket / Path(*url.prefix.split("/")) if url.prefix else cache_root() / "gs" / url.bucket


def local_steps(local: Path) -> list[int]:
    return rundir.checkpoint_steps(local)


def _remote_manifest(store: Store, step: int) -> list[str] | None:
    data = store.read_bytes(f"{rundir.step_rel(step)}/{MANIFEST}")
    if data is None:
        return None
    return rundir.manifest_files(data)


def _download_step(store: Store, local: Path, step: int, files: list[str]) -> str | None:
    """Download one remote step beside `checkpoints/`, verify it, then rename it in. None, or why not."""
    staging = local / f".capidsl-download-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    base = rundir.step_rel(step)
    for rel in [*files, MANIFEST]:
        store.download(f"{base}/{rel}", staging / rel)
    problem = verify_manifest(staging)
    if problem is not None:
        shutil.rmtree(staging, ignore_errors=True)
        return problem
    rundir.checkpoints_dir(local).mkdir(parents=True, exist_ok=True)
    os.replace(staging, local / base)
    return None


def pull(store: Store, local: Path, *, steps: tuple[int, ...] = ()) -> list[str]:
    """Download into `local` what resuming needs from `store` (see the module docstring); notes of what was done.

    `steps` are wanted in addition (e.g. `capidsl export --step N`).
    """
    local.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    remote = store.list("")
    have = local_steps(local)
    newest_local = have[-1] if have else -1
    with_manifest = sorted(int(m.group(1)) for m in map(_STEP_MANIFEST.match, remote) if m)
    summary = {}
    if rundir.SUMMARY in remote:
        try:
            summary = json.loads(store.read_bytes(rundir.SUMMARY) or b"{}")
        except ValueError:
            summary = {}
    kept = set(summary.get("checkpoint_steps") or ())
    kept |= {summary.get("params_step"), (summary.get("best") or {}).get("step")}
    wanted = [s for s in with_manifest if s > newest_local and s in kept] + [s for s in steps if s not in have and s in with_manifest]
    newer = [s for s in with_manifest if s > newest_local]
    pulled = []
    for step in sorted(set(wanted) | set(newer[-1:]), reverse=True):
        files = _remote_manifest(store, step)
        if files is None or any(f"{rundir.step_rel(step)}/{f}" not in remote for f in files):
            notes.append(f"{store.url}/{rundir.step_rel(step)} is incomplete remotely: not downloaded")
            continue
        problem = _download_step(store, local, step, files)
        if problem:
            notes.append(f"{store.url}/{rundir.step_rel(step)} does not match its manifest ({problem}): not downloaded")
            continue
        pulled.append(step)
    if pulled or not rundir.is_run(local):
        for name in TOP_FILES:
            if name in remote and (pulled or not (local / name).exists()):
                store.download(name, local / name)
    if pulled:
        notes.append(f"downloaded checkpoint{'s' if len(pulled) > 1 else ''} {', '.join(map(str, sorted(pulled)))} "
                     f"from {store.url} into {local}")
    return notes


def fetch_file(url: GsUrl, store: Store | None = None) -> Path:
    """Download one object (a recipe or a plan.json) into the cache; a missing object is an error."""
    store = store or Store(GsUrl(url.bucket, ""))
    dest = cache_root() / "files" / url.bucket / Path(*url.prefix.split("/"))
    data = store.read_bytes(url.prefix)
    if data is None:
        raise StorageError("no such object", subject=str(url), hint="check the URL (gcloud storage ls)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".capidsl-download.{dest.name}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest
