"""Checkpoints on a real orbax directory: keep-N and keep-best, manifests, fallback, failed saves."""

from __future__ import annotations

import errno
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from capidsl.exec.checkpoint import (
    MANIFEST,
    UNREADABLE,
    Checkpoints,
    CheckpointWarning,
    decode_loader_state,
    encode_loader_state,
)
from capidsl.exec.errors import RunError
from capidsl.plan.plan import CheckpointPlan


def _plan(keep=2, metric=None, mode="min", best=0, async_save=True):
    return CheckpointPlan(keep=keep, keep_best_metric=metric, keep_best_mode=mode, keep_best=best, async_save=async_save)


def _mesh():
    return jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _state(mesh, value: float):
    sh = NamedSharding(mesh, PartitionSpec("data"))
    return {"w": jax.device_put(jnp.full((8, 4), value, jnp.float32), sh),
            "step": jax.device_put(jnp.asarray(int(value), jnp.int32), NamedSharding(mesh, PartitionSpec()))}


def _abstract(state):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _largest_array_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix()]
    return max(files, key=lambda p: p.stat().st_size)


def test_roundtrip_sharded_keep_n_and_manifest(tmp_path):
    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan(keep=2))
    for step in (1, 2, 3):
        ck.save(step, _state(mesh, step), {"step": step, "loader": encode_loader_state(b"\x00\x01pos")})
    ck.wait()
    assert ck.steps() == [2, 3]
    assert json.loads((ck.step_dir(3) / MANIFEST).read_text())["step"] == 3
    got = ck.restore_latest(_abstract(_state(mesh, 0)))
    assert got.step == 3 and got.meta["step"] == 3
    assert decode_loader_state(got.meta["loader"]) == b"\x00\x01pos"
    np.testing.assert_array_equal(np.asarray(got.state["w"]), np.full((8, 4), 3.0))
    assert got.state["w"].sharding.spec == PartitionSpec("data")
    ck.close()


def test_keep_best_by_metric_survives_keep_n(tmp_path):
    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan(keep=1, metric="val_loss", mode="min", best=1))
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: None, 5: 2.5}
    for step, v in losses.items():
        ck.save(step, _state(mesh, step), {"step": step}, metrics=None if v is None else {"val_loss": v})
    ck.wait()
    assert ck.steps() == [2, 5]  # the newest, and the best by val_loss
    ck.close()


def test_corrupted_latest_falls_back_with_a_warning_and_is_kept_aside(tmp_path):
    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan(keep=3))
    for step in (1, 2):
        ck.save(step, _state(mesh, step), {"step": step})
    ck.wait()
    victim = _largest_array_file(ck.step_dir(2))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: orbax alone would not notice
    victim.write_bytes(bytes(data))
    with pytest.warns(CheckpointWarning, match=r"checkpoints/2 is unreadable.*does not match its sha256"):
        got = Checkpoints(tmp_path, _plan(keep=3)).restore_latest(_abstract(_state(mesh, 0)))
    assert got.step == 1
    assert (tmp_path / UNREADABLE / "2").is_dir()  # moved, not deleted
    assert not ck.step_dir(2).exists()


def test_truncated_checkpoint_without_manifest_is_caught_by_orbax(tmp_path):
    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan(keep=3))
    for step in (1, 2):
        ck.save(step, _state(mesh, step), {"step": step})
    ck.wait()
    (ck.step_dir(2) / MANIFEST).unlink()  # as if killed between orbax's commit and our manifest
    for victim in (ck.step_dir(2) / "state").rglob("*"):
        if victim.is_file():
            victim.write_bytes(victim.read_bytes()[:5])
    with pytest.warns(CheckpointWarning, match="checkpoints/2 is unreadable"):
        got = Checkpoints(tmp_path, _plan(keep=3)).restore_latest(_abstract(_state(mesh, 0)))
    assert got.step == 1


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan(keep=3))
    ck.save(1, _state(mesh, 1), {"step": 1})
    ck.wait()
    (ck.step_dir(1) / "meta" / "metadata").write_text("{trunc")
    with pytest.warns(CheckpointWarning), pytest.raises(RunError, match="no readable checkpoint"):
        Checkpoints(tmp_path, _plan(keep=3)).restore_latest(_abstract(_state(mesh, 0)))
    assert (tmp_path / UNREADABLE / "1").is_dir()


def test_check_meta_refusal_propagates_without_setting_aside(tmp_path):
    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan())
    ck.save(1, _state(mesh, 1), {"step": 1, "fingerprint": "aaa"})
    ck.wait()

    def refuse(meta):
        raise RunError("plan changed")

    with pytest.raises(RunError, match="plan changed"):
        ck.restore_latest(_abstract(_state(mesh, 0)), check_meta=refuse)
    assert ck.steps() == [1]


def test_failed_async_save_is_reported_and_earlier_checkpoints_stay(tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    mesh = _mesh()
    ck = Checkpoints(tmp_path, _plan(keep=3, async_save=True))
    ck.save(1, _state(mesh, 1), {"step": 1})
    ck.wait()

    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", disk_full)
    ck.save(2, _state(mesh, 2), {"step": 2})  # returns at once: the failure happens in the background
    with pytest.raises(RunError, match=r"step 2 failed.*No space left") as info:
        for _ in range(200):
            ck.poll()
            time.sleep(0.01)
    assert "steps 1" in info.value.render()
    monkeypatch.undo()
    assert Checkpoints(tmp_path, _plan(keep=3)).steps() == [1]


def test_loader_state_json_and_bytes():
    assert decode_loader_state(encode_loader_state({"next_index": 3})) == {"next_index": 3}
    assert decode_loader_state(encode_loader_state(b"\xff")) == b"\xff"
    with pytest.raises(TypeError):
        encode_loader_state(object())
