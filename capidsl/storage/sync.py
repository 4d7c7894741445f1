"""Bring a gs:// prefix up to date with a local run directory: upload what differs, never delete.

The run directory is cut into *units* that are synced one at a time, in this order:
1. each committed checkpoint `checkpoints/<step>/`, oldest first: its files, then its manifest
   `capidsl.sha256.json` last. A remote step therefore counts as complete exactly when its
   manifest is there; when a different manifest is there already (a step saved again after a
   resume), it is deleted first, so the step reads as incomplete until the new one lands. A step
   without a local manifest (orbax committed it but the manifest was never written) is not
   uploaded and is reported as unmirrored.
2. every other folder (`tensorboard/`, `export/`, `checkpoints.unreadable/`, ...);
3. the top-level files, `summary.json` last.
A file is uploaded when the remote object is missing or differs in size or CRC32C; identical
ones are skipped, so a sync after a failure uploads only what is missing. Files that are still
being appended to (metrics, TensorBoard events) are read once and uploaded as that snapshot.
Temporary files (`*.tmp`, orbax's unfinished `*.orbax-checkpoint-tmp*` folders, capidsl's
`.capidsl-*`) are never uploaded. Remote objects without a local file are left alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from capidsl import rundir
from capidsl.rundir import MANIFEST
from capidsl.storage.gcs import RemoteObject, Store, file_crc32c

SNAPSHOT_LIMIT = 64 * 2**20  # files outside checkpoints up to this size are uploaded from an in-memory copy
LAST_FILE = rundir.SUMMARY


def excluded(rel: str) -> bool:
    """Temporary files and unfinished checkpoints, which a mirror must never hold."""
    parts = rel.split("/")
    return (parts[-1].endswith(".tmp") or parts[-1].startswith(".capidsl-")
            or any("orbax-checkpoint-tmp" in p for p in parts))


@dataclass(frozen=True)
class Unit:
    kind: str  # "step" | "tree" | "top"
    rel: str  # "checkpoints/20", "tensorboard", ""

    def __str__(self) -> str:
        return self.rel or "top-level files"


@dataclass
class SyncReport:
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    identical_files: int = 0
    unmirrored: list[str] = field(default_factory=list)  # checkpoint folders without a manifest
    seconds: float = 0.0

    def describe(self) -> str:
        text = (f"uploaded {self.uploaded_files} files ({self.uploaded_bytes / 2**20:.2f} MiB) in {self.seconds:.1f} s; "
                f"{self.identical_files} already identical")
        if self.unmirrored:
            text += f"; not mirrored (no manifest): {', '.join(self.unmirrored)}"
        return text


class Crcs:
    """CRC32C of local files, remembered by (path, size, mtime) so that repeated syncs read each file once."""

    def __init__(self):
        self._known: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._known:
            self._known[key] = file_crc32c(path)
        return self._known[key]


def _is_step(p: Path) -> bool:
    return p.is_dir() and p.name.isdigit()


def units(local: Path) -> list[Unit]:
    """The run directory's units in upload order (see the module docstring)."""
    out: list[Unit] = []
    ckpts = rundir.checkpoints_dir(local)
    if ckpts.is_dir():
        out += [Unit("step", rundir.step_rel(step)) for step in rundir.checkpoint_steps(local)]
        out += [Unit("tree", f"{rundir.CHECKPOINTS}/{p.name}") for p in sorted(ckpts.iterdir())
                if p.is_dir() and not _is_step(p) and not excluded(p.name)]
    if local.is_dir():
        out += [Unit("tree", p.name) for p in sorted(local.iterdir())
                if p.is_dir() and p.name != rundir.CHECKPOINTS and not excluded(p.name)]
        out.append(Unit("top", ""))
    return out


def _files(root: Path, base: Path, recursive: bool) -> list[tuple[str, Path]]:
    found = root.rglob("*") if recursive else root.iterdir()
    files = [(p.relative_to(base).as_posix(), p) for p in found if p.is_file()]
    return sorted((rel, p) for rel, p in files if not excluded(rel))


def _same(remote: RemoteObject | None, path: Path, crcs: Crcs) -> bool:
    return remote is not None and remote.size == path.stat().st_size and remote.crc32c == crcs(path)


def sync_unit(store: Store, local: Path, unit: Unit, crcs: Crcs, report: SyncReport,
              on_upload: Callable[[int], None] | None = None) -> None:
    """Upload what of one unit differs remotely. Raises StorageError (or OSError) on failure."""

    def put(rel: str, path: Path, snapshot: bool) -> None:
        size = path.stat().st_size
        store.upload(rel, path, snapshot=snapshot and size <= SNAPSHOT_LIMIT)
        report.uploaded_files += 1
        report.uploaded_bytes += size
        if on_upload is not None:
            on_upload(size)

    root = local / unit.rel if unit.rel else local
    if unit.kind == "step":
        manifest = root / MANIFEST
        if not manifest.is_file():
            if root.is_dir():
                report.unmirrored.append(unit.rel)
            return
        try:
            remote = store.list(unit.rel + "/")
            files = [(rel, p) for rel, p in _files(root, local, True) if p != manifest]
            manifest_rel = f"{unit.rel}/{MANIFEST}"
            todo = [(rel, p) for rel, p in files if not _same(remote.get(rel), p, crcs)]
            if not todo and _same(remote.get(manifest_rel), manifest, crcs):
                report.identical_files += len(files) + 1
                return
            if manifest_rel in remote and not _same(remote[manifest_rel], manifest, crcs):
                store.delete(manifest_rel)
            report.identical_files += len(files) - len(todo)
            for rel, p in todo:
                put(rel, p, snapshot=False)
            put(manifest_rel, manifest, snapshot=False)
        except FileNotFoundError:
            if root.exists():
                raise
            return  # orbax's keep-N removed the step while it was being uploaded: it is no longer part of the run
        return
    recursive = unit.kind == "tree"
    if not root.is_dir():
        return
    remote = store.list(unit.rel + "/" if unit.rel else "", recursive=recursive)
    files = _files(root, local, recursive)
    files.sort(key=lambda rp: rp[0] == LAST_FILE)  # stable: summary.json goes last
    for rel, p in files:
        try:
            if _same(remote.get(rel), p, crcs):
                report.identical_files += 1
            else:
                put(rel, p, snapshot=True)
        except FileNotFoundError:
            continue  # a temporary file renamed away between listing and reading


def sync_tree(store: Store, local: str | os.PathLike, crcs: Crcs | None = None) -> SyncReport:
    """Upload everything of the run directory `local` that differs under `store`'s prefix."""
    local = Path(local)
    crcs = crcs or Crcs()
    report = SyncReport()
    t0 = time.perf_counter()
    for unit in units(local):
        sync_unit(store, local, unit, crcs, report)
    report.seconds = time.perf_counter() - t0
    return report


def mismatches(store: Store, local: str | os.PathLike, crcs: Crcs | None = None) -> list[str]:
    """Local files (of mirrored units) whose remote copy is missing or differs by size or CRC32C."""
    local = Path(local)
    crcs = crcs or Crcs()
    remote = store.list("")
    unmirrored = {u.rel for u in units(local) if u.kind == "step" and not (local / u.rel / MANIFEST).is_file()}
    out = []
    for rel, p in _files(local, local, True):
        if any(rel.startswith(u + "/") for u in unmirrored):
            continue
        if not _same(remote.get(rel), p, crcs):
            out.append(rel)
    return out
