"""The bucketed part of the plan: rows per bucket from the budget, exact steps, the worst shape's memory, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import Plan
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

RECIPE = """
model: {{family: gpt, vocab_size: 256, seq_len: 64, d_model: 32, n_layers: 1, n_heads: 2}}
data: {{source: jsonl, path: "{path}", validation_fraction: 0.1, batching: bucketed, token_budget: 512}}
training: {{duration: "1 epoch", gradient_accumulation_steps: 2}}
mesh: {{data: 2}}
"""


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    rng = np.random.default_rng(1)
    with open(path, "w") as f:
        for i in range(400):
            n = int(rng.integers(2, 12)) if rng.random() < 0.8 else int(rng.integers(40, 150))
            f.write(json.dumps({"text": "x" * n}) + "\n")
    return path


def plan(docs, *overrides, devices=2):
    return compile_plan(Recipe.from_text(RECIPE.format(path=docs), name="r.yaml", overrides=list(overrides)),
                        simulated("cpu", devices))


def test_rows_steps_and_memory(docs):
    p = plan(docs)
    lengths = [b.length for b in p.data.buckets]
    assert lengths == [8, 16, 32, 64]  # seq_len and its halvings to seq_len/8
    assert [b.rows for b in p.data.buckets] == [64, 32, 16, 8]  # 512 positions, multiples of data 2 × accumulation 2
    assert p.cadence.steps_per_epoch == p.cadence.total_steps == sum(b.train_examples // b.rows for b in p.data.buckets)
    assert p.batch.global_batch == 64 and p.batch.micro_batch == 16 and p.batch.tokens_per_step == 512
    assert p.data.train_examples == sum(b.train_examples for b in p.data.buckets)
    worst = plan(docs, "data.buckets=[64]")  # one bucket: 8 rows of 64, the most demanding shape alone
    assert p.memory.total >= worst.memory.total * 0.99
    assert Plan.loads(p.dumps()) == p


@pytest.mark.parametrize("override, key, words", [
    ("data.buckets=[8, 32]", "data.buckets", "end at model.seq_len"),
    ("data.buckets=[32, 16, 64]", "data.buckets", "rise strictly"),
    ("data.token_budget=100", "data.token_budget", "fewer than the 4"),
])
def test_what_cannot_be_bucketed_is_refused_at_its_key(docs, override, key, words):
    with pytest.raises(PlanError) as err:
        plan(docs, override)
    assert err.value.subject == key and words in err.value.message and err.value.location is not None


def test_a_classifier_has_no_documents_to_bucket():
    text = ("model: {family: mlp, input_dim: 4, num_classes: 2}\n"
            "data: {source: synthetic, synthetic_examples: 256, batching: bucketed}\ntraining: {duration: '3 steps'}\n")
    with pytest.raises(PlanError, match="needs a language model") as err:
        compile_plan(Recipe.from_text(text, name="r.yaml"), simulated("cpu", 1))
    assert str(err.value.location).startswith("r.yaml:2:")


def test_carry_and_buckets_do_not_mix(docs):
    text = RECIPE.format(path=docs).replace("{family: gpt, vocab_size: 256, seq_len: 64, d_model: 32, n_layers: 1, n_heads: 2}",
                                            "{family: capibara, vocab_size: 256, seq_len: 64, d_model: 32, n_layers: 1, hidden_state: carry}")
    with pytest.raises(PlanError, match="contiguous stream"):
        compile_plan(Recipe.from_text(text, name="r.yaml"), simulated("cpu", 2))
