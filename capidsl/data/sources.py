"""Data sources: each yields the documents of one split, turned into one token stream (lm) or arrays (classification).

A split is chosen per document (file, line or row) by a stable hash, so adding data elsewhere does
not move documents between train and validation. Streams are cached per process: they are read once.
"""

from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from capidsl.data.corpus import in_validation, stdlib_files
from capidsl.data.errors import DataError
from capidsl.data.tokenize import SEPARATOR, get_tokenizer

LM_SOURCES = ("stdlib", "text", "jsonl", "csv", "parquet", "npy", "synthetic")


def source_key(data) -> tuple:
    """The fields of a DataPlan (or a recipe's data section) that decide the examples."""
    return (data.source, data.path, data.field, data.tokenizer, data.kind, data.seq_len,
            float(data.validation_fraction), data.seed, data.synthetic_examples,
            getattr(data, "input_dim", 0), getattr(data, "num_classes", 0))


def _documents(source: str, path: str | None, field: str):
    """(stable key, text bytes) of every document of a file-based source, in a fixed order."""
    if source == "stdlib":
        for rel, p in stdlib_files():
            yield rel, p.read_bytes()
        return
    if not path:
        raise DataError(f"source {source!r} needs data.path", subject="data.path", hint="point it at a local file or folder")
    root = Path(path)
    if not root.exists():
        raise DataError(f"{path} does not exist", subject="data.path")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        if source == "text":
            yield rel, f.read_bytes()
        elif source == "jsonl":
            with f.open("rb") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        value = json.loads(line)[field]
                    except (ValueError, KeyError, TypeError) as err:
                        raise DataError(f"{f}:{n}: no text field {field!r} ({type(err).__name__})", subject="data.field") from None
                    yield f"{rel}:{n}", str(value).encode()
        elif source == "csv":
            with f.open(newline="", encoding="utf-8") as fh:
                for n, row in enumerate(csv.DictReader(fh), 2):
                    if field not in row:
                        raise DataError(f"{f}: no column {field!r}; columns are {sorted(row)}", subject="data.field")
                    yield f"{rel}:{n}", row[field].encode()
        elif source == "parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError("reading Parquet needs pyarrow, which is not installed", subject="data.source",
                                hint="pip install pyarrow, or convert to JSONL") from None
            for n, value in enumerate(pq.read_table(f, columns=[field]).column(field).to_pylist()):
                yield f"{rel}:{n}", str(value).encode()
        else:
            raise DataError(f"unknown source {source!r}", subject="data.source", hint=f"one of {LM_SOURCES}")


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
    source, path, field, tokenizer, _kind, seq_len, fraction, seed, synthetic_examples, _d, _c = key
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
    tok = get_tokenizer(tokenizer)
    parts: tuple[list, list] = ([], [])
    for doc_key, text in _documents(source, path, field):
        tokens = np.frombuffer(text, dtype=np.uint8) if tokenizer == "byte" else tok.encode(text)
        split = parts[1] if in_validation(doc_key, fraction) else parts[0]
        split.append(tokens)
        split.append(np.array([SEPARATOR], dtype=tokens.dtype))
    dtype = np.uint8 if tokenizer == "byte" else np.int32
    return tuple(np.concatenate(p).astype(dtype, copy=False) if p else np.zeros(0, dtype) for p in parts)


@lru_cache(maxsize=4)
def lm_documents(key: tuple) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(train, validation) documents of a file-based lm source, each its tokens and the separator,
    split as `lm_streams` splits them (the same documents, kept apart instead of concatenated)."""
    source, path, field, tokenizer, *_ = key
    fraction = key[6]
    if source in ("synthetic", "npy"):
        raise DataError(f"source {source!r} is one token stream without documents", subject="data.source",
                        hint="variable-length rows need documents: jsonl (one per line), csv, parquet, text or stdlib")
    tok = get_tokenizer(tokenizer)
    parts: tuple[list, list] = ([], [])
    for doc_key, text in _documents(source, path, field):
        tokens = np.frombuffer(text, dtype=np.uint8) if tokenizer == "byte" else np.asarray(tok.encode(text))
        parts[in_validation(doc_key, fraction)].append(np.append(tokens.astype(np.int32), SEPARATOR))
    return tuple(parts[0]), tuple(parts[1])


@lru_cache(maxsize=4)
def classification_arrays(key: tuple) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Synthetic Gaussian blobs: ((x_train, y_train), (x_val, y_val)), deterministic from the seed."""
    source, _path, _field, _tok, _kind, _seq, fraction, seed, n, input_dim, num_classes = key
    if source != "synthetic":
        raise DataError(f"classification data supports the synthetic source, not {source!r}", subject="data.source")
    rng = np.random.default_rng([seed, 11])
    centers = rng.normal(0.0, 2.0, size=(num_classes, input_dim))
    y = rng.integers(0, num_classes, size=n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, input_dim))).astype(np.float32)
    cut = n - int(round(n * fraction))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])
