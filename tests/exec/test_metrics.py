"""metrics.jsonl, TensorBoard, the progress display, and the parameter hash."""

from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from capidsl.exec.metrics import MetricsWriter, device_peak_bytes, host_peak_rss_bytes
from capidsl.exec.progress import Progress, format_duration
from capidsl.exec.summary import params_sha256


def test_jsonl_lines_nan_as_string_and_truncation_on_resume(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=True)
    w.write_plan('{"plan": 1}')
    for step in (1, 2, 3):
        w.log({"step": step, "loss": float("nan") if step == 3 else 1.0 / step})
    w.log({"step": 2, "val_loss": 0.5}, kind="eval")
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by SIGKILL
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[2]) == {"step": 3, "loss": "nan"}
    MetricsWriter(tmp_path, tensorboard=False).truncate_after(2)
    kept = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in kept] == [1, 2, 2]
    assert json.loads((tmp_path / "plan.json").read_text()) == {"plan": 1}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(tmp_path / "run", tensorboard=True, enabled=False)
    w.write_plan("{}")
    w.log({"step": 1, "loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_memory_figures():
    assert host_peak_rss_bytes() > 10 * 2**20
    peak = device_peak_bytes()
    assert peak is None or peak > 0  # CPU reports nothing


def test_plain_progress_lines_and_rich_bar():
    out = io.StringIO()
    p = Progress("auto", total_steps=100, stdout_is_tty=False, stream=out)
    assert p.mode == "plain"
    p.start(0)
    p.update({"step": 10, "loss": 2.5, "lr": 3e-4, "tokens_per_s": 12345.6})
    p.update({"step": 20, "loss": 2.0, "lr": 3e-4, "tokens_per_s": 1e6, "mfu": 0.41234, "tflops_per_device": 407.8})
    p.note("stopped at step 10: done")
    p.close()
    text = out.getvalue()
    assert "step 10/100  loss 2.5000  lr 3.00e-04  tok/s 12,346  eta " in text
    assert "step 20/100  loss 2.0000  lr 3.00e-04  tok/s 1,000,000  mfu 41.2%  408 TFLOP/s/dev  eta " in text
    assert text.endswith("stopped at step 10: done\n")

    tty = io.StringIO()
    bar = Progress("auto", total_steps=100, stdout_is_tty=True, stream=tty)
    assert bar.mode == "rich"
    bar.start(0)
    bar.update({"step": 50, "loss": 1.25, "lr": 1e-3, "tokens_per_s": 1000.0})
    bar.close()
    assert "50/100" in tty.getvalue() and "loss 1.2500" in tty.getvalue()

    silent = io.StringIO()
    none = Progress("none", total_steps=10, stream=silent)
    none.start(0)
    none.update({"step": 1, "loss": 1.0})
    none.note("x")
    assert silent.getvalue() == ""


def test_format_duration():
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m05s"]


def test_params_hash_ignores_sharding_and_sees_one_bit():
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    a = {"b": jnp.ones(3), "a": {"kernel": jax.device_put(w, NamedSharding(mesh, PartitionSpec("data")))}}
    b = {"a": {"kernel": jnp.asarray(w)}, "b": jnp.ones(3)}
    assert params_sha256(a) == params_sha256(b)
    flipped = w.copy()
    flipped.view(np.uint32)[3, 3] ^= 1
    assert params_sha256({"a": {"kernel": jnp.asarray(flipped)}, "b": jnp.ones(3)}) != params_sha256(b)
