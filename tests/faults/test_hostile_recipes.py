"""Recipes from strangers: alias bombs, deep nesting, huge files, bytes that are not UTF-8, keys that are
not strings. `capidsl validate` refuses each with its location, in a process whose address space is
capped at 1 GiB and whose run is bounded by a timeout (a bomb that expanded would blow either)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1 << 30

HOSTILE = {
    "laughs.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "model: *i\n",
    "deep.yaml": "model: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep_block.yaml": "model:\n" + "".join(" " * i + "- \n" for i in range(1, 300)),
    "not_utf8.yaml": b"model: {family: gpt}\nname: caf\xe9\n",
    "keys.yaml": "model: {family: gpt}\n1: one\n[a, b]: two\n",
}


# The limit is set by the child itself: a preexec_fn would fork this multithreaded (JAX) process.
CAPPED = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, ({0}, {0})); "
          "sys.argv = ['capidsl'] + sys.argv[1:]; runpy.run_module('capidsl', run_name='__main__')").format(LIMIT)


def test_every_hostile_recipe_is_refused_with_its_location_in_bounded_memory(tmp_path):
    for name, body in HOSTILE.items():
        (tmp_path / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    with open(tmp_path / "huge.yaml", "wb") as f:  # 64 MiB: read only as far as the 1 MiB limit
        f.write(b"model: {family: gpt}\n# " + b"x" * (64 << 20) + b"\n")
    done = subprocess.run([sys.executable, "-c", CAPPED, "validate", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 1, done.stderr
    out = done.stdout + done.stderr
    assert "Traceback" not in out and "MemoryError" not in out
    expected = {
        "laughs.yaml": "alias bomb",
        "deep.yaml": "nesting deeper than",
        "deep_block.yaml": "nesting deeper than",
        "not_utf8.yaml": "not UTF-8 text (byte 0xe9)",
        "keys.yaml": "keys must be strings",
        "huge.yaml": "larger than 1024 KiB",
    }
    for name, words in expected.items():
        lines = [line for line in out.splitlines() if f"{name}:" in line and words in line]
        assert lines, f"{name}: no line saying {words!r} in\n{out}"
        assert lines[0].split(f"{name}:")[1].split(":")[0].isdigit()  # file:LINE:col
