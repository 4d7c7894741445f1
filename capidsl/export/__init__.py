"""Where a trained run goes next: model files verified against JAX before they count (ONNX, Hugging Face).

Imported on first use (like `capidsl`), so that `import capidsl.export` costs nothing until an
export actually happens: `export_onnx`, `export_hf`, `export_run`, `export_at_end`, `ExportError`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExportError": ("capidsl.export.errors", "ExportError"),
    "OnnxExport": ("capidsl.export.onnx", "OnnxExport"),
    "export_onnx": ("capidsl.export.onnx", "export_onnx"),
    "HfExport": ("capidsl.export.hf", "HfExport"),
    "export_hf": ("capidsl.export.hf", "export_hf"),
    "export_run": ("capidsl.export.run_export", "export_run"),
    "export_at_end": ("capidsl.export.run_export", "export_at_end"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capidsl.export' has no attribute {name!r}")
