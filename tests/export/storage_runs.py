"""Tiny recipes and `capidsl` subprocesses for the export and storage tests."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
import runs  # noqa: E402  (tests/e2e/runs.py: subprocess environments)

BUCKET = "capidsl-test"

# A tiny language model that exports at the end of the run; checkpoints every 10 steps, all kept.
RECIPE = """
name: tiny-export
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64}
data: {source: synthetic, synthetic_examples: 512, validation_fraction: 0.25}
training: {batch_size: 16, duration: "40 steps", seed: 1, mixed_precision: false}
eval: {every: "every 10 steps", batches: 2}
checkpoint: {every: "every 10 steps", keep: 5}
logging: {every: "every 5 steps", progress: plain, tensorboard: true}
export: {format: onnx}
"""


def write_recipe(folder: Path, name: str = "tiny.yaml", text: str = RECIPE) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def subprocess_env(emu, cache_dir: Path, xla_cache: Path, **extra: str) -> dict[str, str]:
    """`capidsl` in a subprocess: one CPU device, the shared XLA cache, the emulator, its own working-copy cache."""
    e = runs.env(devices=1, cache=xla_cache)
    e.pop("STORAGE_EMULATOR_HOST", None)
    if emu is not None:
        e |= emu.env()
    e["CAPIDSL_CACHE_DIR"] = str(cache_dir)
    e |= extra
    return e


def capidsl(*args: str, environ: dict[str, str], timeout: float = 300):
    return runs.run([sys.executable, "-m", "capidsl", *args], environ, timeout=timeout)


def start_capidsl(*args: str, environ: dict[str, str]):
    return runs.start([sys.executable, "-m", "capidsl", *args], environ)


def summary(run_dir: Path) -> dict:
    return runs.summary(run_dir)
