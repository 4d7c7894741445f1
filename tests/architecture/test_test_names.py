"""pytest's default import mode imports a test file outside a package by its bare module name, so two
`test_x.py` in different non-package folders break collection for the whole suite (CI stopped at
collection once this way). Checked here from the file names, so the message names both files."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _top_module(path: Path) -> str:
    """The name pytest imports the file under: dotted up through the folders holding __init__.py."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").exists():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def test_test_modules_have_unique_import_names():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in sorted(TESTS.rglob("test_*.py")):
        if ".venv" not in path.parts:
            seen[_top_module(path)].append(str(path.relative_to(TESTS)))
    clashes = {name: files for name, files in seen.items() if len(files) > 1}
    assert not clashes, f"test files pytest would import under one name (rename one): {clashes}"
