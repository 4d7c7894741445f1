"""The house's rooms, checked from the source: which package may import which, and where the run
directory's file names are spelled. Read with `ast` (every import, also those inside functions), so
nothing is imported to check it."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "capidsl"

# The run directory's layout names, spelled only in capidsl/rundir.py.
LAYOUT_NAMES = ("plan.json", "summary.json", "metrics.jsonl", "capidsl.sha256.json", "checkpoints.unreadable")
LAYOUT_DIRS = ("checkpoints", "tensorboard")


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "capidsl"


def _imports(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if node.module == "capidsl"]
    return [name for name in out if name.startswith("capidsl.")]


def import_graph() -> dict[str, dict[str, list[str]]]:
    """room -> room it imports -> the files that do it (a room is a package or a top-level module)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _room(path)
        for name in _imports(ast.parse(path.read_text(), str(path))):
            dst = name.split(".")[1]
            if dst != src and ((PACKAGE / dst).is_dir() or (PACKAGE / f"{dst}.py").is_file()):
                graph[src][dst].append(str(path.relative_to(PACKAGE.parent)))
    return graph


def test_no_two_rooms_import_each_other():
    graph = import_graph()
    pairs = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, {})})
    assert pairs == [], {f"{a} <-> {b}": (graph[a][b], graph[b][a]) for a, b in pairs}


def test_the_executor_imports_neither_export_nor_storage():
    graph = import_graph()
    assert not {"export", "storage", "runner", "cli"} & set(graph["exec"]), dict(graph["exec"])


def test_the_library_never_imports_the_cli():
    graph = import_graph()
    users = {room: files for room in graph for dst, files in graph[room].items() if dst == "cli" and room != "__main__"}
    assert users == {}


def test_the_run_directory_module_stands_at_the_bottom():
    graph = import_graph()
    assert set(graph["rundir"]) <= {"errors"}, dict(graph["rundir"])


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant that is not a docstring, with its line."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _a_layout_path(text: str) -> bool:
    """A string used as a path of the layout: a name itself, or a path that holds one as a part
    (prose that mentions a file, like "a plan.json made for another cluster", is not a path)."""
    if " " in text:
        return False
    parts = text.strip("/").split("/")
    return any(p in LAYOUT_NAMES or p in LAYOUT_DIRS or p.startswith(tuple(f"{n}." for n in LAYOUT_NAMES))
               for p in parts)


def test_the_run_directory_layout_is_spelled_in_one_module():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "rundir.py" and path.parent == PACKAGE:
            continue
        for line, text in _strings(ast.parse(path.read_text(), str(path))):
            if _a_layout_path(text):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert found == []


def test_the_layout_check_sees_paths_and_leaves_prose():
    assert _a_layout_path("summary.json") and _a_layout_path("checkpoints") and _a_layout_path("/checkpoints/")
    assert _a_layout_path("plan.json.tmp") and _a_layout_path("checkpoints/10")
    assert not _a_layout_path("a plan.json made for another number of processes does not fit")
    assert not _a_layout_path("export") and not _a_layout_path("checkpoint")
