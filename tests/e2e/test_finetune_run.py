"""recipes/finetune.yaml: the three doors together. A pretrained Hugging Face GPT-2 (the transformers-made
fixture) is fine-tuned on instructions with its embeddings frozen and the loss on completions, then
exported back as a Hugging Face directory: the frozen tensors come out bitwise as they went in, the
trained ones changed, and the export's own check (logits read back against JAX's) passed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import runs
from capidsl.models.hf.safetensors import Checkpoint

RECIPE = runs.ROOT / "recipes" / "finetune.yaml"
FIXTURE = runs.ROOT / "tests" / "fixtures" / "hf" / "gpt2-tiny"


@pytest.mark.slow
def test_finetune_a_pretrained_gpt2_then_export_it_as_hugging_face(tmp_path):
    run_dir = tmp_path / "run"
    runs.capidsl("run", RECIPE, "--run-dir", run_dir, sets=runs.SHORT_FINETUNE)
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["model"]["init"]["architecture"] == "GPT2LMHeadModel"
    assert plan["data"]["tokenizer"].endswith("gpt2-tiny/tokenizer.json")  # the model's own tokenizer
    assert sorted(plan["optimizer"]["frozen"]) == ["wpe.embedding", "wte.embedding"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses

    out = tmp_path / "hf"
    runs.capidsl("export", run_dir, "--format", "hf", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    before, after = Checkpoint(FIXTURE), Checkpoint(out)
    assert set(before.tensors) == set(after.tensors)
    for name in before.tensors:
        same = np.array_equal(before.array(name), after.array(name))
        assert same == name.endswith(("wte.weight", "wpe.weight")), name  # frozen bitwise, every other one trained
