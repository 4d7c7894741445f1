"""How many examples each split holds, computed the way the loader will cut them — without jax or grain.

The plan compiler calls `describe` to turn epochs and tokens into exact steps. For the stdlib corpus
with the byte tokenizer the counts come from file sizes alone (a byte is a token), so planning never
reads the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

from capidsl.data.corpus import in_validation, stdlib_files
from capidsl.data.sources import classification_arrays, lm_streams, source_key


@dataclass(frozen=True)
class DatasetInfo:
    train_examples: int  # packed windows of seq_len + 1 tokens (lm) or rows (classification)
    val_examples: int
    train_tokens: int
    val_tokens: int
    vocab_size: int


def describe(data) -> DatasetInfo:
    """Count the examples of `data` (a DataPlan, or any object with the same fields)."""
    window = data.seq_len + 1
    if data.kind == "classification":
        (xt, _), (xv, _) = classification_arrays(source_key(data))
        return DatasetInfo(len(xt), len(xv), len(xt), len(xv), 0)
    if data.source == "stdlib" and data.tokenizer == "byte":
        tokens = [0, 0]
        for rel, path in stdlib_files():
            tokens[in_validation(rel, float(data.validation_fraction))] += path.stat().st_size + 1  # + separator
        return DatasetInfo(tokens[0] // window, tokens[1] // window, tokens[0], tokens[1], 256)
    train, val = lm_streams(source_key(data))
    vocab = 256 if data.tokenizer == "byte" else int(max(train.max(initial=0), val.max(initial=0))) + 1
    return DatasetInfo(len(train) // window, len(val) // window, len(train), len(val), vocab)
