"""The language stays light: parsing never imports jax; the AST never imports lark."""

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("code", [
    "from capidsl.lang import parse_schedule, parse_stop_rule; parse_schedule('constant(1e-3, rest)'); "
    "parse_stop_rule('val_loss stalls for 5 evals')",
    "import capidsl.lang.explain as e; e.explain('linear(0 -> 1e-3, 10 steps) then constant(1e-3, rest)')",
])
def test_parsing_imports_no_jax(code):
    modules = _modules_after(code)
    assert not {m for m in modules if m.split(".")[0] in ("jax", "optax", "flax", "orbax", "grain")}


def test_ast_imports_no_lark():
    modules = _modules_after("import capidsl.lang.ast, capidsl.lang")
    assert "lark" not in modules
