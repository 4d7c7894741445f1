"""Export a run: `capidsl export RUN_DIR`, and the export at the end of `capidsl run` when the plan asks.

Where the file goes: `--out`, else the plan's `export.path`, else `RUN_DIR/export/model.onnx`
(relative paths are relative to the current folder, like `--run-dir`). A gs:// target is exported
and verified locally first (into the run directory's `export/` folder), then uploaded and its
CRC32C checked; a gs:// run directory's own `export/` folder is uploaded by its mirror.
Which weights: by default the run's final ones (summary.json's `params_step`), `--step N` a
checkpoint, `--best` the checkpoint of the best evaluation (summary.json's `best.step`).
`--format hf` writes a Hugging Face model directory instead (capidsl/export/hf.py): `--out DIR`,
else `RUN_DIR/export/hf/` (the working copy's, for a gs:// run); a gs:// target is refused, since
a directory cannot be replaced atomically in a bucket. The end-of-run export is ONNX only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from capidsl import rundir
from capidsl.export.errors import ExportError
from capidsl.storage.errors import StorageError
from capidsl.storage.gcs import GsUrl, Store, is_gs_url
from capidsl.export.onnx import OnnxExport, export_onnx

FORMATS = ("onnx", "hf")
DEFAULT_NAME = "model.onnx"
HF_DIR = "hf"  # RUN_DIR/export/hf/


def _best_step(local: Path) -> int:
    step = rundir.best_step(local)
    if step is None:
        raise ExportError("the run has no best evaluation to export", subject=str(local),
                          hint="export its final weights (no --best) or a checkpoint (--step N)")
    return step


def _targets(local: Path, out: str | None, plan_path: str | None, remote: GsUrl | None) -> tuple[Path, GsUrl | None]:
    """(local file to write and verify, gs:// object to upload it to afterwards, if any)."""
    chosen = out if out is not None else plan_path
    if chosen is None:
        return local / rundir.EXPORT / DEFAULT_NAME, (remote.child(f"{rundir.EXPORT}/{DEFAULT_NAME}") if remote else None)
    if is_gs_url(chosen):
        url = GsUrl.parse(chosen)
        if not url.prefix or chosen.endswith("/"):
            raise ExportError("a gs:// export target names the file, e.g. gs://bucket/models/model.onnx",
                              subject=chosen)
        return local / rundir.EXPORT / url.basename, url
    path = Path(chosen)
    return (path / DEFAULT_NAME if path.is_dir() else path), None


def _upload(result: OnnxExport, url: GsUrl) -> dict[str, Any]:
    obj = Store(url.parent).upload(url.basename, Path(result.path))
    return {"uploaded_to": str(url), "crc32c": obj.crc32c}


def export_run(run_dir: str, *, fmt: str = "onnx", step: int | None = None, best: bool = False,
               out: str | None = None, opset: int | None = None, tolerance: float | None = None) -> dict[str, Any]:
    """Export a run directory's weights (a local path or gs://); the export's account
    (OnnxExport.to_json + upload, or HfExport.to_json)."""
    from capidsl.exec.generate import load_run

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}", subject="--format", hint=f"formats: {', '.join(FORMATS)}")
    if fmt == "hf" and out is not None and is_gs_url(out):
        raise ExportError("a Hugging Face export is written to a local directory, not to gs://", subject=out,
                          hint="export to a local --out DIR, then copy it (gcloud storage cp -r DIR gs://...)")
    remote = None
    if is_gs_url(run_dir):
        from capidsl.storage.workdir import pull, working_copy

        remote = GsUrl.parse(run_dir)
        local = working_copy(remote)
        store = Store(remote)
        store.check()
        pull(store, local, steps=(step,) if step is not None else ())
    else:
        local = Path(run_dir)
        if not local.is_dir():
            raise ExportError("no such run directory", subject=run_dir, hint="pass the --run-dir of a `capidsl run`")
    if best:
        step = _best_step(local)
    plan, _, params, at = load_run(local, step)
    if fmt == "hf":
        from capidsl.export.hf import export_hf

        target = Path(out) if out is not None else local / rundir.EXPORT / HF_DIR
        return export_hf(plan, params, at, target, tolerance=tolerance).to_json()
    target, upload_to = _targets(local, out, plan.export.path if out is None else None, remote)
    result = export_onnx(plan, params, at, target, opset=opset, tolerance=tolerance)
    account = result.to_json()
    if upload_to is not None:
        account |= _upload(result, upload_to)
    return account


def export_at_end(plan, run_dir: str | os.PathLike, params, step: int, summary):
    """The run's own export (plan.export.format != "none"): verified, recorded in summary.json; the new Summary.

    A refused export is recorded too, and then raised: the training and its checkpoints are intact,
    and `capidsl export RUN_DIR` can try again with other settings.
    """
    import jax

    from capidsl.export.onnx import host_params

    if plan.export.format != "onnx":
        raise ExportError(f"unknown export format {plan.export.format!r} at the end of a run", subject="export.format",
                          hint="the run exports ONNX; `capidsl export RUN_DIR --format hf` afterwards")
    arrays = host_params(params)  # every process takes part in the gather; process 0 writes
    if jax.process_index() != 0:
        return summary
    local = Path(run_dir)
    target, upload_to = _targets(local, None, plan.export.path, None)
    try:
        result = export_onnx(plan, arrays, step, target)
        account = result.to_json()
        if upload_to is not None:
            account |= _upload(result, upload_to)
    except (ExportError, StorageError) as err:
        dataclasses.replace(summary, export={"error": err.render(), "path": str(target)}).write(local)
        raise
    summary = dataclasses.replace(summary, export=account)
    summary.write(local)
    return summary


def describe_export(account: dict[str, Any]) -> str:
    """The closing line about an export (from summary.json's "export", or export_run's account)."""
    if "error" in account:
        return f"export refused: {account['error']}"
    if account.get("format") == "hf":
        from capidsl.export.hf import HfExport

        fields = {f.name for f in dataclasses.fields(HfExport)}
        return HfExport(**{k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in account.items() if k in fields}).describe()
    fields = {f.name for f in dataclasses.fields(OnnxExport)}
    line = OnnxExport(**{k: v for k, v in account.items() if k in fields}).describe()
    if "uploaded_to" in account:
        line += f"; uploaded to {account['uploaded_to']} (crc32c {account['crc32c']} verified)"
    return line
