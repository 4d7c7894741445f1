"""How many examples each split holds, computed the way the loader will cut them — without jax or grain.

The plan compiler calls `describe` to turn epochs and tokens into exact steps. A document source's
counts come from its token store's manifest (the store is prepared first if the cache lacks it), so
planning never reads the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from capidsl.data.sources import classification_arrays, lm_streams, source_key, store_key, store_of


@dataclass(frozen=True)
class DatasetInfo:
    train_examples: int  # packed windows of seq_len + 1 tokens (lm; streams × segments per stream) or rows
    val_examples: int
    train_tokens: int
    val_tokens: int
    vocab_size: int
    train_loss_tokens: int = 0  # targets that count in the loss (the store's; supervised: completions)
    skipped_documents: int = 0


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
    if getattr(data, "mixture", ()):  # the sum of its sources (mixture.py)
        from capidsl.data.mixture import describe_mixture

        return describe_mixture(data)
    key = store_key(data)
    if key:
        store = store_of(key)
        train, val = store.counts("train"), store.counts("val")
        return DatasetInfo(_examples(data, train["tokens"]), _examples(data, val["tokens"]), train["tokens"],
                           val["tokens"], store.vocab_size, train["loss_tokens"],
                           store.manifest["skipped"]["documents"])
    train, val = lm_streams(source_key(data))
    vocab = 256 if data.tokenizer == "byte" else int(max(train.max(initial=0), val.max(initial=0))) + 1
    return DatasetInfo(_examples(data, len(train)), _examples(data, len(val)), len(train), len(val), vocab)
