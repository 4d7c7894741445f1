"""Where a trained run goes next: ONNX files verified by onnxruntime, and gs:// run directories.

Imported on first use (like `capidsl`), so that `import capidsl.export` costs nothing until an
export or a transfer actually happens: `export_onnx`, `export_run`, `sync_tree`, `Mirror`,
`mirrored_run_dir`, `ExportError`, `StorageError`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExportError": ("capidsl.export.errors", "ExportError"),
    "StorageError": ("capidsl.export.errors", "StorageError"),
    "OnnxExport": ("capidsl.export.onnx", "OnnxExport"),
    "export_onnx": ("capidsl.export.onnx", "export_onnx"),
    "export_run": ("capidsl.export.run_export", "export_run"),
    "GsUrl": ("capidsl.export.gcs", "GsUrl"),
    "is_gs_url": ("capidsl.export.gcs", "is_gs_url"),
    "sync_tree": ("capidsl.export.sync", "sync_tree"),
    "Mirror": ("capidsl.export.mirror", "Mirror"),
    "mirrored_run_dir": ("capidsl.export.remote_run", "mirrored_run_dir"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capidsl.export' has no attribute {name!r}")
