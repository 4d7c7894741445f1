"""Length buckets: pieces of documents, fixed batch shapes, every example once an epoch, little padding, exact resume."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from capidsl.data import eval_batches, train_loader
from capidsl.data.buckets import bucket_counts, examples
from capidsl.data.sources import source_key
from capidsl.plan.buckets import default_lengths, padding
from capidsl.plan.plan import BucketPlan, DataPlan

T = 64
LENGTHS = (8, 16, 32, 64)


def skewed_jsonl(path, n=600, seed=0):
    """Mostly short documents and a long tail: the lengths padding-to-the-maximum wastes most on."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.8, rng.integers(2, 14, n), rng.integers(30, 200, n))
    with open(path, "w") as f:
        for i, k in enumerate(lengths):
            f.write(json.dumps({"text": "".join(chr(97 + (i + j) % 26) for j in range(int(k)))}) + "\n")
    return lengths


def data_plan(path, rows=(32, 16, 8, 4)) -> DataPlan:
    base = DataPlan(source="jsonl", path=str(path), field="text", tokenizer="byte", kind="lm", vocab_size=256, seq_len=T,
                    input_dim=0, num_classes=0, validation_fraction=0.1, shuffle=True, seed=3, workers=0, prefetch=2,
                    synthetic_examples=0, train_examples=0, val_examples=0)
    counts = bucket_counts(base, LENGTHS)
    buckets = tuple(BucketPlan(length=L, rows=r, train_examples=n, val_examples=v, batches_per_epoch=n // r,
                               real_tokens=real)
                    for L, r, (n, real), (v, _) in zip(LENGTHS, rows, counts["train"], counts["val"]))
    return replace(base, buckets=buckets)


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    skewed_jsonl(path)
    return path


def test_long_documents_become_overlapping_pieces(jsonl):
    from capidsl.data.sources import lm_documents

    d = data_plan(jsonl)
    train, _ = examples(source_key(d), T)
    assert all(2 <= len(p) <= T + 1 for p in train)
    pieces = iter(train)
    for doc in lm_documents(source_key(d))[0]:  # each document with its separator, in order
        got = [next(pieces) for _ in range(-(-(len(doc) - 1) // T))]
        assert list(got[0]) + [t for p in got[1:] for t in p[1:]] == list(doc)  # pieces overlap by one token
    assert next(pieces, None) is None


def test_batches_have_the_plans_shapes_and_an_epoch_trains_each_example_at_most_once(jsonl):
    d = data_plan(jsonl)
    steps = sum(b.batches_per_epoch for b in d.buckets)
    batches = [next(it) for it in [train_loader(d, global_batch=0)] for _ in range(steps)]
    shapes = {b["inputs"].shape for b in batches}
    assert shapes <= {(b.rows, b.length) for b in d.buckets} and len(shapes) == sum(b.batches_per_epoch > 0 for b in d.buckets)
    rows = [bytes(r[m > 0].astype(np.uint8)) + bytes(t[m > 0][-1:].astype(np.uint8))
            for b in batches for r, t, m in zip(b["inputs"], b["targets"], b["mask"])]
    assert all(b["mask"].sum(axis=1).min() > 0 for b in batches)  # training batches hold no empty rows
    assert len(rows) == sum(b.batches_per_epoch * b.rows for b in d.buckets)
    pieces = [bytes(p.astype(np.uint8)) for p in examples(source_key(d), T)[0]]
    from collections import Counter

    assert not Counter(rows) - Counter(pieces)  # every row is an example, none more often than it occurs
    positions = sum(b["mask"].size for b in batches)
    real = sum(b["mask"].sum() for b in batches)
    naive = 1 - real / (sum(b["mask"].shape[0] for b in batches) * T)
    measured = 1 - real / positions
    assert measured < naive / 3, (measured, naive)  # e.g. 0.13 against 0.75 on these lengths
    expected, naive_plan = padding(d.buckets)
    assert abs(measured - expected) < 0.05 and naive_plan > 0.6


def test_resume_processes_and_validation(jsonl):
    d = data_plan(jsonl)
    it = train_loader(d, global_batch=0)
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    again = train_loader(d, global_batch=0)
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(4)]):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    halves = [train_loader(d, global_batch=0, process_index=p, process_count=2) for p in range(2)]
    whole = train_loader(d, global_batch=0)
    for _ in range(3):
        a, b, w = next(halves[0]), next(halves[1]), next(whole)
        assert np.array_equal(np.concatenate([a["inputs"], b["inputs"]]), w["inputs"])
    val = eval_batches(d, global_batch=0)
    assert sum(int(b["mask"].any(axis=1).sum()) for b in val) == sum(b.val_examples for b in d.buckets)
    assert {b["inputs"].shape for b in val} <= {(b.rows, b.length) for b in d.buckets}


def test_default_lengths():
    assert default_lengths(4096) == (512, 1024, 2048, 4096) and default_lengths(16) == (8, 16)
