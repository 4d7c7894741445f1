"""MFU in every log line: the device-kind table, the peak's choice, and a short run's lines and summary.

Nothing here asserts a speed: each figure is checked against the record's own fields (flops per
step, step time, devices, the peak the summary names).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types

import fake_data
import jax
import pytest
from plan_factory import make_plan

from capidsl.exec import peak as peak_mod
from capidsl.exec.loop import run
from capidsl.exec.metrics import MEASURED_KEYS, TRAIN_KEYS
from capidsl.exec.peak import Peak, Throughput, measured_peak, run_peak, table_peak
from capidsl.plan.topology import DEVICE_KINDS, match_device_kind


@pytest.mark.parametrize("device_kind, row", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-40GB", "a100-80g"),
    ("NVIDIA L4", "l4"), ("NVIDIA L40S", None), ("NVIDIA L40", None), ("TPU v4", "tpu-v4"),
    ("TPU v5 lite", "tpu-v5e"), ("TPU v5e", "tpu-v5e"), ("TPU v5", "tpu-v5p"), ("TPU v5p", "tpu-v5p"),
    ("TPU v6 lite", "tpu-v6e"), ("TPU v6e", "tpu-v6e"), ("cpu", None), ("Mystery Accelerator 9", None),
])
def test_device_kind_strings_map_to_their_table_row(device_kind, row):
    assert match_device_kind(device_kind) == row


def test_table_peaks_follow_the_compute_dtype():
    assert DEVICE_KINDS["l4"].memory == 24 * 10**9 and DEVICE_KINDS["tpu-v6e"].memory == 32 * 2**30
    assert table_peak("NVIDIA L4", "bfloat16") == Peak(121e12, "data sheet: l4")
    assert table_peak("NVIDIA L4", "float16").flops_per_s == 121e12
    assert table_peak("NVIDIA L4", "float32").flops_per_s == 30.3e12
    assert table_peak("TPU v6 lite", "bfloat16") == Peak(918e12, "data sheet: tpu-v6e")
    assert table_peak("NVIDIA H100 80GB HBM3", "float32") == Peak(67e12, "data sheet: h100")
    assert table_peak("Mystery Accelerator 9", "bfloat16") is None and table_peak("cpu", "float32") is None


def _fake_devices(monkeypatch, platform, kind, n=4):
    fake = [types.SimpleNamespace(platform=platform, device_kind=kind)] * n
    monkeypatch.setattr(peak_mod.jax, "local_devices", lambda: fake)


def test_the_peak_is_the_data_sheet_where_known_else_a_measured_roofline(monkeypatch):
    cpu = run_peak("float32")  # the real devices: 8 fake CPU devices
    assert cpu.source == f"measured: 1024² float32 matmul, shared by {len(jax.local_devices())} CPU devices"
    assert cpu.flops_per_s > 0 and run_peak("float32") is cpu  # measured once per process

    asked = []
    monkeypatch.setattr(peak_mod, "measured_peak",
                        lambda dtype, size, **kw: asked.append((dtype, size, kw)) or Peak(1.0, "m"))
    _fake_devices(monkeypatch, "gpu", "NVIDIA H100 80GB HBM3")
    assert run_peak("bfloat16") == Peak(989e12, "data sheet: h100") and asked == []
    _fake_devices(monkeypatch, "gpu", "Mystery Accelerator 9")
    assert run_peak("bfloat16") == Peak(1.0, "m")
    assert asked == [("bfloat16", peak_mod.ACCELERATOR_MATMUL, {})]


def test_the_measured_roofline_runs_in_the_compute_dtype():
    p = measured_peak("bfloat16", 128, share=2, reps=2)
    assert p.source == "measured: 128² bfloat16 matmul, shared by 2 CPU devices" and p.flops_per_s > 0


def test_fields_and_summary_are_arithmetic_on_the_rows():
    t = Throughput(flops_per_token=6e6, flops_per_step=6e6 * 1000, devices=4, device_kind="cpu",
                   peak=Peak(2e12, "data sheet: x"))
    f = t.fields({"tokens_per_s": 1000 / 0.5, "step_time_s": 0.5})  # 1000 tokens per step, 0.5 s per step
    assert f["tflops_per_device"] == pytest.approx(6e9 / 0.5 / 4 / 1e12)
    assert f["mfu"] == pytest.approx(6e9 / 0.5 / 4 / 2e12)
    rows = [{"step": s, "step_time_s": dt, **t.fields({"tokens_per_s": 1000 / dt})}
            for s, dt in ((10, 9.0), (20, 0.5), (30, 0.4), (40, 0.6))]
    s = t.summary(rows)
    assert s["step"] == 20 and s["step_time_s"] == 0.5 and s["mfu"] == rows[1]["mfu"]  # median of 20-40; 10 compiles
    assert s["peak_tflops_per_device"] == 2.0 and s["peak_source"] == "data sheet: x" and s["devices"] == 4
    assert t.summary(rows[:1])["step"] == 10 and t.summary([])["mfu"] is None


def test_every_line_the_progress_and_the_summary_carry_mfu(tmp_path, monkeypatch, capsys):
    plan = make_plan("mlp", mesh={"data": 8}, total_steps=6, lr=3e-3)
    plan = dataclasses.replace(plan, cadence=dataclasses.replace(plan.cadence, log_every=2, eval_every=None),
                               logging=dataclasses.replace(plan.logging, progress="plain"))
    fake_data.install(monkeypatch, plan)
    s = run(plan, tmp_path, stdout_is_tty=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    perf = json.loads((tmp_path / "summary.json").read_text())["performance"]
    assert perf == s.performance and perf["devices"] == 8 and perf["device_kind"] == "cpu"
    assert perf["peak_source"] == "measured: 1024² float32 matmul, shared by 8 CPU devices"
    assert perf["flops_per_step"] == plan.flops.flops_per_step
    peak = perf["peak_tflops_per_device"] * 1e12
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert {"mfu", "tflops_per_device"} <= set(TRAIN_KEYS) & set(MEASURED_KEYS)
    for r in rows:
        achieved = plan.flops.flops_per_step / r["step_time_s"] / 8
        assert math.isclose(r["tflops_per_device"] * 1e12, achieved, rel_tol=1e-9)
        assert math.isclose(r["mfu"], achieved / peak, rel_tol=1e-9)
    median = next(r for r in rows if r["step"] == perf["step"])
    assert perf["step"] in (4, 6) and {k: median[k] for k in ("step_time_s", "tflops_per_device", "mfu")} == \
        {k: perf[k] for k in ("step_time_s", "tflops_per_device", "mfu")}
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(out) == 3
    for line, r in zip(out, rows):
        assert f"mfu {r['mfu'] * 100:.3g}%  {r['tflops_per_device']:.3g} TFLOP/s/dev" in line
