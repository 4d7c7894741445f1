"""Make the small corpus of recipes/mixture.yaml from the Python standard library (no download).

    python examples/data/make_mixture_corpus.py

writes, into `mixture/` beside this script,
- `prose.jsonl`: docstrings of a fixed list of standard-library modules, one JSON record
  (`{"text": ...}`) per docstring of at least 60 characters, in source order, about 130 KB;
- `code/`: a fixed list of small standard-library modules as they are, about 110 KB.

The output depends only on the interpreter's standard library (the committed files were made with
CPython 3.11); running it twice writes the same bytes.
"""

from __future__ import annotations

import ast
import inspect
import json
import shutil
import sysconfig
from pathlib import Path

OUT = Path(__file__).resolve().parent / "mixture"
LIB = Path(sysconfig.get_paths()["stdlib"])
PROSE_MODULES = ("textwrap", "statistics", "fractions", "functools", "heapq", "random", "difflib", "argparse",
                 "dataclasses", "pathlib", "string", "calendar", "shlex", "json/__init__", "json/decoder",
                 "collections/__init__", "typing", "datetime")
CODE_MODULES = ("__future__", "abc", "bisect", "codeop", "colorsys", "copyreg", "fnmatch", "genericpath", "getpass",
                "glob", "graphlib", "io", "keyword", "linecache", "numbers", "opcode", "operator", "queue", "reprlib",
                "sched", "secrets", "stat", "string", "token", "tty", "types")
PROSE_BYTES, CODE_BYTES, MIN_DOC = 130_000, 110_000, 60


def docstrings(path: Path):
    """Every docstring of a module (module, classes, functions), cleaned, in the order they are written."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            yield inspect.cleandoc(doc)


def write_prose(out: Path) -> int:
    lines, size, seen = [], 0, set()
    for name in PROSE_MODULES:
        for doc in docstrings(LIB / f"{name}.py"):
            if len(doc) < MIN_DOC or doc in seen:
                continue
            line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
            if size + len(line.encode()) > PROSE_BYTES:
                out.write_text("".join(lines), encoding="utf-8")
                return size
            seen.add(doc)
            lines.append(line)
            size += len(line.encode())
    out.write_text("".join(lines), encoding="utf-8")
    return size


def write_code(folder: Path) -> int:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    size = 0
    for name in CODE_MODULES:
        src = LIB / f"{name}.py"
        n = src.stat().st_size
        if n > 12_000 or size + n > CODE_BYTES:
            continue
        (folder / f"{name}.py").write_bytes(src.read_bytes())
        size += n
    return size


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    prose = write_prose(OUT / "prose.jsonl")
    code = write_code(OUT / "code")
    print(f"prose.jsonl {prose:,} bytes, code/ {code:,} bytes")
