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
    train_examples: int  # packed windows of seq_len + 1 tokens (lm; streams × segments per stream) or rows
    val_examples: int
    train_tokens: int
    val_tokens: int
    vocab_size: int


def stream_windows(tokens: int, streams: int, seq_len: int) -> int:
    """Segments of seq_len (+1 target) tokens in each of `streams` equal contiguous streams of `tokens`."""
    return max(0, (tokens // streams - 1) // seq_len) if streams else 0


def _examples(data, tokens: int) -> int:
    """Packed windows of seq_len + 1 tokens, or (streams) one segment per stream and step, times the streams."""
    streams = getattr(data, "streams", 0)
    if streams:
        return streams * stream_windows(tokens, streams, data.seq_len)
    return tokens // (data.seq_len + 1)


def describe(data) -> DatasetInfo:
    """Count the examples of `data` (a DataPlan, or any object with the same fields)."""
    if data.kind == "classification":
        (xt, _), (xv, _) = classification_arrays(source_key(data))
        return DatasetInfo(len(xt), len(xv), len(xt), len(xv), 0)
    if data.source == "stdlib" and data.tokenizer == "byte":
        tokens = [0, 0]
        for rel, path in stdlib_files():
            tokens[in_validation(rel, float(data.validation_fraction))] += path.stat().st_size + 1  # + separator
        return DatasetInfo(_examples(data, tokens[0]), _examples(data, tokens[1]), tokens[0], tokens[1], 256)
    train, val = lm_streams(source_key(data))
    vocab = 256 if data.tokenizer == "byte" else int(max(train.max(initial=0), val.max(initial=0))) + 1
    return DatasetInfo(_examples(data, len(train)), _examples(data, len(val)), len(train), len(val), vocab)
