"""The run's final account, `RUN_DIR/summary.json`, and the parameter hash that makes runs comparable.

`params_sha256` hashes every parameter's path, dtype, shape and bytes in sorted-path order: two
runs with the same hash ended with bitwise-identical parameters, whatever their sharding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from capidsl import rundir
from capidsl.exec.metrics import json_number


def _path_name(keypath) -> str:
    parts = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey) and k.name != "value":
            parts.append(k.name)
    return ".".join(parts)


def host_arrays(tree) -> list[tuple[str, np.ndarray]]:
    """(path, whole array on the host) for every leaf, sorted by path; gathers across processes."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        values = multihost_utils.process_allgather([v for _, v in leaves], tiled=True)
    else:
        values = [v for _, v in leaves]
    return sorted(((_path_name(k), np.asarray(v)) for (k, _), v in zip(leaves, values)), key=lambda kv: kv[0])


def params_sha256(params) -> str:
    """sha256 over (path, dtype, shape, bytes) of every parameter, in sorted-path order."""
    h = hashlib.sha256()
    for path, arr in host_arrays(params):
        arr = np.ascontiguousarray(arr)
        h.update(f"{path}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Summary:
    """What `run` returns and writes to summary.json."""

    run_dir: str
    plan_name: str
    fingerprint: str
    steps: int  # optimizer steps taken in total (across resumes)
    tokens: int
    epochs: float
    stop_reason: str  # "completed", "--steps N reached", the stop rule's reason, "signal SIGTERM (resumable)"
    resumable: bool  # the run can go on from its last checkpoint (not completed, not stopped by the rule)
    resumed_from: int | None
    wall_time_s: float  # this invocation
    train_time_s: float  # across resumes
    final: dict[str, Any]  # last logged train metrics and last eval metrics
    best: dict[str, Any]  # {metric, value, step} of the best eval, when there was one
    params_step: int  # the step whose parameters params_sha256 describes (best step under restore_best)
    params_sha256: str
    checkpoint_steps: tuple[int, ...]
    memory: dict[str, Any]  # predicted per-device bytes (plan.memory) beside the measured peaks
    warnings: tuple[str, ...] = field(default=())
    export: dict[str, Any] = field(default_factory=dict)  # the verified export (capidsl.export.onnx.OnnxExport), if any
    storage: dict[str, Any] = field(default_factory=dict)  # a gs:// run directory's uploads (capidsl.storage.mirror)
    performance: dict[str, Any] = field(default_factory=dict)  # MFU: peak, its source, median window (exec.peak)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return _clean(data)

    def write(self, run_dir: str | Path) -> None:
        if jax.process_index() != 0:
            return
        text = json.dumps(self.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        rundir.write_atomic(Path(run_dir) / rundir.SUMMARY, text)


def _clean(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return json_number(v)
