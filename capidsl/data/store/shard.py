"""One work unit tokenised into its shard: per split, the tokens, where documents end, and (for
supervised rows) which tokens count in the loss. Runs in a worker process; returns plain data.

Documents keep today's rules: a document's tokens, then the separator; byte-level tokens of a text
file are its bytes as they are (any bytes are tokens), while a tokenizer file needs UTF-8. A
supervised row is its prompt's tokens then its completion's and the separator, and only the
completion and the separator are loss targets (the model learns to stop).
"""

from __future__ import annotations

import errno
import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from capidsl.data.corpus import in_validation
from capidsl.data.store.spec import StoreSpec
from capidsl.data.store.units import BadDocument, Unit, documents
from capidsl.data.tokenize import SEPARATOR, get_tokenizer

SPLITS = ("train", "val")
BATCH = 512  # documents per tokenizer call (encode_batch)


@lru_cache(maxsize=2)
def _tokenizer(name: str):
    return get_tokenizer(name)


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type that holds every token id (and the separator)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise ValueError(f"a vocabulary of {vocab_size} does not fit 32 bits")


def shard_name(unit: int, split: str, what: str) -> str:
    return f"{unit:05d}.{split}.{what}.npy"


class _Split:
    def __init__(self):
        self.tokens, self.masks, self.ends, self.n = [], [], [], 0

    def add(self, tokens: np.ndarray, mask: np.ndarray | None):
        self.tokens.append(tokens)
        if mask is not None:
            self.masks.append(mask)
        self.n += len(tokens)
        self.ends.append(self.n)


def _encode_all(tok, texts: list) -> list[np.ndarray]:
    if hasattr(tok, "encode_batch"):
        return tok.encode_batch(texts)
    return [tok.encode(t) for t in texts]


def _utf8(payload, where: str) -> str:
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadDocument(where, f"not valid UTF-8 at byte {err.start}") from None


def tokenise_unit(unit: Unit, spec: StoreSpec, out_dir: str, dtype: str) -> dict:
    """Write the unit's shard files into `out_dir`; their counts and checksums, or {"error": ...}."""
    try:
        return _tokenise(unit, spec, Path(out_dir), np.dtype(dtype))
    except BadDocument as bad:
        return {"error": {"where": bad.where, "problem": bad.problem, "skippable": bad.skippable}}
    except OSError as err:
        # numpy reports a short write (a disk that filled up mid-file) as an OSError without errno
        code = err.errno if err.errno else (errno.ENOSPC if "written" in str(err) else None)
        return {"error": {"where": err.filename or out_dir, "problem": os.strerror(code) if code else str(err),
                          "errno": code, "skippable": False}}


def _tokenise(unit: Unit, spec: StoreSpec, out: Path, dtype: np.dtype) -> dict:
    tok = None if spec.tokenizer == "byte" else _tokenizer(spec.tokenizer)
    supervised = spec.format == "supervised"
    whole_files = spec.source in ("text", "stdlib")
    splits = {name: _Split() for name in SPLITS}
    skipped, first_skipped = 0, None
    pending: list[tuple[str, str, object]] = []

    def flush():
        nonlocal skipped, first_skipped
        if tok is not None:
            texts = [t for _, _, p in pending for t in (p if supervised else (p,))]
            encoded = iter(_encode_all(tok, texts))
        for key, where, payload in pending:
            if tok is None:
                parts = [np.frombuffer(p.encode() if isinstance(p, str) else p, np.uint8)
                         for p in (payload if supervised else (payload,))]
            else:
                parts = [np.asarray(next(encoded)) for _ in range(2 if supervised else 1)]
            if len(parts[-1]) == 0 and not whole_files:  # an empty file is a document (as it always was)
                if spec.bad_documents != "skip":
                    raise BadDocument(where, "empty document" if not supervised else "empty completion")
                skipped, first_skipped = skipped + 1, first_skipped or where
                continue
            tokens = np.concatenate(parts + [np.array([SEPARATOR])]).astype(dtype, copy=False)
            mask = None
            if supervised:
                mask = np.zeros(len(tokens), np.uint8)
                mask[len(parts[0]):] = 1
            splits[SPLITS[in_validation(key, spec.validation_fraction)]].add(tokens, mask)
        pending.clear()

    for key, where, payload in _checked(documents(unit, spec), spec, tok is not None):
        if payload is None:
            skipped, first_skipped = skipped + 1, first_skipped or where
            continue
        pending.append((key, where, payload))
        if len(pending) >= BATCH:
            flush()
    flush()
    result = {"unit": unit.index, "skipped": skipped, "first_skipped": first_skipped, "splits": {}}
    for name, split in splits.items():
        tokens = np.concatenate(split.tokens) if split.tokens else np.zeros(0, dtype)
        arrays = {"tokens": tokens, "ends": np.asarray(split.ends, np.int64)}
        if supervised:
            arrays["mask"] = np.concatenate(split.masks) if split.masks else np.zeros(0, np.uint8)
        info = {"tokens": int(len(tokens)), "documents": len(split.ends),
                "loss_tokens": int(arrays["mask"].sum()) if supervised else int(len(tokens)), "sha256": {}}
        for what, arr in arrays.items():
            name_ = shard_name(unit.index, name, what)
            tmp = out / f".{name_}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, out / name_)
            info["sha256"][what] = _sha256(out / name_)
        result["splits"][name] = info
    return result


def _checked(docs, spec: StoreSpec, decode: bool):
    """The unit's documents with bad ones decided by the policy: (key, where, None) for a skipped one."""
    for key, where, payload in docs:
        if decode and not isinstance(payload, BadDocument):
            try:
                payload = tuple(_utf8(p, where) for p in payload) if isinstance(payload, tuple) else _utf8(payload, where)
            except BadDocument as bad:
                payload = bad
        if isinstance(payload, BadDocument):
            if spec.bad_documents != "skip":
                raise payload
            yield key, payload.where, None
        else:
            yield key, where, payload


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
