"""A preemptible cluster comes back with another number of devices: `capidsl run` on 2 devices (data=2) is
stopped at step 6, then the same command on 4 devices (data=2 × fsdp=2, micro-batch halved, accumulation
doubled: the same global batch) resumes it to step 8, and one device (micro 4 × accumulation 2, the layer
scan looping where the first two legs ran it unrolled) ends it. It says what moved, orbax restores the state into the new
shardings, the real data pipeline carries its position over (it counts global batches), and the loss
curve continues within float tolerance of a run that never moved."""

from __future__ import annotations


import numpy as np
import pytest

import runs
from capidsl.rundir import read_metrics

RECIPE = """
name: moved
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, n_heads: 4}
data: {source: synthetic, synthetic_examples: 512}
training: {batch_size: 8, duration: "12 steps", seed: 3}
schedule: "constant(3e-3, rest)"
eval: {every: null}
checkpoint: {every: "every 4 steps", keep: 2}
logging: {every: "every 2 steps", progress: plain, tensorboard: false}
"""
HOME = ["--set", "mesh.data=2", "--set", "training.micro_batch=4"]
AWAY = ["--set", "mesh.data=2", "--set", "mesh.fsdp=2", "--set", "training.micro_batch=1",
        "--set", "training.gradient_accumulation_steps=2"]
ALONE = ["--set", "mesh.data=1", "--set", "training.micro_batch=4", "--set", "training.gradient_accumulation_steps=2",
         "--set", "training.layer_loop=scanned"]  # and the other layer loop: the same numbers


def capidsl_run(recipe, run_dir, devices: int, *args: str):
    return runs.capidsl("run", recipe, "--run-dir", run_dir, *args, devices=devices)


@pytest.mark.slow
def test_a_run_moved_from_two_devices_to_four_to_one_continues_its_loss_curve(tmp_path):
    recipe = tmp_path / "moved.yaml"
    recipe.write_text(RECIPE)
    capidsl_run(recipe, tmp_path / "straight", 2, *HOME)
    capidsl_run(recipe, tmp_path / "moved", 2, *HOME, "--steps", "6")
    done = capidsl_run(recipe, tmp_path / "moved", 4, *AWAY, "--steps", "8")
    said = done.stdout + done.stderr
    assert "resuming" in said and "from step 6" in said
    assert "layout: 2 → 4 devices, mesh data=2 × fsdp=1 × tensor=1 → data=2 × fsdp=2 × tensor=1" in said, said[-2000:]
    assert "batch 8 as micro 4 × accumulation 1 → micro 1 × accumulation 2" in said
    # then a smaller cluster: all on one device, the global batch as micro 4 × accumulation 2
    done = capidsl_run(recipe, tmp_path / "moved", 1, *ALONE)
    said = done.stdout + done.stderr
    assert "from step 8" in said and "layout: 4 → 1 devices, mesh data=2 × fsdp=2 × tensor=1 → data=1 × fsdp=1" in said, \
        said[-2000:]
    assert "layers unrolled → scanned" in said
    want = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r}
    got = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "moved") if "loss" in r}
    assert sorted(got) == sorted(want) == list(range(2, 13, 2))
    for step in want:  # before the move bitwise; after it, float32 sums in another order
        if step <= 6:
            assert got[step] == want[step], step
        else:
            assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got[step], want[step])
    assert np.isfinite(list(got.values())).all()
