"""XLA flags chosen by the plan per device kind, listed by it, and put in effect by `capidsl run`: in the
environment before JAX starts for a plan.json, by starting again for a recipe run on its own, by a
warning naming the line to set for a run of several processes, and in the scripts `capidsl launch` writes."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from capidsl.cli import run as run_cli
from capidsl.exec import distributed, xla_flags
from capidsl.plan import kernels
from capidsl.plan.compile import compile_plan
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

LHS = "--xla_gpu_enable_latency_hiding_scheduler=true"
RECIPE = """
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 1, n_heads: 4}
data: {source: synthetic, synthetic_examples: 64}
training: {batch_size: 16, duration: "2 steps"}
"""


def _plan(kind: str):
    return compile_plan(Recipe.from_text(RECIPE), simulated(kind, 8))


def test_the_plan_lists_the_flags_of_its_device_kind_and_a_cpu_plan_has_none():
    gpu, cpu = _plan("h100"), _plan("cpu")
    assert kernels.xla_flags("a100-80g") == kernels.xla_flags("l4") == (LHS,) and kernels.xla_flags("tpu-v5e") == ()
    assert gpu.xla_flags == (LHS,) and cpu.xla_flags == ()
    assert json.loads(gpu.dumps())["xla_flags"] == [LHS] and "xla_flags" not in json.loads(cpu.dumps())
    assert type(gpu).loads(gpu.dumps()) == gpu


def test_a_flag_the_environment_sets_is_left_as_the_user_set_it():
    mine = "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/tmp/x"
    assert xla_flags.missing(mine, (LHS,)) == [] and xla_flags.merged(mine, (LHS,)) == mine
    assert xla_flags.missing("--xla_dump_to=/tmp/x", (LHS,)) == [LHS]
    assert xla_flags.merged("", (LHS,)) == LHS


def test_a_plan_json_s_flags_are_read_without_jax(tmp_path):
    (tmp_path / "plan.json").write_text(_plan("h100").dumps())
    assert xla_flags.plan_flags_of(str(tmp_path / "plan.json")) == (LHS,)
    (tmp_path / "broken.json").write_text("{")
    assert xla_flags.plan_flags_of(str(tmp_path / "broken.json")) == ()


class _Stop(Exception):
    pass


def _args(**kw):
    return argparse.Namespace(**({"target": "recipe.yaml", "overrides": [], "run_dir": None, "steps": None,
                                  "coordinator": None, "num_processes": None, "process_id": None} | kw))


@pytest.fixture
def gpu_plan(monkeypatch):
    """`capidsl run` on a recipe whose plan has flags, with the training itself replaced by a stop."""
    import capidsl.runner

    plan = dataclasses.replace(_plan("cpu"), xla_flags=(LHS,))
    monkeypatch.setattr(capidsl.runner, "load_plan", lambda *a, **k: plan)
    def trained(*a, **k):
        raise _Stop("trained")

    monkeypatch.setattr(capidsl.runner, "run", trained)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv(xla_flags.RESTARTED, raising=False)
    return plan


def test_a_run_on_its_own_starts_again_with_the_flags(gpu_plan, monkeypatch):
    calls = []

    def restart_with(flags, argv):
        calls.append((flags, argv))
        raise _Stop("restart")

    monkeypatch.setattr(xla_flags, "restart_with", restart_with)
    monkeypatch.setattr("sys.argv", ["capidsl", "run", "recipe.yaml"])
    with pytest.raises(_Stop, match="restart"):
        run_cli.run(_args())
    assert calls == [((LHS,), ["run", "recipe.yaml"])]
    monkeypatch.setenv(xla_flags.RESTARTED, "1")  # started again, and the flags still missing: a warning, no loop
    with pytest.warns(RuntimeWarning, match="are not in effect"), pytest.raises(_Stop, match="trained"):
        run_cli.run(_args())


def test_a_process_of_several_warns_with_the_line_to_set(gpu_plan, monkeypatch):
    monkeypatch.setattr(distributed, "initialize", lambda config: None)
    monkeypatch.setattr(xla_flags, "restart_with", lambda *a: pytest.fail("a process of several must not restart"))
    with pytest.warns(RuntimeWarning, match=f'set XLA_FLAGS="{LHS}" for every process'), pytest.raises(_Stop):
        run_cli.run(_args(coordinator="10.0.0.1:1234", num_processes=2, process_id=0))


def test_with_the_flags_set_nothing_is_restarted_nor_said(gpu_plan, monkeypatch, recwarn):
    monkeypatch.setenv("XLA_FLAGS", LHS)
    monkeypatch.setattr(xla_flags, "restart_with", lambda *a: pytest.fail("restarted"))
    with pytest.raises(_Stop, match="trained"):
        run_cli.run(_args())
    assert not [w for w in recwarn if "XLA flags" in str(w.message)]


def test_launch_scripts_set_the_flags(tmp_path, capsys):
    from capidsl.cli.main import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    assert main(["launch", str(recipe), "--cluster", "slurm", "--devices", "16", "--device-kind", "h100"]) == 0
    assert f'export XLA_FLAGS="${{XLA_FLAGS:-}} {LHS}"' in capsys.readouterr().out
    assert main(["launch", str(recipe), "--cluster", "slurm", "--devices", "2", "--device-kind", "cpu"]) == 0
    assert "XLA_FLAGS" not in capsys.readouterr().out
