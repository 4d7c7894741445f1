"""Data sources: each split as one token stream (lm) or arrays (classification).

Document sources (files, records, Hugging Face datasets) are tokenised once into a token store
(capidsl/data/store/) and memory-mapped; `npy` is memory-mapped as it is; synthetic data is made
from the seed. A split is chosen per document (file, line or row) by a stable hash, so adding data
elsewhere does not move documents between train and validation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from capidsl.data.errors import DataError
from capidsl.data.store import DOCUMENT_SOURCES, Store, ensure_store, spec_of

LM_SOURCES = ("stdlib", "text", "jsonl", "csv", "parquet", "hf", "npy", "synthetic")


def source_key(data) -> tuple:
    """The fields of a DataPlan (or a recipe's data section) that decide the examples, and where its store is."""
    return (data.source, data.path, data.field, data.tokenizer, data.kind, data.seq_len,
            float(data.validation_fraction), data.seed, data.synthetic_examples,
            getattr(data, "input_dim", 0), getattr(data, "num_classes", 0), store_key(data))


def store_key(data) -> tuple:
    """(spec, cache, expected id) of a document source's token store; () for other sources."""
    if data.source not in DOCUMENT_SOURCES or getattr(data, "kind", "lm") != "lm":
        return ()
    return (spec_of(data), getattr(data, "cache", "") or None, getattr(data, "store", "") or None)


@lru_cache(maxsize=8)
def store_of(key: tuple) -> Store:
    """The token store a `store_key` names (prepared first, silently, when the cache lacks it)."""
    spec, cache, expect = key
    return ensure_store(spec, cache, expect=expect)


def _synthetic_lm(seed: int, n_tokens: int, vocab: int) -> np.ndarray:
    """A learnable stream: 64 random 'words' of 3–8 tokens drawn by a Zipf-like law, separated by token 1."""
    rng = np.random.default_rng([seed, 7])
    words = [rng.integers(2, vocab, size=int(rng.integers(3, 9))) for _ in range(64)]
    p = 1.0 / np.arange(1, 65)
    picks = rng.choice(64, size=n_tokens // 3 + 8, p=p / p.sum())
    out = np.concatenate([np.append(words[i], 1) for i in picks])
    return out[:n_tokens].astype(np.int32)


@lru_cache(maxsize=4)
def lm_streams(key: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) token streams for an lm source; documents end with the separator token."""
    source, path, field, tokenizer, _kind, seq_len, fraction, seed, synthetic_examples, _d, _c, _store = key
    if source == "synthetic":
        stream = _synthetic_lm(seed, synthetic_examples * (seq_len + 1), 256)
        cut = len(stream) - int(round(len(stream) * fraction))
        return stream[:cut], stream[cut:]
    if source == "npy":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{path}: expected a 1-D integer token array, got {arr.dtype} {arr.shape}", subject="data.path")
        cut = len(arr) - int(round(len(arr) * fraction))
        return arr[:cut], arr[cut:]
    store = store_of(key[-1])
    return store.split("train"), store.split("val")


@lru_cache(maxsize=4)
def lm_masks(key: tuple):
    """(train, validation) loss masks aligned token for token with `lm_streams` (uint8, 1 where a token
    counts as a target: a supervised store's completions and separators), or None when every token counts."""
    if not key[-1] or not store_of(key[-1]).supervised:
        return None
    store = store_of(key[-1])
    return store.split("train", "mask"), store.split("val", "mask")


@lru_cache(maxsize=4)
def lm_documents(key: tuple) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(train, validation) documents of a file-based lm source, each its tokens and the separator,
    split as `lm_streams` splits them (the same documents, kept apart instead of concatenated)."""
    source = key[0]
    if source in ("synthetic", "npy"):
        raise DataError(f"source {source!r} is one token stream without documents", subject="data.source",
                        hint="variable-length rows need documents: jsonl (one per line), csv, parquet, text or stdlib")
    store = store_of(key[-1])
    out = []
    for split in ("train", "val"):
        tokens = np.asarray(store.split(split)[:], np.int32)  # bucketed rows hold documents in memory, as before
        out.append(tuple(tokens[a:b] for a, b in store.document_spans(split)))
    return out[0], out[1]


@lru_cache(maxsize=4)
def lm_document_masks(key: tuple):
    """The loss masks of `lm_documents`' documents, one uint8 array each (supervised stores), or None."""
    masks = lm_masks(key)
    if masks is None:
        return None
    store = store_of(key[-1])
    out = []
    for split, mask in zip(("train", "val"), masks):
        whole = np.asarray(mask[:], np.uint8)
        out.append(tuple(whole[a:b] for a, b in store.document_spans(split)))
    return out[0], out[1]


@lru_cache(maxsize=4)
def classification_arrays(key: tuple) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Synthetic Gaussian blobs: ((x_train, y_train), (x_val, y_val)), deterministic from the seed."""
    source, _path, _field, _tok, _kind, _seq, fraction, seed, n, input_dim, num_classes, _store = key
    if source != "synthetic":
        raise DataError(f"classification data supports the synthetic source, not {source!r}", subject="data.source")
    rng = np.random.default_rng([seed, 11])
    centers = rng.normal(0.0, 2.0, size=(num_classes, input_dim))
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, input_dim))).astype(np.float32)
    cut = n - int(round(n * fraction))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])
