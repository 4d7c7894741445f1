"""The default corpus: the Python standard library's own `.py` sources, on every machine without a download.

Files are listed in sorted relative-path order and split into train/validation *by file*, with a
stable hash of the relative path, so the split is the same on every machine with the same Python.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from functools import lru_cache
from pathlib import Path


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=1)
def stdlib_files() -> list[tuple[str, Path]]:
    """(relative path, absolute path) of every stdlib `.py` file outside site-packages, sorted."""
    root = stdlib_root()
    files = []
    for top, dirs, names in os.walk(root):
        rel_top = os.path.relpath(top, root)
        if rel_top == ".":
            dirs[:] = [d for d in dirs if d not in ("site-packages", "dist-packages")]
        for name in names:
            if name.endswith(".py"):
                path = Path(top, name)
                if path.is_file():
                    files.append((name if rel_top == "." else f"{Path(rel_top).as_posix()}/{name}", path))
    files.sort()
    return files


def in_validation(key: str, fraction: float) -> bool:
    """Whether a document (by its stable key: a relative path or an index) belongs to the validation split."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 < fraction
