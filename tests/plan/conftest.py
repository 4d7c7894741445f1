import pytest

from capidsl.recipe import Recipe

TINY = """
name: tiny
model: {family: gpt, vocab_size: 256, seq_len: 16, d_model: 32, n_layers: 2, n_heads: 4, d_ff: 64}
data: {source: synthetic, synthetic_examples: 512, validation_fraction: 0.25}
training: {batch_size: 16, duration: "40 steps", seed: 1}
eval: {every: "every 10 steps", batches: 2}
checkpoint: {every: "every 20 steps", keep: 2}
logging: {every: "every 5 steps"}
"""


@pytest.fixture
def tiny():
    def make(*overrides: str) -> Recipe:
        return Recipe.from_text(TINY, name="tiny.yaml", overrides=overrides)
    return make
