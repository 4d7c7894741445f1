"""The run directory: its layout, the checkpoint manifest, and reading a run back from disk.

```
RUN_DIR/
  plan.json                 the Plan the run trains (written atomically at start)
  metrics.jsonl             one JSON line per log record and per eval record, as they happen
  summary.json              the run's final account (written atomically at the end)
  checkpoints/<step>/       orbax's step folders, each with our sha256 manifest capidsl.sha256.json
  checkpoints.unreadable/   steps set aside at resume (never deleted)
  tensorboard/              TensorBoard events, when the plan asks for them
  export/                   the run's exports
```

Every other module names these through this one: executor, storage, export, report and CLI import
down into it, and it imports nothing but the standard library (so `capidsl report` and the
storage tools read runs without JAX).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from capidsl.errors import SubjectError

PLAN = "plan.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
UNREADABLE = "checkpoints.unreadable"
TENSORBOARD = "tensorboard"
EXPORT = "export"
MANIFEST = "capidsl.sha256.json"

# The top-level files, in the order a copy should write them: summary.json last, since its
# presence says the run has ended.
TOP_FILES = (PLAN, METRICS, SUMMARY)


class RunDirError(SubjectError):
    """A directory that is not (or not yet) what a command needs of a run."""


# ---- paths ----------------------------------------------------------------------------------


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoints_dir(run_dir) / str(step)


def step_rel(step: int) -> str:
    """A step folder's path relative to the run directory, with forward slashes (also a gs:// suffix)."""
    return f"{CHECKPOINTS}/{step}"


def checkpoint_steps(run_dir: str | os.PathLike) -> list[int]:
    """The steps that have a folder under checkpoints/, ascending (committed or not)."""
    root = checkpoints_dir(run_dir)
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def is_run(run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` was started by `capidsl run` (it holds plan.json)."""
    return (Path(run_dir) / PLAN).is_file()


# ---- writing --------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a temporary sibling and a rename: readers see the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- the checkpoint manifest ----------------------------------------------------------------


def file_digests(step_path: Path) -> dict[str, str]:
    """sha256 of every file under a step folder (the manifest excluded), by relative path."""
    digests = {}
    for path in sorted(p for p in step_path.rglob("*") if p.is_file() and p.name != MANIFEST):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests[path.relative_to(step_path).as_posix()] = h.hexdigest()
    return digests


def write_manifest(step_path: Path, step: int) -> None:
    """Record the sha256 of a committed step's files beside them (orbax verifies no contents itself)."""
    write_atomic(step_path / MANIFEST, json.dumps({"step": step, "files": file_digests(step_path)}, indent=1,
                                                  sort_keys=True))


def has_manifest(step_path: Path) -> bool:
    return (step_path / MANIFEST).is_file()


def manifest_files(data: bytes | str) -> list[str] | None:
    """The file list of a manifest's text, or None if it is not one."""
    try:
        return sorted(json.loads(data)["files"])
    except (ValueError, KeyError, TypeError):
        return None


def verify_manifest(step_path: Path) -> str | None:
    """None if the step's files match its manifest (or it has none); otherwise what is wrong."""
    manifest = step_path / MANIFEST
    if not manifest.exists():
        return None
    try:
        expected = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"its manifest {MANIFEST} is unreadable ({err})"
    actual = file_digests(step_path)
    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"file {missing[0]} is missing"
    changed = sorted(k for k in expected if actual[k] != expected[k])
    if changed:
        return f"file {changed[0]} does not match its sha256 (truncated or corrupted)"
    return None


# ---- reading a run back ---------------------------------------------------------------------


def read_plan_text(run_dir: str | os.PathLike) -> str:
    """plan.json's text; a RunDirError naming the directory when it is not a run."""
    path = Path(run_dir) / PLAN
    if not path.is_file():
        raise RunDirError(f"{run_dir} holds no {PLAN}", subject=str(run_dir),
                          hint="pass the --run-dir of a `capidsl run`")
    return path.read_text()


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """summary.json as a dict, or None while the run has not ended (or was killed)."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise RunDirError(f"{path} is not valid JSON ({err})", subject=SUMMARY) from None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]] | None:
    """Every complete line of metrics.jsonl (a line cut short by a kill is skipped); None if there is no file."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return None
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def final_params_step(run_dir: str | os.PathLike, steps: list[int]) -> int:
    """The checkpoint holding the weights the run ended with: summary.json's params_step when it is
    kept (the best step under restore_best), else the newest of `steps`."""
    summary = read_summary(run_dir) or {}
    wanted = summary.get("params_step")
    return wanted if wanted in steps else steps[-1]


def best_step(run_dir: str | os.PathLike) -> int | None:
    """The step of the run's best evaluation (summary.json's best.step), if it had one."""
    best = (read_summary(run_dir) or {}).get("best")
    return int(best["step"]) if best and best.get("step") is not None else None
