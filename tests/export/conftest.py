"""Export and storage fixtures: a real gcp-storage-emulator per test (started here: CI runs nothing else)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gcs_emulator import Emulator  # noqa: E402
from storage_runs import BUCKET  # noqa: E402


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    """One persistent compilation cache for every subprocess: jax2onnx's start-up compiles ~70 small
    functions (14 s cold on 2 cores, ~3 s from the cache)."""
    return tmp_path_factory.mktemp("xla-cache")


def _started(emu: Emulator, monkeypatch) -> Emulator:
    emu.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)
    emu.client().create_bucket(BUCKET)
    return emu


@pytest.fixture
def emulator(tmp_path, monkeypatch):
    """A fresh in-memory emulator with the test bucket; STORAGE_EMULATOR_HOST points at it for this test."""
    emu = _started(Emulator(tmp_path / "emulator.log"), monkeypatch)
    yield emu
    emu.stop()


@pytest.fixture
def disk_emulator(tmp_path, monkeypatch):
    """An emulator that keeps its objects on disk, so that a restart keeps them (a real bucket's outage)."""
    (tmp_path / "emulator-data").mkdir()
    emu = _started(Emulator(tmp_path / "emulator.log", data_dir=tmp_path / "emulator-data"), monkeypatch)
    yield emu
    emu.stop()
