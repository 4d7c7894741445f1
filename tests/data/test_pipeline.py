"""The input pipeline: deterministic split, packing, per-process shards, epochs, exact resume, describe."""

from __future__ import annotations


import numpy as np
import pytest

from capidsl.data import describe, eval_batches, train_loader
from capidsl.data.corpus import in_validation, stdlib_files
from capidsl.data.errors import DataError
from capidsl.plan.plan import DataPlan


def data_plan(**kw) -> DataPlan:
    base = dict(source="synthetic", path=None, field="text", tokenizer="byte", kind="lm", vocab_size=256, seq_len=16,
                input_dim=0, num_classes=0, validation_fraction=0.1, shuffle=True, seed=3, workers=0, prefetch=2,
                synthetic_examples=100, train_examples=0, val_examples=0)
    base.update(kw)
    return DataPlan(**base)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_stdlib_split_is_by_file_deterministic_and_disjoint():
    files = [rel for rel, _ in stdlib_files()]
    assert files == sorted(files) and len(files) > 500
    val = {f for f in files if in_validation(f, 0.05)}
    assert val == {f for f in files if in_validation(f, 0.05)}
    assert 0.02 < len(val) / len(files) < 0.08


def test_packing_targets_are_inputs_shifted():
    it = train_loader(data_plan(), global_batch=4)
    b = next(it)
    assert b["inputs"].shape == (4, 16) and b["targets"].shape == (4, 16)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    assert b["mask"].sum() == 4 * 16


def _window_ids(batch, d):
    # identify a window by its bytes
    full = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    return [bytes(row.astype(np.uint8)) for row in full]


def test_shards_are_disjoint_and_cover_each_epoch_exactly_once():
    d = data_plan()
    info = describe(d)
    B, P = 8, 2
    steps = info.train_examples // B
    seen = []
    for p in range(P):
        it = train_loader(d, global_batch=B, process_index=p, process_count=P)
        for batch in take(it, steps):
            assert batch["inputs"].shape[0] == B // P
            seen += _window_ids(batch, d)
    # every window appears at most once; all but the remainder are covered
    assert len(seen) == len(set(seen)) == steps * B


def test_epochs_are_ordered_differently_and_deterministically():
    d = data_plan()
    steps = describe(d).train_examples // 8
    a = take(train_loader(d, global_batch=8), 2 * steps)
    b = take(train_loader(d, global_batch=8), 2 * steps)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    assert not np.array_equal(a[0]["inputs"], a[steps]["inputs"])


@pytest.mark.parametrize("k", [3, 11, 12, 13])  # mid-epoch and around the boundary (11 steps per epoch)
def test_resume_is_exact(k):
    d = data_plan()
    assert describe(d).train_examples // 8 == 11
    it = train_loader(d, global_batch=8)
    take(it, k)
    state = it.get_state()
    expected = take(it, 5)
    resumed = train_loader(d, global_batch=8)
    resumed.set_state(state)
    for x, y in zip(expected, take(resumed, 5)):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_worker_processes_yield_the_same_batches_and_resume_exactly():
    """data.workers: 2 spawns two grain worker processes; batch for batch it is workers: 0."""
    inline = take(train_loader(data_plan(), global_batch=8), 16)
    it = train_loader(data_plan(workers=2), global_batch=8)
    try:
        first = take(it, 12)  # across the epoch boundary (11 steps per epoch)
        state = it.get_state()
    finally:
        it.close()
    resumed = train_loader(data_plan(workers=2), global_batch=8)
    try:
        resumed.set_state(state)
        rest = take(resumed, 4)
    finally:
        resumed.close()
    for x, y in zip(inline, first + rest):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], y["targets"])


def test_describe_matches_what_the_loader_yields():
    d = data_plan(synthetic_examples=57, validation_fraction=0.2)
    info = describe(d)
    assert info.train_tokens // 17 == info.train_examples
    ev = eval_batches(d, global_batch=2)
    assert len(ev) == info.val_examples // 2


def test_classification_synthetic_is_deterministic():
    d = data_plan(kind="classification", input_dim=5, num_classes=3, synthetic_examples=64, seq_len=1)
    a, b = next(train_loader(d, global_batch=8)), next(train_loader(d, global_batch=8))
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (8, 5) and a["y"].dtype == np.int32


def test_text_jsonl_csv_sources(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "d.jsonl").write_text("\n".join('{"text": "doc %d %s"}' % (i, "x" * 40) for i in range(20)))
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(f"row {i} {'y' * 40},0" for i in range(20)))
    for source, path in [("text", tmp_path / "a.txt"), ("jsonl", tmp_path / "d.jsonl"), ("csv", tmp_path / "d.csv")]:
        d = data_plan(source=source, path=str(path), validation_fraction=0.0)
        assert describe(d).train_examples > 2
        assert next(train_loader(d, global_batch=2))["inputs"].shape == (2, 16)


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        describe(data_plan(source="text", path=str(tmp_path / "missing.txt")))
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: no field 'text'; the record has \['body'\]"):
        describe(data_plan(source="jsonl", path=str(tmp_path / "d.jsonl")))
    with pytest.raises(DataError, match="fewer than one batch"):
        train_loader(data_plan(synthetic_examples=4), global_batch=8)
