"""Planning a mixture: one counted store per source, stages resolved to steps, repeats linted, errors located.

The sources are the committed corpus of recipes/mixture.yaml (examples/data/mixture/).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capidsl.data import describe
from capidsl.data.mixture import allocation
from capidsl.data.store import ensure_store, spec_of
from capidsl.plan.compile import compile_plan
from capidsl.plan.errors import PlanError
from capidsl.plan.plan import Plan
from capidsl.plan.render import render
from capidsl.plan.topology import simulated
from capidsl.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "examples" / "data" / "mixture"
TEMPLATE = """name: mix
model: {{family: gpt, vocab_size: 256, seq_len: 64, d_model: 32, n_layers: 1, n_heads: 2}}
data:
  tokenizer: byte
  validation_fraction: 0.1
  mixture:
    prose: {{source: jsonl, path: {corpus}/prose.jsonl, weight: 3}}
    code: {{source: text, path: {corpus}/code, weight: 1}}
  mixture_stages:
    - at: "{at0}"
      weights: {w0}
    - at: "{at1}"
      weights: {w1}
training: {{batch_size: 16, duration: "{duration}", seed: 1}}
eval: {{every: "every 20 steps", batches: 3}}
"""
STAGES = dict(at0="50%", w0="{prose: 1, code: 1}", at1="30 steps", w1="{prose: 0, code: 2}", duration="40 steps",
              corpus=str(CORPUS))


def recipe(**stages: str) -> str:
    """The recipe with some of the stages' fields (at0, w0, at1, w1) or the duration replaced."""
    return TEMPLATE.format(**(STAGES | stages))


RECIPE = recipe()


def plan(*overrides: str, text: str = RECIPE) -> Plan:
    return compile_plan(Recipe.from_text(text, name="mix.yaml", overrides=overrides), simulated("cpu", 1))


def error(*overrides: str, text: str = RECIPE) -> PlanError:
    with pytest.raises(PlanError) as err:
        plan(*overrides, text=text)
    return err.value


@pytest.fixture(scope="module")
def mixed() -> Plan:
    return plan()


def test_each_source_has_its_store_and_counts_and_an_epoch_is_their_sum(mixed):
    d = mixed.data
    assert d.source == "mixture" and [m.name for m in d.mixture] == ["prose", "code"]
    for m, source in zip(d.mixture, ("jsonl", "text")):
        store = ensure_store(spec_of(d, source=m.source, path=m.path, field=m.field, hf_split=m.hf_split))
        assert m.source == source and m.store == store.id
        assert (m.train_tokens, m.val_tokens) == (store.counts("train")["tokens"], store.counts("val")["tokens"])
        assert (m.train_examples, m.val_examples) == (m.train_tokens // 65, m.val_tokens // 65)
    assert d.train_examples == sum(m.train_examples for m in d.mixture)
    assert mixed.cadence.steps_per_epoch == d.train_examples // 16
    assert mixed.cadence.eval_batches == 3 and describe(d).train_examples == d.train_examples
    assert Plan.loads(mixed.dumps()) == mixed


def test_stages_start_where_at_says_with_normalised_shares(mixed):
    stages = mixed.data.mixture_stages
    assert [(s.start_step, s.at) for s in stages] == [(0, "start"), (20, "50%"), (30, "30 steps")]
    assert [s.weights for s in stages] == [(0.75, 0.25), (0.5, 0.5), (0.0, 1.0)]
    assert plan(text=recipe(at0="5120 tokens")).data.mixture_stages[1].start_step == 5  # 1,024 tokens/step
    epochs = plan(text=recipe(at0="1 epoch", at1="2 epochs", duration="3 epochs"))
    assert [s.start_step for s in epochs.data.mixture_stages] == [0, mixed.cadence.steps_per_epoch,
                                                                  2 * mixed.cadence.steps_per_epoch]


def test_epochs_by_the_end_and_the_repeat_lint(mixed):
    rows = [allocation(mixed.data, 16).rows_before(k, 40) for k in (0, 1)]
    assert rows == [20 * 12 + 10 * 8, 20 * 4 + 10 * 8 + 10 * 16]
    assert not [x for x in mixed.lints if x.code == "mixture-repeats"]
    short = plan("data.max_repeats=0.05")
    found = [x for x in short.lints if x.code == "mixture-repeats"]
    code_epochs = rows[1] / mixed.data.mixture[1].train_examples
    assert [x.message.split("'")[1] for x in found] == ["prose", "code"]
    assert f"{code_epochs:.2f} epochs" in found[1].message and found[1].location.startswith("mix.yaml:8:")
    text = "".join(str(t) for t in render(mixed).renderables)
    assert "mixture of 2 sources" in text and "share 75.0% → 50.0% → 0.0%" in text
    assert f"{code_epochs:.2f} epochs by the end" in text


def test_a_stage_moves_with_a_share_of_a_longer_run_and_the_fingerprint_knows():
    longer = plan(text=recipe(duration="80 steps", at1="60 steps"))
    assert longer.data.mixture_stages[1].start_step == 40
    assert longer.fingerprint != plan().fingerprint  # the data order changed: no resume across it


@pytest.mark.parametrize("change,where,words", [
    (dict(w0="{prose: 1, poetry: 1}"), "mix.yaml:11:16: data.mixture_stages[0].weights", "unknown source 'poetry'"),
    (dict(w1="{prose: 1}"), "mix.yaml:13:16: data.mixture_stages[1].weights", "no weight for source 'code'"),
    (dict(w1="{prose: 0, code: 0}"), "data.mixture_stages[1].weights", "positive weight"),
    (dict(at1="40 steps"), "mix.yaml:12:11: data.mixture_stages[1].at", "starts at step 40, but the run is 40 steps"),
    (dict(at0="100%"), "data.mixture_stages[0].at", "starts at step 40, but the run is 40 steps"),
    (dict(at0="33%"), "data.mixture_stages[0].at", "not a whole number of steps"),
    (dict(at0="35 steps"), "data.mixture_stages[1].at", "does not come after"),
    (dict(at0="90m"), "data.mixture_stages[0].at", "wall-clock"),
    (dict(at0="half way"), "mix.yaml:10:12: data.mixture_stages[0].at", "unexpected `half`"),
    ("data.batching=bucketed", "data.batching", "mixtures are packed windows only"),
    ("data.path=somewhere.txt", "data.path", "each source names its own path"),
    ("data.mixture.code.path=/nonexistent/code", "data.mixture.code.path", "does not exist"),
    ("data.format=supervised", "data.mixture.code.source", "supervised examples"),
    ("model.seq_len=100000", "data.mixture.code", "not one window"),
])
def test_mistakes_are_located_errors(change, where, words):
    err = error(change) if isinstance(change, str) else error(text=recipe(**change))
    assert where in err.render() and words in err.message, err.render()


def test_tokens_not_a_whole_step_name_the_nearest_steps():
    err = error(text=recipe(at0="5000 tokens"))
    assert err.hint == "write 4 steps or 5 steps (no silent rounding)"
    assert str(err.location) == "mix.yaml:10:12"


def test_a_carried_hidden_state_cannot_read_a_mixture():
    text = RECIPE.replace("{family: gpt, vocab_size: 256, seq_len: 64, d_model: 32, n_layers: 1, n_heads: 2}",
                          "{family: capibara, vocab_size: 256, seq_len: 64, d_model: 32, n_layers: 1, d_state: 16, "
                          "hidden_state: carry}")
    err = error(text=text)
    assert "mixtures are packed windows only" in err.message and err.subject == "data.mixture"
