"""Supervised examples (data.format: supervised): the loss mask is 1 exactly on a completion's tokens and
its separator, and every loader (packed windows, bucketed pieces, carried streams) hands the model the
mask of its targets, aligned token for token; bad records are located errors or skipped and counted."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from capidsl.data import eval_batches, train_loader
from capidsl.data.buckets import _Buckets, bucket_counts, examples
from capidsl.data.errors import DataError
from capidsl.data.sources import lm_masks, lm_streams, source_key, store_key, store_of
from capidsl.data.tokenize import SEPARATOR
from capidsl.plan.plan import BucketPlan, DataPlan

T = 16
LENGTHS = (4, 8, 16)


def records(n=160, seed=0) -> list[dict]:
    """Known prompts (one long enough to span several windows and pieces) and completions, all distinct."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        word = "".join(chr(97 + k) for k in rng.integers(0, 26, int(rng.integers(1, 7))))
        prompt = f"#{i} reverse {word}: " + ("long context " * 4 if i % 17 == 0 else "")
        out.append({"prompt": prompt, "completion": word[::-1] + ("!" * (i % 3))})
    return out


def write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def data_plan(path, **kw) -> DataPlan:
    d = DataPlan(source="jsonl", path=str(path), field="text", tokenizer="byte", kind="lm", vocab_size=256, seq_len=T,
                 input_dim=0, num_classes=0, validation_fraction=0.2, shuffle=False, seed=1, workers=0, prefetch=2,
                 synthetic_examples=0, train_examples=0, val_examples=0, format="supervised")
    return replace(d, **kw)


def expected(rows) -> dict[bytes, np.ndarray]:
    """Each example's tokens (prompt, completion, separator) → its mask, computed from the record alone."""
    out = {}
    for r in rows:
        p, c = r["prompt"].encode(), r["completion"].encode()
        out[p + c + bytes([SEPARATOR])] = np.array([0] * len(p) + [1] * (len(c) + 1), np.uint8)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("sup") / "sup.jsonl"
    rows = records()
    write(path, rows)
    return path, rows


def split_arrays(d, split):
    store = store_of(store_key(d))
    return store, np.asarray(lm_streams(source_key(d))[split][:]), np.asarray(lm_masks(source_key(d))[split][:])


def test_the_store_masks_exactly_the_completion_and_its_separator(corpus):
    path, rows = corpus
    d = data_plan(path)
    want = expected(rows)
    seen = 0
    for i, name in enumerate(("train", "val")):
        store, tokens, mask = split_arrays(d, i)
        assert store.supervised and len(mask) == len(tokens)
        for a, b in store.document_spans(name):
            doc = tokens[a:b].astype(np.uint8).tobytes()
            assert np.array_equal(mask[a:b], want[doc]), doc
            seen += 1
        assert store.counts(name)["loss_tokens"] == int(mask.sum())
    assert seen == len(rows)


def test_packed_windows_mask_their_targets(corpus):
    path, _ = corpus
    d = data_plan(path)
    _, tokens, mask = split_arrays(d, 0)
    n, batch = len(tokens) // (T + 1), 4
    it = train_loader(d, global_batch=batch)
    got = [next(it) for _ in range(n // batch)]  # one epoch, windows in order (shuffle off)
    for b, rows in enumerate(got):
        for r in range(batch):
            w = (b * batch + r) * (T + 1)
            assert np.array_equal(rows["targets"][r], tokens[w + 1:w + T + 1])
            assert np.array_equal(rows["mask"][r], mask[w + 1:w + T + 1].astype(np.float32))
    masks = np.stack([g["mask"] for g in got])
    assert 0 < masks.mean() < 1 and masks.dtype == np.float32 and set(np.unique(masks)) == {0.0, 1.0}
    assert (masks.sum(axis=2) == 0).any()  # a window inside the long prompt trains nothing: allowed
    _, vtokens, vmask = split_arrays(d, 1)
    for k, rows in enumerate(eval_batches(d, global_batch=batch)):
        for r in range(batch):
            w = (k * batch + r) * (T + 1)
            assert np.array_equal(rows["mask"][r], vmask[w + 1:w + T + 1].astype(np.float32))


def test_streams_mask_their_targets(corpus):
    path, _ = corpus
    d = data_plan(path, streams=4)
    _, tokens, mask = split_arrays(d, 0)
    rows = next(train_loader(d, global_batch=4))
    length = len(tokens) // 4
    for r in range(4):  # no shuffle: row r is stream r from its start
        assert np.array_equal(rows["targets"][r], tokens[r * length + 1:r * length + T + 1])
        assert np.array_equal(rows["mask"][r], mask[r * length + 1:r * length + T + 1].astype(np.float32))


def test_bucketed_pieces_carry_their_targets_mask(corpus):
    path, rows = corpus
    base = data_plan(path, shuffle=True)
    counts = bucket_counts(base, LENGTHS)
    d = replace(base, buckets=tuple(
        BucketPlan(length=L, rows=r, train_examples=n, val_examples=v, batches_per_epoch=n // r, real_tokens=real)
        for L, r, (n, real), (v, _) in zip(LENGTHS, (8, 4, 2), counts["train"], counts["val"])))
    # the expected mask of every piece, cut by the documented rule (≤ T + 1 tokens, overlapping by one)
    want = {}
    for doc, m in expected(rows).items():
        for start in range(0, len(doc) - 1, T):
            want.setdefault(doc[start:start + T + 1], set()).add(m[start + 1:start + T + 1].tobytes())
    train = _Buckets(d, 0)
    batch = train.batch(2, train.members[2][:2], 3)  # two pieces and an empty row
    assert batch["mask"][2].sum() == 0
    from capidsl.exec.step import _unpadded  # the train step's count of real positions: prompts are not padding

    assert float(_unpadded(batch)) == sum(len(train.pieces[i]) - 1 for i in train.members[2][:2]) > batch["mask"].sum()
    it = train_loader(d, global_batch=0)
    seen = 0
    for got in [train.batch(2, train.members[2][:2], 3)] + [next(it) for _ in range(sum(b.batches_per_epoch for b in d.buckets))]:
        for inp, tgt, m in zip(got["inputs"], got["targets"], got["mask"]):
            n = int(np.count_nonzero(inp))  # pieces hold no 0 before the separator; padding is all 0
            if n == 0:
                continue
            piece = np.append(inp[:n], tgt[n - 1]).astype(np.uint8).tobytes()
            assert m[:n].astype(np.uint8).tobytes() in want[piece] and not m[n:].any()
            seen += 1
    assert seen > 50
    assert len(examples(source_key(d), T)[0]) == sum(counts["train"][i][0] for i in range(len(LENGTHS)))


def test_a_missing_completion_field_is_an_error_at_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = records(6)
    rows[3] = {"prompt": "no answer here"}
    write(path, rows)
    with pytest.raises(DataError) as err:
        lm_streams(source_key(data_plan(path)))
    assert f"{path}:4" in str(err.value) and "completion" in str(err.value)


def test_an_empty_completion_is_an_error_or_skipped_and_counted(tmp_path):
    path = tmp_path / "empty.jsonl"
    rows = records(8)
    rows[5]["completion"] = ""
    write(path, rows)
    with pytest.raises(DataError) as err:
        lm_streams(source_key(data_plan(path)))
    assert f"{path}:6" in str(err.value) and "empty completion" in str(err.value)
    d = data_plan(path, bad_documents="skip")
    store = store_of(store_key(d))
    assert store.manifest["skipped"]["documents"] == 1
    assert sum(store.counts(s)["documents"] for s in ("train", "val")) == 7
