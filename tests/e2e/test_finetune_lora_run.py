"""recipes/finetune-lora.yaml end to end: a pretrained Hugging Face Llama (the transformers-made GQA fixture,
three shards) gains adapters on every projection and is tuned on instructions; only the adapters move;
`capidsl export --format hf` merges them and writes a plain Llama whose logits, read back through the
importer, match the run's own (unmerged) model — and only the adapted weights differ from the fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runs
from capidsl.models.family import is_adapter
from capidsl.models.hf.safetensors import Checkpoint

RECIPE = runs.ROOT / "recipes" / "finetune-lora.yaml"
FIXTURE = runs.ROOT / "tests" / "fixtures" / "hf" / "llama-gqa"
ADAPTED = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "gate_proj.weight", "up_proj.weight",
           "down_proj.weight")


@pytest.mark.slow
def test_lora_finetune_of_a_pretrained_llama_then_a_merged_hugging_face_export(tmp_path):
    run_dir = tmp_path / "run"
    runs.capidsl("run", RECIPE, "--run-dir", run_dir, sets=runs.SHORT_FINETUNE)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["model"]["init"]["architecture"] == "LlamaForCausalLM" and plan["model"]["init"]["tensors"] == 21
    paths = [p["path"] for p in plan["sharding"]["params"]]
    assert len([p for p in paths if is_adapter(p)]) == 14  # a and b on each of the seven projections
    assert sorted(plan["optimizer"]["frozen"]) == sorted(p for p in paths if not is_adapter(p))
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses

    out = tmp_path / "hf"
    done = runs.capidsl("export", run_dir, "--format", "hf", "--out", out)
    assert "read back, its logits match JAX" in done.stdout  # the merged export against the adapted run
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "lora" not in json.dumps(config)
    before, after = Checkpoint(FIXTURE), Checkpoint(out)
    assert set(before.tensors) == set(after.tensors)  # a plain Llama: no adapter tensors
    for name in before.tensors:
        same = np.array_equal(before.array(name), after.array(name))
        assert same != name.endswith(ADAPTED), name  # adapted weights merged; embeddings, norms, head bitwise
