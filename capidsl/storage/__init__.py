"""gs:// storage: run directories trained in a local working copy and mirrored in the background,
`capidsl sync`, and recipes, plans and exports read from or written to Cloud Storage.

Imported on first use, so that `import capidsl.storage` costs nothing until a transfer happens:
`GsUrl`, `is_gs_url`, `Store`, `sync_tree`, `Mirror`, `mirrored_run_dir`, `fetch_recipe`, `StorageError`.
It reads run directories through `capidsl.rundir` and knows nothing of the executor.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "StorageError": ("capidsl.storage.errors", "StorageError"),
    "GsUrl": ("capidsl.storage.gcs", "GsUrl"),
    "is_gs_url": ("capidsl.storage.gcs", "is_gs_url"),
    "Store": ("capidsl.storage.gcs", "Store"),
    "sync_tree": ("capidsl.storage.sync", "sync_tree"),
    "Mirror": ("capidsl.storage.mirror", "Mirror"),
    "mirrored_run_dir": ("capidsl.storage.remote_run", "mirrored_run_dir"),
    "fetch_recipe": ("capidsl.storage.remote_recipe", "fetch_recipe"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'capidsl.storage' has no attribute {name!r}")
